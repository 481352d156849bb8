"""The benchmark runner works end to end on a tiny grid (no timing is asserted: speed targets are
benchmarks, not tests) and its summaries compute what they claim."""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import run as runner  # `python -m pytest` runs from the repository root
from benchmarks import timing

# What users have today and one shared-negative adaptive step: each method compiles twice (graph, XLA).
TINY_SPEED_METHODS = ["full", "tf_sampled", "midx_rvq+shared"]


@pytest.mark.keras3_pass
@pytest.mark.slow
def test_tiny_speed_and_bias_run_writes_tables_json_and_plots(tmp_path):
    results = runner.main(
        [
            "--results-dir",
            str(tmp_path),
            "--tag",
            "tiny",
            "--sections",
            "speed,bias",
            "--sizes",
            "600",
            "--dims",
            "8",
            "--speed-samples",
            "4",
            "--speed-methods",
            ",".join(TINY_SPEED_METHODS),
            "--repeats",
            "1",
            "--teacher-sizes",
            "300",
            "--teacher-examples",
            "3000",
            "--bias-epochs",
            "1",
            "--bias-samples",
            "5,20",
            "--bias-samplers",
            "uniform,midx_rvq",
        ]
    )
    speed = results["speed"]
    methods = {(row["method"], row["mode"]) for row in speed}
    assert methods == {(m, mode) for m in TINY_SPEED_METHODS for mode in ("graph", "xla")}
    skipped = [row for row in speed if "skipped" in row]
    assert [(row["method"], row["mode"]) for row in skipped] == [("tf_sampled", "xla")]
    for row in speed:
        if "median_ms" in row:
            assert row["min_ms"] <= row["median_ms"] <= row["max_ms"] and row["peak_rss_mb"] >= 0
            full = next(r for r in speed if r["method"] == "full" and r["mode"] == row["mode"])
            assert row["speedup_vs_full"] == pytest.approx(full["median_ms"] / row["median_ms"])
    bias = results["bias_teacher_300"]
    assert [(row["sampler"], row["m"]) for row in bias] == [
        ("full", 0),
        ("uniform", 5),
        ("uniform", 20),
        ("midx_rvq", 5),
        ("midx_rvq", 20),
    ]
    report = (tmp_path / "run_tiny.md").read_text()
    assert "| full softmax |" in report and "Smallest m within 2%" in report and "CPU cores" in report
    assert json.loads((tmp_path / "run_tiny.json").read_text())["results"]["speed"]
    for name in ("speed_tiny.png", "bias_teacher_300_tiny.png"):
        assert (tmp_path / name).stat().st_size > 5_000


def test_two_percent_summary_picks_the_smallest_m_within_two_percent():
    rows = [
        {"sampler": "full", "m": 0, "ce": 5.0},
        {"sampler": "a", "m": 5, "ce": 5.2},
        {"sampler": "a", "m": 20, "ce": 5.09},
        {"sampler": "a", "m": 100, "ce": 5.01},
        {"sampler": "b", "m": 5, "ce": 7.0},
    ]
    summary = runner._two_percent_summary(rows, "ce", higher_is_better=False)
    assert "- a: 20" in summary and "- b: none of the m tried" in summary
    rows = [
        {"sampler": "full", "m": 0, "recall": 0.10},
        {"sampler": "a", "m": 5, "recall": 0.097},
        {"sampler": "a", "m": 50, "recall": 0.099},
    ]
    assert "- a: 50" in runner._two_percent_summary(rows, "recall", higher_is_better=True)


def test_variant_suffixes_parse_and_misspellings_fail_fast():
    assert runner.variant("midx_rvq") == ("midx_rvq", "standard", False)
    assert runner.variant("midx_rvq+shared+cp") == ("midx_rvq", "standard", True)
    assert runner.variant("uniform+cp") == ("uniform", "standard", False)
    assert runner.variant("uniform") == ("uniform", "standard", False)
    assert runner.variant("midx_rvq+eq3+shared") == ("midx_rvq", "negatives_only", True)
    with pytest.raises(ValueError, match="suffix"):
        runner.parse_args(["--bias-samplers", "uniform+shraed"])


@pytest.mark.keras3_pass
@pytest.mark.slow
def test_tiny_staleness_run_reports_quality_kl_and_refresh_cost(tmp_path):
    from benchmarks import staleness

    # A stand-in for the PTB subset, small enough for 8 steps an epoch (--seq-len 5, batch 32): the
    # step schedules then refresh at epoch starts only, and only the references and epoch-only MIDX run.
    data = tmp_path / "data"
    data.mkdir()
    lines = (" ".join(f"w{(i * 7 + j * j) % 150}" for j in range(8)) for i in range(150))
    (data / "ptb_subset.train.txt").write_text("\n".join(lines))
    payload = staleness.main(
        [
            "--out-dir",
            str(tmp_path),
            "--tag",
            "tiny",
            "--samplers",
            "midx_rvq",
            "--schedules",
            "10,1000,epoch",
            "--references",
            "full,tf_sampled",
            "--num-classes",
            "300",
            "--dim",
            "8",
            "--train-examples",
            "3000",
            "--test-examples",
            "300",
            "--batch-size",
            "64",
            "--epochs",
            "1",
            "--kl-points",
            "3",
            "--probe-size",
            "16",
            "--data-dir",
            str(data),
            "--ptb-epochs",
            "1",
            "--ptb-args",
            "--dim 8 --seq-len 5",
            "--tf-samples",
            "32",
        ]
    )
    teacher = payload["teacher"]
    rows = {(r["sampler"], r["schedule"]): r for r in teacher["rows"]}
    assert list(rows) == [
        ("full", "epoch only"),
        ("tf_sampled", "epoch only"),
        ("midx_rvq", "every 10 steps"),
        ("midx_rvq", "every 1,000 steps"),
        ("midx_rvq", "epoch only"),
    ]
    assert teacher["total_steps"] == 47 and len(teacher["kl_steps"]) == 3
    # 1,000 steps outlast the run: the epoch-only schedule, reported as such and not trained again.
    assert rows[("midx_rvq", "every 1,000 steps")]["same_as"] == "epoch only"
    every_10, epoch = rows[("midx_rvq", "every 10 steps")], rows[("midx_rvq", "epoch only")]
    assert every_10["refresh_count"] == 5 and epoch["refresh_count"] == 1  # steps 0, 10, ..., 40
    for row in (every_10, epoch):
        assert [p["step"] for p in row["kl_points"]] == teacher["kl_steps"]
        assert row["kl_mean"] >= 0 and 0 <= row["refresh_share"] < 1 and row["training_seconds"] > 0
    # What users have today: trained the same way, with no proposal to measure KL against.
    for name in ("full", "tf_sampled"):
        reference = rows[(name, "epoch only")]
        assert reference["kl_points"] == [] and reference["kl_mean"] is None
        assert math.isfinite(reference["test_cross_entropy"]) and reference["training_seconds"] > 0
    ptb = {(r["sampler"], r["schedule"]): r for r in payload["ptb"]["rows"]}
    assert list(ptb) == [
        ("full", "epoch only"),
        ("tf_sampled", "epoch only"),
        ("midx_rvq", "every 10 steps"),
        ("midx_rvq", "every 1,000 steps"),
        ("midx_rvq", "epoch only"),
    ]
    epoch = ptb[("midx_rvq", "epoch only")]
    assert epoch["training_steps"] == 8 and epoch["refresh_count"] == 1 and epoch["test_perplexity"] > 1
    assert ptb[("midx_rvq", "every 10 steps")]["same_as"] == "epoch only"
    report = (tmp_path / "staleness_tiny.md").read_text()
    assert "CPU cores" in report and "| midx_rvq | every 10 steps | 5 |" in report and "Sparsest schedule" in report
    assert json.loads((tmp_path / "staleness_tiny.json").read_text())["teacher"]["rows"]


def test_staleness_kmeans_variants_parse_as_iteration_tolerance_pairs():
    from benchmarks import staleness

    assert staleness.parse_args(["--kmeans", "10:0,3:0.1"]).kmeans_list == [(10, 0.0), (3, 0.1)]
    assert staleness.parse_args([]).kmeans_list == [None]  # the sampler's own KMeansOptions


def test_interleaved_step_ratios_are_per_round_ratios_to_uniform():
    from benchmarks import step_ratio

    rows = step_ratio.measure(600, False, ["uniform", "full", "midx_rvq"], rounds=4, warmup=1)
    by_method = {row["method"]: row for row in rows}
    assert set(by_method) == {"uniform", "full", "midx_rvq"}
    assert by_method["uniform"]["ratio_to_uniform"] == 1.0
    assert by_method["full"]["speedup_vs_full"] == 1.0
    full_ms = by_method["full"]["median_ms"]
    assert by_method["midx_rvq"]["speedup_vs_full"] == pytest.approx(full_ms / by_method["midx_rvq"]["median_ms"])
    low, high = by_method["midx_rvq"]["ratio_quartiles"]
    assert 0 < low <= by_method["midx_rvq"]["ratio_to_uniform"] <= high
    assert all(row["N"] == 600 and row["mode"] == "graph" and row["median_ms"] > 0 for row in rows)


def test_workers_run_as_modules_from_the_repository_root(monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, 0, stdout='RESULT {"ok": 1}\n', stderr="")

    monkeypatch.setattr(timing.subprocess, "run", fake_run)
    assert timing.run_worker("benchmarks.num_codewords", {"N": 10}, timeout=5) == {"ok": 1}
    [(command, kwargs)] = calls
    assert command == [sys.executable, "-m", "benchmarks.num_codewords", "--worker", '{"N": 10}']
    assert pathlib.Path(kwargs["cwd"]) == pathlib.Path(__file__).resolve().parents[1]
    assert (pathlib.Path(kwargs["cwd"]) / "benchmarks" / "__init__.py").is_file()


def test_proposal_ablation_measures_against_closed_forms(tmp_path):
    from benchmarks import proposal

    state = proposal.teacher_state(600, 20, 1.0, probes=32)
    base = proposal._midx(state, num_codewords=8)
    library = proposal._library_log_q(base, state.eval_queries)
    # MIDX's log_prob is the closed form log softmax(⟨h, q̂_i⟩ + log w_i) the prototypes build on.
    by_hand = proposal._normalized(
        state.eval_queries @ proposal._quantized(base).T + proposal._static_log_weight(base, state)
    )
    np.testing.assert_allclose(library, by_hand, atol=2e-4)
    buckets, head = base.class_bucket.numpy(), np.argsort(-state.counts)[:6]
    exact = proposal.measure(state, proposal._normalized(state.logits(state.eval_queries)), buckets, head)
    assert abs(exact["kl"]) < 1e-9 and exact["ess_ratio"] == pytest.approx(1.0)
    assert all(abs(bias) < 1e-9 for bias in exact["log_z_bias"].values())
    uniform = proposal.measure(state, np.full_like(library, -math.log(600)), buckets, head)
    midx = proposal.measure(state, library, buckets, head)
    for row in (uniform, midx):
        assert row["kl_within"] + row["kl_between"] == pytest.approx(row["kl"])
        assert row["kl_between"] >= 0 and 0 < row["ess_ratio"] < 1
        assert all(bias < 0 for bias in row["log_z_bias"].values())  # Jensen: E log Ẑ < log Z
    assert midx["kl"] < uniform["kl"] and midx["ess_ratio"] > uniform["ess_ratio"]
    assert uniform["head_q"] == pytest.approx(6 / 600)
    results = proposal.main(["--teachers", "600:20:1", "--quick", "--probes", "16", "--output", str(tmp_path / "p")])
    assert {row["kind"] for row in results} == {"static", "library", "prototype", "reference"}
    assert "| exact softmax q = p | 0.000 |" in (tmp_path / "p.md").read_text()

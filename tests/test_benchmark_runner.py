"""The benchmark runner works end to end on a tiny grid (no timing is asserted: speed targets are
benchmarks, not tests) and its summaries compute what they claim."""

import json

import pytest

from benchmarks import run as runner  # `python -m pytest` runs from the repository root


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
    assert methods == {(m, mode) for m in runner.SPEED_METHODS for mode in ("graph", "xla")}
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
    assert runner.variant("midx_rvq") == ("midx_rvq", True, False)
    assert runner.variant("midx_rvq+shared+cp") == ("midx_rvq", True, True)
    assert runner.variant("uniform+cp") == ("uniform", True, False)
    assert runner.variant("uniform") == ("uniform", True, False)
    assert runner.variant("midx_rvq+eq3+shared") == ("midx_rvq", False, True)
    with pytest.raises(ValueError, match="suffix"):
        runner.parse_args(["--bias-samplers", "uniform+shraed"])

import json
import time

import pytest
from conftest import run_python

from tf_adaptive_softmax import demo


@pytest.mark.keras3_pass
def test_demo_rows_table_and_summary_on_a_tiny_task(tmp_path, capsys):
    rows = demo.main(
        [
            "--num-classes",
            "400",
            "--dim",
            "8",
            "--train-examples",
            "1500",
            "--test-examples",
            "300",
            "--epochs",
            "2",
            "--num-samples",
            "5",
            "--shared-samples",
            "16",
            "--rows",
            "full,tf_sampled,midx",
            "--evaluations-per-epoch",
            "1",
            "--verbose",
            "0",
            "--plot",
            str(tmp_path / "curve.png"),
            "--json",
            str(tmp_path / "rows.json"),
        ]
    )
    out = capsys.readouterr().out
    assert [r["key"] for r in rows] == ["full", "tf_sampled", "midx"]
    assert "| full softmax |" in out and "teacher (Bayes floor)" in out
    assert "MIDX reached a test cross-entropy of" in out and "tf.nn.sampled_softmax_loss reached" in out
    full = rows[0]
    for row in rows:
        assert 0 < row["test_cross_entropy"] < 20 and 0 <= row["accuracy_at_1"] <= 1
        # One point per epoch; the last is the reported metric, and the clock only moves forward.
        assert len(row["curve"]) == 2 and row["curve"][-1][1] == row["test_cross_entropy"]
        assert row["curve"][0][0] < row["curve"][1][0] == row["training_seconds"]
        assert row["speedup"] == pytest.approx(full["seconds_per_epoch"] / row["seconds_per_epoch"])
        assert row["gap"] == pytest.approx(row["test_cross_entropy"] / full["test_cross_entropy"] - 1)
    assert full["gap"] == 0 and full["seconds_to_within_2pct"] is not None
    assert (tmp_path / "curve.png").stat().st_size > 5_000
    written = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["key"] for r in written] == ["full", "tf_sampled", "midx"]


@pytest.mark.keras3_pass
@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_writes_its_plot(tmp_path):
    start = time.perf_counter()
    plot = tmp_path / "quick.png"
    result = run_python("-m", "tf_adaptive_softmax.demo", "--quick", "--verbose", "0", "--plot", plot, cwd=tmp_path)
    seconds = time.perf_counter() - start
    assert "QuadraticKernel, shared" in result.stdout and str(tmp_path / "quick.png") in result.stdout
    assert (tmp_path / "quick.png").stat().st_size > 5_000
    # Clean output: no TensorFlow start-up lines, no retracing warnings.
    assert "oneDNN" not in result.stderr and "retracing" not in (result.stdout + result.stderr)
    print(f"demo --quick: {seconds:.0f} s")  # the duration is reported, not asserted (shared CI machines)


def test_unknown_row_is_a_clear_error():
    with pytest.raises(SystemExit, match="Unknown row"):
        demo.main(["--rows", "nope"])

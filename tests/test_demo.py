import pytest

from tf_adaptive_softmax import demo


@pytest.mark.slow
def test_demo_runs_and_prints_a_table(capsys):
    rows = demo.main([
        "--num-classes", "300", "--dim", "8", "--train-examples", "2000", "--test-examples", "300",
        "--epochs", "1", "--num-samples", "5", "--samplers", "uniform,log_uniform", "--verbose", "0",
    ])
    out = capsys.readouterr().out
    assert [r["sampler"] for r in rows] == ["full softmax", "uniform", "log_uniform"]
    assert "| full softmax |" in out and "teacher (Bayes floor)" in out
    for row in rows:
        assert 0 < row["test_cross_entropy"] < 20 and 0 <= row["accuracy_at_1"] <= 1


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(SystemExit, match="Unknown sampler"):
        demo.main(["--samplers", "nope"])

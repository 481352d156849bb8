"""Every example script runs end to end (tiny settings, both Keras flavours), prints its final
full-softmax metrics, writes its training-curve PNG and JSON, and exports a serving model."""

import json
import math
import pathlib
import sys

import pytest
import tensorflow as tf
from conftest import SAMPLER_OPS, op_types, run_python

ROOT = pathlib.Path(__file__).resolve().parents[1]

EXAMPLES = {
    "language_model": (
        ["--dim", "16", "--seq-len", "10", "--num-samples", "8", "--arch", "transformer"],
        {"test_perplexity"},
    ),
    "sequential_recommender": (
        ["--dim", "16", "--max-len", "8", "--num-samples", "8", "--batch-size", "128"],
        {"recall_at_10", "ndcg_at_10"},
    ),
    "extreme_classification": (
        [
            "--num-labels",
            "3000",
            "--num-features",
            "300",
            "--train-examples",
            "2000",
            "--test-examples",
            "200",
            "--dim",
            "16",
            "--num-samples",
            "16",
        ],
        {"precision_at_1", "precision_at_3", "precision_at_5"},
    ),
    "custom_training_loop": (
        ["--num-classes", "500", "--train-examples", "4000", "--test-examples", "500", "--num-samples", "8"],
        {"test_cross_entropy"},
    ),
}


def _run(script, args, tmp_path):
    example = ROOT / "examples" / f"{script}.py"
    outputs = ["--plot", tmp_path / "curves.png", "--json", tmp_path / "metrics.json"]
    return run_python(example, *args, "--epochs", "2", "--verbose", "0", *outputs, cwd=tmp_path).stdout


@pytest.mark.keras3_pass
@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs_and_reports(script, tmp_path):
    args, keys = EXAMPLES[script]
    if script == "language_model":
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("\n".join(" ".join(f"w{(i * 7 + j * j) % 150}" for j in range(8)) for i in range(400)))
        args = args + ["--data", str(corpus)]
    if script == "sequential_recommender":
        args = args + ["--data", str(tmp_path / "absent.csv")]  # the synthetic sessions
    if script != "custom_training_loop":
        args = args + ["--export", str(tmp_path / "serving")]
    stdout = _run(script, args, tmp_path)
    assert "Final full-softmax metrics" in stdout
    assert (tmp_path / "curves.png").stat().st_size > 5_000
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert keys <= set(metrics) and all(math.isfinite(metrics[key]) for key in keys), metrics
    assert all(len(curve) == 2 for curve in metrics["curves"].values())
    if script != "custom_training_loop":
        loaded = tf.saved_model.load(str(tmp_path / "serving"))
        graph = loaded.signatures["serving_default"].graph.as_graph_def()
        assert not op_types(graph) & SAMPLER_OPS


def test_interaction_files_with_and_without_header(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    from common import load_interactions  # pylint: disable=import-outside-toplevel

    (tmp_path / "a.csv").write_text("user,item,timestamp\n7,30,5\n7,10,2\n9,30,1\n")
    (tmp_path / "b.tsv").write_text("7\t30\t4\t5\n7\t10\t3\t2\n9\t30\t5\t1\n")
    for name in ("a.csv", "b.tsv"):
        users, items, timestamps = load_interactions(tmp_path / name)
        assert users.tolist() == [0, 0, 1] and items.tolist() == [1, 0, 1] and timestamps.tolist() == [5, 2, 1]
    (tmp_path / "c.csv").write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match="user,item,timestamp"):
        load_interactions(tmp_path / "c.csv")

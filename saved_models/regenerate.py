"""Regenerates the serving SavedModels in this folder and their recorded expectations.

    python saved_models/regenerate.py

Each model comes from an example script with a tiny configuration (one epoch, small width) and
synthetic data, exported by the script's `--export` (`tf.saved_model.save` of a module whose
`serving_default` signature returns the top-10 class ids and scores from the exact logits).
`expected.json` records, per model, fixed probe inputs and the top-k ids and scores the freshly
exported model returns for them. `tests/test_saved_models.py` loads every model with
`tf.saved_model.load`, replays the probes and compares, and scans the graph for sampler ops, so a
change to the serving format or to what the exported graph computes fails a test. Regenerate
only on purpose, and say why in the commit.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

HERE = pathlib.Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"

COMMON = ["--epochs", "1", "--verbose", "0", "--sampler", "midx_rvq"]


def _recipes(scratch: pathlib.Path):
    # The language model trains on its synthetic corpus (no --data file): 400 words, 1,500 lines.
    yield "language_model", [
        "--synthetic", "--synthetic-lines", "1500", "--synthetic-vocab", "400",
        "--dim", "16", "--seq-len", "12", "--num-samples", "16"], (12, 400)
    yield "sequential_recommender", [
        "--data", str(scratch / "absent.tsv"), "--dim", "16", "--max-len", "10", "--num-samples", "16"], (10, 800)
    yield "extreme_classification", [
        "--num-labels", "2000", "--num-features", "500", "--train-examples", "3000", "--test-examples", "200",
        "--dim", "16", "--features-per-example", "8", "--num-samples", "16"], (8, 500)


def main() -> None:
    expected = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        for name, args, (width, id_range) in _recipes(scratch):
            target = HERE / name
            shutil.rmtree(target, ignore_errors=True)
            subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), *args, *COMMON, "--export", str(target),
                            "--plot", str(scratch / f"{name}.png")], check=True)
            probe = np.random.default_rng(0).integers(0, id_range, (4, width)).astype(np.int32)
            if name == "sequential_recommender":
                probe += 1  # item ids + 1; 0 is padding
            outputs = tf.saved_model.load(str(target)).signatures["serving_default"](tf.constant(probe))
            expected[name] = {
                "probe": probe.tolist(),
                "top_k_ids": outputs["top_k_ids"].numpy().tolist(),
                "top_k_scores": outputs["top_k_scores"].numpy().tolist(),
            }
            size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
            print(f"{name}: {size / 1024:.0f} KiB")
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()

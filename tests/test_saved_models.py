"""The committed serving SavedModels (saved_models/) still load and answer as recorded: a change
to the serving format or to what the exported graph computes shows up here. Regenerate them on
purpose with `python saved_models/regenerate.py`."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from conftest import SAMPLER_OPS, op_types

FOLDER = pathlib.Path(__file__).resolve().parents[1] / "saved_models"
EXPECTED = json.loads((FOLDER / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_saved_model_answers_as_recorded(name):
    loaded = tf.saved_model.load(str(FOLDER / name))
    serve = loaded.signatures["serving_default"]
    record = EXPECTED[name]
    outputs = serve(tf.constant(record["probe"], tf.int32))
    assert set(outputs) == {"top_k_ids", "top_k_scores"}
    scores, ids = outputs["top_k_scores"].numpy(), outputs["top_k_ids"].numpy()
    expected_scores, expected_ids = np.array(record["top_k_scores"]), np.array(record["top_k_ids"])
    # [batch, 10], or [batch, time, 10] for the language model (every position predicts).
    assert ids.shape == expected_ids.shape and ids.shape[0] == len(record["probe"]) and ids.shape[-1] == 10
    assert ids.dtype == np.int32
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)
    # Ids must match except where two recorded scores tie (another CPU may order a tie differently).
    gaps = np.abs(np.diff(expected_scores, axis=-1))
    near_tie = np.zeros_like(ids, bool)
    near_tie[..., 1:] |= gaps < 1e-4
    near_tie[..., :-1] |= gaps < 1e-4
    np.testing.assert_array_equal(np.where(near_tie, 0, ids), np.where(near_tie, 0, expected_ids))
    assert np.all(scores[..., :-1] >= scores[..., 1:])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_saved_model_is_small_and_has_no_sampler_ops(name):
    size = sum(f.stat().st_size for f in (FOLDER / name).rglob("*") if f.is_file())
    assert size < 1_000_000, size
    loaded = tf.saved_model.load(str(FOLDER / name))
    ops = op_types(loaded.signatures["serving_default"].graph.as_graph_def())
    assert not ops & SAMPLER_OPS, ops & SAMPLER_OPS
    assert {"MatMul", "BatchMatMulV2"} & ops and "TopKV2" in ops

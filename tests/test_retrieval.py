import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import keras3_only
from tf_adaptive_softmax import retrieval, samplers

B, C, D, N = 4, 6, 5, 40
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, D)).astype(np.float32), rng.standard_normal((C, D)).astype(np.float32),
            np.array([3, 7, 3, 11, 20, 21], np.int32), rng.uniform(1e-8, 0.2, C).astype(np.float32))


def test_in_batch_only_matches_a_hand_computation():
    q, c, ids, p = _batch()
    loss = retrieval.mixed_negatives_loss(q, c, ids, candidate_sampling_probability=p,
                                          remove_accidental_hits=True, temperature=0.5).numpy()
    scores = q @ c.T / 0.5 - np.log(np.clip(p, 1e-6, 1.0))
    for row in range(B):
        for col in range(C):
            if col != row and ids[col] == ids[row]:
                scores[row, col] = -np.inf
    expected = sum(-scores[i, i] + np.logaddexp.reduce(scores[i]) for i in range(B))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_catalogue_columns_subtract_unclipped_log_expected_count():
    # A catalogue of 10^7 items: q = 1e-7 per item, which TFRS's 1e-6 clip would distort.
    q, c, ids, _ = _batch()
    table = np.random.default_rng(1).standard_normal((N, D)).astype(np.float32)
    big = 10_000_000
    embed = lambda i: tf.gather(table, i % N)  # noqa: E731
    scores, labels = retrieval.mixed_negatives_scores(
        q, c[:B], ids[:B], sampler=samplers.Uniform(big, seed=3), num_samples=5, embed_ids=embed)
    drawn = samplers.Uniform(big, seed=3).sample(q, 5)[0].numpy()
    expected = np.einsum("bd,bmd->bm", q, table[drawn % N]) - np.log(5 / big)
    np.testing.assert_allclose(scores.numpy()[:, B:], expected, rtol=1e-5)
    assert labels.shape == (B, B + 5)


def test_shared_catalogue_columns_score_one_draw_set_for_the_batch():
    q, c, ids, _ = _batch()
    table = np.random.default_rng(1).standard_normal((N, D)).astype(np.float32)
    calls = []

    def embed(i):
        calls.append(i.shape)
        return tf.gather(table, i)

    sampler, twin = samplers.MIDX(N, num_codewords=4, seed=3), samplers.MIDX(N, num_codewords=4, seed=3)
    for each in (sampler, twin):
        each.refresh(table)
    scores, _ = retrieval.mixed_negatives_scores(
        q, c[:B], ids[:B], sampler=sampler, num_samples=5, embed_ids=embed, shared_negatives=True)
    drawn, log_q = twin.sample_shared(q, 5)
    expected = q @ table[drawn.numpy()].T - np.log(5 * np.exp(log_q.numpy()))
    expected[drawn.numpy()[None, :] == ids[:B, None]] = -1e30
    np.testing.assert_allclose(scores.numpy()[:, B:], expected, rtol=1e-5)
    assert calls == [tf.TensorShape([5])]  # the tower embeds m ids, not B·m


def test_sampler_needs_ids_and_embed_fn():
    q, c, ids, _ = _batch()
    with pytest.raises(ValueError, match="embed_ids"):
        retrieval.mixed_negatives_loss(q, c, ids, sampler=samplers.Uniform(N))
    with pytest.raises(ValueError, match="candidate_ids"):
        retrieval.mixed_negatives_loss(q, c, None, sampler=samplers.Uniform(N), embed_ids=lambda i: i)
    with pytest.raises(ValueError, match="reduction"):
        retrieval.mixed_negatives_loss(q, c, ids, reduction="avg")


def test_xla_compiles_mixed_negatives():
    q, c, ids, _ = _batch()
    table = tf.constant(np.random.default_rng(1).standard_normal((N, D)).astype(np.float32))
    sampler = samplers.MIDX(N, num_codewords=4, seed=0)
    sampler.refresh(table)
    fn = tf.function(lambda q, c: retrieval.mixed_negatives_loss(
        q, c, ids[:B], sampler=sampler, num_samples=6, embed_ids=lambda i: tf.gather(table, i)), jit_compile=True)
    assert np.isfinite(fn(q, c[:B]).numpy())


@keras3_only
@pytest.mark.slow
def test_keras3_compute_loss_example_runs():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "keras3_retrieval.py"), "--quick"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Recall@10" in result.stdout

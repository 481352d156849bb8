import inspect
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
    return (
        rng.standard_normal((B, D)).astype(np.float32),
        rng.standard_normal((C, D)).astype(np.float32),
        np.array([3, 7, 3, 11, 20, 21], np.int32),
        rng.uniform(1e-8, 0.2, C).astype(np.float32),
    )


def test_in_batch_only_matches_a_hand_computation():
    q, c, ids, p = _batch()
    loss = retrieval.mixed_negatives_loss(
        q, c, ids, candidate_sampling_probability=p, remove_accidental_hits=True, temperature=0.5
    ).numpy()
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
        q, c[:B], ids[:B], sampler=samplers.Uniform(big, seed=3), num_samples=5, embed_ids=embed
    )
    drawn = samplers.Uniform(big, seed=3).sample(q, 5)[0].numpy()
    expected = np.einsum("bd,bmd->bm", q, table[drawn % N]) - np.log(5 / big)
    np.testing.assert_allclose(scores.numpy()[:, B:], expected, rtol=1e-5)
    # The positive is not a catalogue draw: without in-batch probabilities it keeps its raw score.
    np.testing.assert_allclose(np.diag(scores.numpy()), np.sum(q * c[:B], 1), rtol=1e-5)
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
        q, c[:B], ids[:B], sampler=sampler, num_samples=5, embed_ids=embed, shared_negatives=True
    )
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


def _softmax_sampler(table, seed=4):
    """A query-dependent proposal with a NumPy closed form: q(i | h) = softmax(h Wᵀ)_i."""
    sampler = samplers.Softmax(N, live=False, seed=seed)
    sampler.refresh(table)
    return sampler


def _log_softmax(logits):
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


@pytest.mark.parametrize("function", [retrieval.mixed_negatives_scores, retrieval.mixed_negatives_loss])
def test_correct_positive_is_the_keyword_only_default(function):
    parameter = inspect.signature(function).parameters["correct_positive"]
    assert parameter.default is True and parameter.kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("correct_positive", [True, False])
@pytest.mark.parametrize("shared", [False, True])
def test_mixed_scores_by_hand(shared, correct_positive):
    # In-batch: q·c / τ - log p (TFRS), the diagonal (the positive) corrected the same way by default
    # and left at q·c_i / τ with correct_positive=False; catalogue columns: <h, e(s)> / τ - log(m·q(s | h)),
    # with q the snapshot softmax (per query) or its batch mixture (shared), all in NumPy. The
    # catalogue proposal never corrects the positive (it is not one of its draws).
    q, c, ids, p = _batch()
    table = np.random.default_rng(1).standard_normal((N, D)).astype(np.float32)
    m, tau = 5, 0.5
    sampler, twin = _softmax_sampler(table), _softmax_sampler(table)
    scores, _ = retrieval.mixed_negatives_scores(
        q,
        c,
        ids,
        sampler=sampler,
        num_samples=m,
        embed_ids=lambda i: tf.gather(table, i),
        candidate_sampling_probability=p,
        temperature=tau,
        shared_negatives=shared,
        correct_positive=correct_positive,
    )
    log_q = _log_softmax(q.astype(np.float64) @ table.T)  # [B, N]
    if shared:
        log_q = np.broadcast_to(np.logaddexp.reduce(log_q, axis=0) - np.log(B), log_q.shape)
    drawn = twin.sample_shared(q, m)[0].numpy()[None].repeat(B, 0) if shared else twin.sample(q, m)[0].numpy()
    # With catalogue columns the in-batch ones subtract their log expected count, log(C·p).
    expected = q @ c.T / tau - np.log(C * np.clip(p, 1e-6, 1.0))
    rows = np.arange(B)
    if not correct_positive:
        expected[rows, rows] = (q @ c.T / tau)[rows, rows]
    sampled = np.einsum("bd,bmd->bm", q, table[drawn]) / tau - np.log(m) - np.take_along_axis(log_q, drawn, 1)
    sampled[drawn == ids[:B, None]] = -1e30
    np.testing.assert_allclose(scores.numpy(), np.concatenate([expected, sampled], 1), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("shared", [False, True])
def test_default_in_batch_columns_are_tfrs_up_to_log_c(shared):
    q, c, ids, p = _batch()
    table = np.random.default_rng(1).standard_normal((N, D)).astype(np.float32)
    sampler = _softmax_sampler(table)
    options = dict(temperature=0.5, remove_accidental_hits=True)
    scores, _ = retrieval.mixed_negatives_scores(
        q,
        c,
        ids,
        sampler=sampler,
        num_samples=5,
        embed_ids=lambda i: tf.gather(table, i),
        candidate_sampling_probability=p,
        shared_negatives=shared,
        **options,
    )
    # TFRS's in-batch scores, shifted by the constant log C (log expected counts C·p; masked stay masked).
    tfrs_scores = retrieval.in_batch_scores(q, c, ids, p, **options).numpy()
    shifted = np.where(tfrs_scores < -1e30, tfrs_scores, tfrs_scores - np.log(C))
    np.testing.assert_allclose(scores.numpy()[:, :C], shifted, rtol=1e-6)
    catalogue = retrieval.catalogue_scores(
        q, ids, _softmax_sampler(table), 5, lambda i: tf.gather(table, i), temperature=0.5, shared_negatives=shared
    )
    assert catalogue.shape == (B, 5)
    np.testing.assert_allclose(scores.numpy()[:, C:], catalogue.numpy(), rtol=1e-6)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("correct_positive", [True, False])
def test_xla_compiles_mixed_negatives(shared, correct_positive):
    q, c, ids, _ = _batch()
    table = tf.constant(np.random.default_rng(1).standard_normal((N, D)).astype(np.float32))
    sampler = samplers.MIDX(N, num_codewords=4, seed=0)
    sampler.refresh(table)

    def loss(q, c):
        return retrieval.mixed_negatives_loss(
            q,
            c,
            ids[:B],
            sampler=sampler,
            num_samples=6,
            embed_ids=lambda i: tf.gather(table, i),
            shared_negatives=shared,
            correct_positive=correct_positive,
        )

    compiled = tf.function(loss, jit_compile=True)(q, c[:B]).numpy()
    assert np.isfinite(compiled)


@keras3_only
@pytest.mark.slow
def test_keras3_compute_loss_example_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "keras3_retrieval.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Recall@10" in result.stdout

import inspect
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from conftest import keras3_only, run_python

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
    loss = retrieval.mixed_negatives_loss(q, c, ids, candidate_sampling_probability=p, temperature=0.5).numpy()
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
def test_logq_correction_is_the_keyword_only_default(function):
    parameter = inspect.signature(function).parameters["logq_correction"]
    assert parameter.default == "standard" and parameter.kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("logq_correction", ["standard", "negatives_only"])
@pytest.mark.parametrize("shared", [False, True])
def test_mixed_scores_by_hand(shared, logq_correction):
    # In-batch: q·c / τ - log p (TFRS), the diagonal (the positive) corrected the same way by default
    # and left at q·c_i / τ with "negatives_only"; catalogue columns: <h, e(s)> / τ - log(m·q(s | h)),
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
        logq_correction=logq_correction,
    )
    # The proposal sees h / τ: the snapshot softmax on the model's own scale.
    log_q = _log_softmax(q.astype(np.float64) / tau @ table.T)  # [B, N]
    if shared:
        log_q = np.broadcast_to(np.logaddexp.reduce(log_q, axis=0) - np.log(B), log_q.shape)
    drawn = (
        twin.sample_shared(q / tau, m)[0].numpy()[None].repeat(B, 0) if shared else twin.sample(q / tau, m)[0].numpy()
    )
    # With catalogue columns the in-batch ones subtract their log expected count, log(C·p).
    expected = q @ c.T / tau - np.log(C * np.clip(p, 1e-6, 1.0))
    rows = np.arange(B)
    if logq_correction == "negatives_only":
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
    tfrs_scores = retrieval._in_batch_scores(q, c, ids, p, **options).numpy()
    shifted = np.where(tfrs_scores < -1e30, tfrs_scores, tfrs_scores - np.log(C))
    np.testing.assert_allclose(scores.numpy()[:, :C], shifted, rtol=1e-6)
    catalogue, _ = retrieval._catalogue_draws(
        q, ids, _softmax_sampler(table), 5, lambda i: tf.gather(table, i), 0.5, shared
    )
    assert catalogue.shape == (B, 5)
    np.testing.assert_allclose(scores.numpy()[:, C:], catalogue.numpy(), rtol=1e-6)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("logq_correction", ["standard", "negatives_only"])
def test_xla_compiles_mixed_negatives(shared, logq_correction):
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
            logq_correction=logq_correction,
        )

    compiled = tf.function(loss, jit_compile=True)(q, c[:B]).numpy()
    assert np.isfinite(compiled)


@keras3_only
@pytest.mark.slow
def test_keras3_compute_loss_example_runs():
    assert "Recall@10" in run_python(ROOT / "examples" / "keras3_retrieval.py", "--quick", cwd=ROOT).stdout


def _clustered_table(num_items=400, dim=8, seed=0):
    """Unit-norm item vectors in 20 tight clusters: a softmax with structure a MIDX proposal can follow."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    table = centres[rng.integers(0, 20, num_items)] + 0.2 * rng.standard_normal((num_items, dim))
    return (table / np.linalg.norm(table, axis=1, keepdims=True)).astype(np.float32)


def test_tempered_proposal_is_closer_to_the_tempered_softmax():
    # With scores <h, e> / τ the model's softmax is p_τ ∝ exp(<h, e> / τ). A MIDX proposal given h / τ
    # (what the retrieval functions now pass) is closer to it in KL(p_τ ‖ q) than one given h.
    table = _clustered_table()
    sampler = samplers.MIDX(len(table), num_codewords=8, seed=0)
    sampler.refresh(table)
    rng = np.random.default_rng(1)
    h = rng.standard_normal((16, table.shape[1])).astype(np.float32)
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    tau = 0.1
    all_ids = np.tile(np.arange(len(table)), (len(h), 1))
    log_p = _log_softmax(h.astype(np.float64) @ table.T / tau)

    def kl(queries):
        log_q = sampler.log_prob(queries, all_ids).numpy().astype(np.float64)
        return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))

    tempered, raw = kl(retrieval._proposal_queries(h, tau)), kl(h)
    assert tempered < 0.5 * raw, (tempered, raw)
    np.testing.assert_allclose(retrieval._proposal_queries(h, tau).numpy(), h / tau, rtol=1e-6)
    np.testing.assert_array_equal(retrieval._proposal_queries(h).numpy(), h)


@pytest.mark.parametrize("shared", [False, True])
def test_tempered_catalogue_draws_match_their_log_q(shared):
    # Through the retrieval path with τ: the draws' frequencies match q(· | h / τ) (chi-square), and
    # each catalogue column subtracts log(m · q(s | h / τ)).
    from conftest import CHI_SQUARE_ALPHA, chi_square_pvalue

    table = _clustered_table()
    n, tau, m = len(table), 0.2, 4000
    sampler = samplers.MIDX(n, num_codewords=8, seed=2)
    sampler.refresh(table)
    h = np.tile(table[:1] * 1.5, (2, 1))  # two identical queries: one proposal
    scores, _, column_ids = retrieval._mixed_negatives_scores_with_ids(
        h,
        table[[5, 6]],
        [5, 6],
        sampler=sampler,
        num_samples=m,
        embed_ids=lambda i: tf.gather(table, i),
        temperature=tau,
        shared_negatives=shared,
    )
    drawn = column_ids.numpy()[0, 2:]
    log_q = sampler.log_prob(h[:1] / tau, np.arange(n)[None]).numpy()[0].astype(np.float64)
    if shared:  # the batch mixture of two identical queries is the same proposal
        log_q = sampler.mixture_log_prob(h / tau, np.arange(n)).numpy().astype(np.float64)
    assert chi_square_pvalue(np.bincount(drawn, minlength=n), np.exp(log_q), m) > CHI_SQUARE_ALPHA
    expected = h[0] @ table[drawn].T / tau - np.log(m) - log_q[drawn]
    got = scores.numpy()[0, 2:]
    unmasked = (drawn != 5) & (got > -1e29)
    np.testing.assert_allclose(got[unmasked], expected[unmasked], rtol=1e-4, atol=1e-3)

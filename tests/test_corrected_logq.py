"""Khrylchenko et al.'s corrected logQ (`logq_correction="corrected"`) against independent formulas:
its value, its gradient, the unbiasedness of its estimate of the partition function without the
positive, and every entry point that offers it."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import legacy_only

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, estimator, retrieval, samplers
from tf_adaptive_softmax._keras import deserialize, serialize


def _paper_loss(positive, negatives, log_draws=0.0):
    """NumPy: (1 - P̂(y)) · (log Σ exp(negatives) - o_y), P̂(y) = sigmoid(o_y - (log Σ - log_draws))."""
    log_rest = np.logaddexp.reduce(negatives, axis=-1)
    miss = 1.0 - 1.0 / (1.0 + np.exp(-(positive - (log_rest - log_draws))))
    return miss * (log_rest - positive), miss


def test_value_and_gradient_match_the_formula():
    rng = np.random.default_rng(0)
    logits = tf.Variable(rng.standard_normal((4, 7)).astype(np.float32) * 2)
    with tf.GradientTape() as tape:
        loss = estimator._corrected_logq_cross_entropy(logits, num_true=1)
        total = tf.reduce_sum(loss)
    values = logits.numpy()
    want, miss = _paper_loss(values[:, 0], values[:, 1:])
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5)
    gradient = tape.gradient(total, logits).numpy()
    softmax_rest = np.exp(values[:, 1:] - np.logaddexp.reduce(values[:, 1:], axis=1, keepdims=True))
    # (1 - P̂) is a constant weight: the gradient of log Z₋y - o_y, scaled by it.
    np.testing.assert_allclose(gradient[:, 0], -miss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gradient[:, 1:], miss[:, None] * softmax_rest, rtol=1e-5, atol=1e-6)


def test_sampled_loss_uses_the_raw_positive_and_masks_hits():
    rng = np.random.default_rng(1)
    n, d = 20, 4
    query = rng.standard_normal((3, d)).astype(np.float32)
    table = rng.standard_normal((n, d)).astype(np.float32)
    labels = np.array([2, 5, 7], np.int32)
    sampled = np.array([[2, 3, 4, 2], [1, 1, 9, 5], [7, 0, 8, 6]], np.int32)
    log_q = np.log(rng.uniform(0.01, 0.2, sampled.shape)).astype(np.float32)
    loss = estimator.sampled_softmax_loss(query, labels, sampled, log_q, table, logq_correction="corrected")
    logits = query @ table.T
    positive = logits[np.arange(3), labels]
    negatives = np.take_along_axis(logits, sampled, 1) - np.log(4) - log_q
    negatives = np.where(sampled == labels[:, None], -np.inf, negatives)
    np.testing.assert_allclose(loss.numpy(), _paper_loss(positive, negatives)[0], rtol=1e-5)
    # The standard loss differs (the positive corrected and inside the log-sum).
    standard = estimator.sampled_softmax_loss(query, labels, sampled, log_q, table, true_log_q=log_q[:, :1])
    assert np.abs(standard.numpy() - loss.numpy()).max() > 1e-2


def test_negatives_estimate_the_partition_function_without_the_positive():
    # Σ_j exp(o_j - log(m·q_j)) over the unmasked draws is unbiased for Z₋y = Σ_{i≠y} exp(o_i),
    # what P̂(y) needs (the paper writes it with q / (1 - q_y) and the unmasked count).
    n, m, repeats = 12, 5, 40_000
    rng = np.random.default_rng(2)
    logits = rng.standard_normal(n).astype(np.float32)
    q = rng.dirichlet(np.ones(n)).astype(np.float32)
    y = 3
    draws = rng.choice(n, size=(repeats, m), p=q)
    terms = np.where(draws == y, 0.0, np.exp(logits[draws]) / (m * q[draws]))
    estimate = terms.sum(axis=1)
    exact = np.exp(logits).sum() - np.exp(logits[y])
    assert abs(estimate.mean() - exact) < 4 * estimate.std() / np.sqrt(repeats)


def test_layer_option_config_and_errors():
    layer = AdaptiveSampledSoftmaxLoss(30, samplers.Uniform(30, seed=0), num_samples=5, logq_correction="corrected")
    assert layer.get_config()["logq_correction"] == "corrected"
    assert deserialize(serialize(layer)).logq_correction == "corrected"
    assert AdaptiveSampledSoftmaxLoss(30, None).get_config()["logq_correction"] == "standard"
    old_config = {k: v for k, v in layer.get_config().items() if k != "logq_correction"}
    assert type(layer).from_config(old_config).logq_correction == "standard"  # older files load
    with pytest.raises(ValueError, match="logq_correction"):
        AdaptiveSampledSoftmaxLoss(30, None, logq_correction="new")
    with pytest.raises(ValueError, match="remove_accidental_hits"):
        AdaptiveSampledSoftmaxLoss(30, None, logq_correction="corrected", remove_accidental_hits=False)
    # In training the layer's loss is the estimator's corrected form on its own draws.
    layer.build_for_dim(4)
    query, labels = tf.random.normal([6, 4]), tf.constant([0, 1, 2, 3, 4, 29])
    layer.sampler._seed_state.assign([0, 0])
    got = layer((query, labels), training=True)
    layer.sampler._seed_state.assign([0, 0])
    ids, log_q = layer.sampler.sample(query, 5)
    want = estimator.sampled_softmax_loss(
        query, labels, ids, log_q, layer.class_embeddings, layer.class_bias, logq_correction="corrected"
    )
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5)


def _in_batch(seed=3, batch=4, dim=3):
    rng = np.random.default_rng(seed)
    query = rng.standard_normal((batch, dim)).astype(np.float32)
    candidates = rng.standard_normal((batch, dim)).astype(np.float32)
    ids = np.array([4, 7, 4, 9], np.int32)
    probability = np.array([0.3, 0.1, 0.3, 0.05], np.float32)
    return query, candidates, ids, probability


def test_in_batch_corrected_logq_matches_a_hand_computation():
    query, candidates, ids, probability = _in_batch()
    loss = retrieval.mixed_negatives_loss(
        query,
        candidates,
        ids,
        candidate_sampling_probability=probability,
        logq_correction="corrected",
        reduction="none",
    )
    scores = query @ candidates.T
    want = []
    for row in range(4):
        others = [col for col in range(4) if col != row and ids[col] != ids[row]]  # hits removed
        negatives = scores[row, others] - np.log(probability[others])
        want.append(_paper_loss(scores[row, row], negatives, np.log(4))[0])
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5)
    with pytest.raises(ValueError, match="candidate_sampling_probability"):
        retrieval.mixed_negatives_loss(query, candidates, ids, logq_correction="corrected")


def test_mixed_corrected_logq_counts_two_estimates():
    query, candidates, ids, probability = _in_batch()
    items = np.random.default_rng(4).standard_normal((12, 3)).astype(np.float32)
    sampler = samplers.Uniform(12, seed=0)
    kwargs = dict(
        sampler=sampler,
        num_samples=5,
        embed_ids=lambda i: tf.gather(items, i),
        candidate_sampling_probability=probability,
    )
    sampler._seed_state.assign([0, 0])
    loss = retrieval.mixed_negatives_loss(
        query, candidates, ids, logq_correction="corrected", reduction="none", **kwargs
    )
    sampler._seed_state.assign([0, 0])
    scores, _ = retrieval.mixed_negatives_scores(
        query, candidates, ids, logq_correction="negatives_only", remove_accidental_hits=True, **kwargs
    )
    scores = scores.numpy()
    want = [_paper_loss(scores[row, row], np.delete(scores[row], row), np.log(2.0))[0] for row in range(4)]
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5)


@legacy_only
def test_adaptive_retrieval_trains_with_the_corrected_logq():
    import tensorflow_recommenders as tfrs

    from tf_adaptive_softmax.tfrs import AdaptiveRetrieval

    query, candidates, ids, probability = _in_batch()
    task = AdaptiveRetrieval(None, logq_correction="corrected")
    got = task(query, candidates, candidate_ids=ids, candidate_sampling_probability=probability, training=True)
    want = retrieval.mixed_negatives_loss(
        query, candidates, ids, candidate_sampling_probability=probability, logq_correction="corrected"
    )
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5)
    # Evaluation reports Retrieval's own in-batch loss.
    standard = AdaptiveRetrieval(None)(query, candidates, candidate_ids=ids, candidate_sampling_probability=probability)
    evaluated = task(query, candidates, candidate_ids=ids, candidate_sampling_probability=probability)
    np.testing.assert_allclose(evaluated.numpy(), standard.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="num_hard_negatives"):
        AdaptiveRetrieval(None, logq_correction="corrected", retrieval=tfrs.tasks.Retrieval(num_hard_negatives=2))
    with pytest.raises(ValueError, match="candidate_sampling_probability"):
        task(query, candidates, candidate_ids=ids, training=True)

"""Degenerate and hostile inputs, each with a clear error or a documented correct result
(README, Reliability): N=1, N < K, m > N, all-zero and identical embeddings, batch size 1,
empty batches, NaN queries, float / negative / too-large labels, a mismatched query width and
huge logits."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, estimator, samplers

D = 4


def make(name, num_classes, embeddings=None, dim=D):
    """A sampler of each kind for `num_classes`, refreshed from `embeddings` (random if None)."""
    counts = np.arange(1, num_classes + 1, dtype=np.float64)
    sampler = {
        "uniform": lambda: samplers.Uniform(num_classes, seed=0),
        "log_uniform": lambda: samplers.LogUniform(num_classes, seed=0),
        "unigram": lambda: samplers.Unigram(counts, seed=0),
        "midx_pq": lambda: samplers.MIDX(num_classes, num_codewords=min(3, num_classes), seed=0),
        "midx_rvq_unigram": lambda: samplers.MIDX(
            num_classes, num_codewords=min(3, num_classes), quantizer="rvq", residual="unigram", counts=counts, seed=0
        ),
        "quadratic_kernel": lambda: samplers.QuadraticKernel(num_classes, seed=0),
        "softmax": lambda: samplers.Softmax(num_classes, live=False, seed=0),
    }[name]()
    if embeddings is None:
        embeddings = np.random.default_rng(1).standard_normal((num_classes, dim)).astype(np.float32)
    sampler.refresh(embeddings)
    return sampler


NAMES = ["uniform", "log_uniform", "unigram", "midx_pq", "midx_rvq_unigram", "quadratic_kernel", "softmax"]
ADAPTIVE = ["midx_pq", "midx_rvq_unigram", "quadratic_kernel", "softmax"]


def _queries(batch, scale=1.0):
    return tf.constant(np.random.default_rng(2).standard_normal((batch, D)).astype(np.float32) * scale)


def _all_log_probs(sampler, queries, num_classes):
    ids = tf.tile(tf.range(num_classes)[tf.newaxis], [queries.shape[0], 1])
    return sampler.log_prob(queries, ids).numpy()


@pytest.mark.parametrize("name", NAMES)
def test_single_class(name):
    sampler = make(name, 1)
    ids, log_q = sampler.sample(_queries(3), 5)
    np.testing.assert_array_equal(ids.numpy(), 0)
    np.testing.assert_allclose(log_q.numpy(), 0.0, atol=1e-6)
    # With one class every draw is the positive (masked): the loss is exactly the full softmax's 0.
    layer = AdaptiveSampledSoftmaxLoss(1, make(name, 1), num_samples=5)
    for training in (True, False):
        np.testing.assert_allclose(layer((_queries(3), tf.zeros([3], tf.int32)), training=training), 0.0, atol=1e-6)


def test_more_codewords_than_classes_is_a_clear_error():
    with pytest.raises(ValueError, match="num_codewords"):
        samplers.MIDX(3, num_codewords=5)


@pytest.mark.parametrize("name", NAMES)
def test_more_samples_than_classes_draw_with_replacement(name):
    num_classes = 7
    sampler = make(name, num_classes)
    ids, log_q = sampler.sample(_queries(2), 50)
    assert ids.shape == (2, 50) and 0 <= ids.numpy().min() and ids.numpy().max() < num_classes
    np.testing.assert_allclose(log_q.numpy(), sampler.log_prob(_queries(2), ids).numpy(), atol=1e-5)
    layer = AdaptiveSampledSoftmaxLoss(num_classes, make(name, num_classes), num_samples=50)
    assert np.all(np.isfinite(layer((_queries(2), tf.constant([1, 6])), training=True).numpy()))


@pytest.mark.parametrize("name", ADAPTIVE)
@pytest.mark.parametrize("embeddings", ["zeros", "identical"])
def test_collapsed_embeddings_leave_only_the_static_weights(name, embeddings):
    # All classes alike (k-means ties, a zero kernel): the query cannot tell them apart, so q is
    # uniform, or proportional to the counts for MIDX's unigram residual.
    num_classes = 23
    table = np.zeros((num_classes, D), np.float32)
    if embeddings == "identical":
        table[:] = np.array([0.3, -1.0, 2.0, 0.5], np.float32)
    sampler = make(name, num_classes, table)
    log_probs = _all_log_probs(sampler, _queries(3), num_classes)
    expected = np.full(num_classes, -math.log(num_classes))
    if name == "midx_rvq_unigram":
        counts = np.arange(1, num_classes + 1)
        expected = np.log(counts / counts.sum())
    np.testing.assert_allclose(log_probs, np.tile(expected, (3, 1)), atol=1e-4)
    ids, _ = sampler.sample(_queries(3), 2000)
    assert len(np.unique(ids.numpy())) == num_classes


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 0])
def test_batch_of_one_and_empty_batch(name, batch):
    sampler = make(name, 11)
    for function in (lambda f: f, tf.function):
        ids, log_q = function(lambda q: sampler.sample(q, 6))(_queries(batch))
        assert ids.shape == (batch, 6) and log_q.shape == (batch, 6)
        assert function(sampler.log_prob)(_queries(batch), tf.zeros([batch, 2], tf.int32)).shape == (batch, 2)
    layer = AdaptiveSampledSoftmaxLoss(11, make(name, 11), num_samples=6)
    for training in (True, False):
        loss = layer((_queries(batch), tf.zeros([batch], tf.int32)), training=training)
        assert loss.shape == (batch,) and np.all(np.isfinite(loss.numpy()))


@pytest.mark.parametrize("name", NAMES)
def test_nan_queries_give_nan_log_q_never_a_crash(name):
    # A diverged model: draws stay valid ids, and the NaN shows in log q (adaptive samplers) and
    # in the loss, where TerminateOnNaN or the progress bar catches it.
    sampler = make(name, 11)
    queries = tf.fill([2, D], float("nan"))
    ids, log_q = sampler.sample(queries, 6)
    assert 0 <= ids.numpy().min() and ids.numpy().max() < 11
    if name in ADAPTIVE:
        assert np.all(np.isnan(log_q.numpy()))
    layer = AdaptiveSampledSoftmaxLoss(11, make(name, 11), num_samples=6)
    assert np.all(np.isnan(layer((queries, tf.constant([1, 2])), training=True).numpy()))


@pytest.mark.parametrize(
    "labels, error, match",
    [
        (tf.constant([1.0, 2.0]), TypeError, "integer class ids"),
        (tf.constant([1, -1]), tf.errors.InvalidArgumentError, r"\[0, num_classes=11\)"),
        (tf.constant([1, 11]), tf.errors.InvalidArgumentError, r"\[0, num_classes=11\)"),
        (tf.constant([[[1]], [[2]]]), ValueError, r"\[batch\] or \[batch, num_true\]"),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_bad_labels_name_the_argument_and_range(labels, error, match, training):
    layer = AdaptiveSampledSoftmaxLoss(11, make("midx_pq", 11), num_samples=4)
    with pytest.raises(error, match=match):
        layer((_queries(2), labels), training=training)
    with pytest.raises(error, match=match):
        tf.function(lambda q, y: layer((q, y), training=training))(_queries(2), labels)


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_query_width_names_the_expected_shape(name):
    sampler = make(name, 11)
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        sampler.sample(tf.zeros([2, D + 1]), 3)
    layer = AdaptiveSampledSoftmaxLoss(11, make(name, 11), num_samples=4)
    layer((_queries(2), tf.constant([1, 2])))
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        layer((tf.zeros([2, D + 1]), tf.constant([1, 2])))


@pytest.mark.parametrize("name", NAMES)
def test_huge_logits_do_not_overflow(name):
    # Logits of order 1e5: exp() overflows float32 at 89; every path works in log space.
    num_classes = 11
    sampler = make(name, num_classes)
    queries = _queries(3, scale=1e5)
    log_probs = _all_log_probs(sampler, queries, num_classes)
    assert not np.any(np.isnan(log_probs))
    # Normalized up to float32 rounding of terms of size ~2.5e5 (one ulp there is 0.016).
    np.testing.assert_allclose(np.logaddexp.reduce(log_probs, axis=1), 0.0, atol=0.05)
    ids, log_q = sampler.sample(queries, 8)
    assert np.all(np.isfinite(log_q.numpy()))
    layer = AdaptiveSampledSoftmaxLoss(num_classes, make(name, num_classes), num_samples=8)
    layer.build_for_dim(D)
    layer.class_embeddings.assign(np.random.default_rng(3).standard_normal((num_classes, D)))
    labels = tf.constant([0, 5, 10])
    for training in (True, False):
        loss = layer((queries, labels), training=training).numpy()
        assert np.all(np.isfinite(loss)) and np.all(loss >= 0)
    logits = estimator._full_logits(queries, layer.class_embeddings, layer.class_bias).numpy()
    expected = np.logaddexp.reduce(logits, axis=1) - logits[np.arange(3), labels.numpy()]
    np.testing.assert_allclose(layer((queries, labels), training=False).numpy(), expected, rtol=1e-5)

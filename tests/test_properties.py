"""Property-based tests (hypothesis) over shapes, seeds and samplers, and a fuzz test of the
public API with malformed input. Examples are derandomized so CI runs are reproducible."""

import math

import numpy as np
import tensorflow as tf
from conftest import chi_square_pvalue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_degenerate_inputs import NAMES, make

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, estimator

PROPERTY = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# 25 examples per property share one error budget: alpha 1e-6 each.
ALPHA = 1e-6
DOCUMENTED_ERRORS = (ValueError, TypeError, tf.errors.InvalidArgumentError)


@PROPERTY
@given(
    name=st.sampled_from(NAMES),
    num_classes=st.integers(1, 40),
    dim=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 2),
    scale=st.sampled_from([0.1, 1.0, 3.0]),
)
def test_sampler_frequencies_match_log_prob(name, num_classes, dim, seed, scale):
    sampler = make(name, num_classes, dim=dim)
    query = tf.constant(np.random.default_rng(seed).standard_normal((1, dim)).astype(np.float32) * scale)
    probs = np.exp(sampler.log_prob(query, tf.range(num_classes)[tf.newaxis]).numpy()[0])
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-4)
    draws = 4000
    ids, log_q = sampler.sample(query, draws, seed=seed)
    np.testing.assert_allclose(np.exp(log_q.numpy()[0]), probs[ids.numpy()[0]], rtol=1e-4, atol=1e-7)
    counts = np.bincount(ids.numpy()[0], minlength=num_classes)
    if num_classes > 1:
        assert chi_square_pvalue(counts, probs, draws) > ALPHA


@PROPERTY
@given(
    num_classes=st.integers(2, 30),
    batch=st.integers(1, 5),
    dim=st.integers(1, 6),
    seed=st.integers(0, 10**6),
    logq_correction=st.sampled_from(["standard", "negatives_only"]),
)
def test_drawing_every_class_once_recovers_the_full_softmax(num_classes, batch, dim, seed, logq_correction):
    # m = N draws, one of each class, with q = 1/N: every correction log(m·q) is 0 and the
    # positive's own draw is masked, so the sampled loss is exactly the full softmax loss.
    rng = np.random.default_rng(seed)
    query = tf.constant(rng.standard_normal((batch, dim)), tf.float32)
    weights = tf.constant(rng.standard_normal((num_classes, dim)), tf.float32)
    bias = tf.constant(rng.standard_normal(num_classes), tf.float32)
    labels = tf.constant(rng.integers(0, num_classes, batch), tf.int32)
    draws = tf.constant(np.stack([rng.permutation(num_classes) for _ in range(batch)]), tf.int32)
    log_q = tf.fill([batch, num_classes], -math.log(num_classes))
    sampled = estimator.sampled_softmax_loss(
        query,
        labels,
        draws,
        log_q,
        weights,
        bias,
        true_log_q=tf.fill([batch, 1], -math.log(num_classes)),
        logq_correction=logq_correction,
    )
    full = estimator.full_softmax_loss(query, labels, weights, bias)
    np.testing.assert_allclose(sampled.numpy(), full.numpy(), rtol=1e-5, atol=1e-5)


@PROPERTY
@given(
    num_classes=st.integers(1, 30),
    batch=st.integers(1, 4),
    num_samples=st.integers(1, 12),
    seed=st.integers(0, 10**6),
    log_q_scale=st.floats(0.0, 30.0),
)
def test_sampled_loss_is_non_negative_for_any_proposal(num_classes, batch, num_samples, seed, log_q_scale):
    # loss = logsumexp(o'_y, o'_1..o'_m) - o'_y >= 0 whatever the draws and their log q.
    rng = np.random.default_rng(seed)
    loss = estimator.sampled_softmax_loss(
        tf.constant(rng.standard_normal((batch, 3)), tf.float32),
        tf.constant(rng.integers(0, num_classes, batch), tf.int32),
        tf.constant(rng.integers(0, num_classes, (batch, num_samples)), tf.int32),
        tf.constant(-rng.random((batch, num_samples)) * log_q_scale, tf.float32),
        tf.constant(rng.standard_normal((num_classes, 3)), tf.float32),
        true_log_q=tf.constant(-rng.random((batch, 1)) * log_q_scale, tf.float32),
    ).numpy()
    assert np.all(np.isfinite(loss)) and np.all(loss >= -1e-6)


def _malformed_arrays():
    dtypes = st.sampled_from(["float32", "float16", "float64", "int32", "int64", "bool"])
    shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3)

    def array(dtype, shape, fill):
        with np.errstate(invalid="ignore"):  # NaN cast to an integer dtype: garbage on purpose
            return np.full(shape, fill).astype(dtype)

    return st.builds(array, dtypes, shapes, st.sampled_from([0, 1, -3, 7, 40, 2.5, float("nan")]))


ODD_VALUES = st.one_of(_malformed_arrays(), st.sampled_from([None, "text", 3, -1, 2.5, True, [1, 2], [[0.5]]]))
NUM_SAMPLES = st.sampled_from([0, -2, 1, 3, 2.5, "3", None, True, np.int64(4), tf.constant(3)])


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    name=st.sampled_from(NAMES),
    queries=ODD_VALUES,
    ids=ODD_VALUES,
    num_samples=NUM_SAMPLES,
    embeddings=ODD_VALUES,
    call=st.sampled_from(["sample", "log_prob", "refresh", "layer", "estimator"]),
)
def test_fuzzed_public_api_raises_only_documented_errors(name, queries, ids, num_samples, embeddings, call):
    sampler = make(name, 7)
    try:
        if call == "sample":
            sampler.sample(queries, num_samples)
        elif call == "log_prob":
            sampler.log_prob(queries, ids)
        elif call == "refresh":
            sampler.refresh(embeddings)
        elif call == "layer":
            AdaptiveSampledSoftmaxLoss(7, sampler, num_samples=num_samples)((queries, ids), training=True)
        else:
            estimator.sampled_softmax_loss(queries, ids, ids, queries, embeddings)
    except DOCUMENTED_ERRORS:
        pass

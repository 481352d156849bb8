import math

import numpy as np
import pytest
import tensorflow as tf

from tf_adaptive_softmax import estimator, samplers


def _problem(batch=6, num_classes=40, dim=8, num_true=1, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((num_classes, dim)).astype(np.float32)
    b = rng.standard_normal(num_classes).astype(np.float32)
    h = rng.standard_normal((batch, dim)).astype(np.float32)
    labels = np.stack([rng.choice(num_classes, num_true, replace=False) for _ in range(batch)])
    return h, labels.astype(np.int64), w, b


@pytest.mark.parametrize("num_true", [1, 3])
def test_parity_with_tf_sampled_softmax_loss(num_true):
    h, labels, w, b = _problem(num_true=num_true)
    m, n = 12, w.shape[0]
    rng = np.random.default_rng(1)
    sampled = rng.integers(0, n, m)
    sampled[0] = labels[0, 0]  # force an accidental hit
    q = rng.random(n).astype(np.float32) + 0.1
    q /= q.sum()
    true_expected = (m * q[labels]).astype(np.float32)
    sampled_expected = (m * q[sampled]).astype(np.float32)
    expected = tf.nn.sampled_softmax_loss(
        w,
        b,
        labels,
        h,
        num_sampled=m,
        num_classes=n,
        num_true=num_true,
        sampled_values=(tf.constant(sampled, tf.int64), true_expected, sampled_expected),
        remove_accidental_hits=True,
    )
    batch = h.shape[0]
    ours = estimator.sampled_softmax_loss(
        h,
        labels,
        np.tile(sampled, (batch, 1)),
        np.tile(np.log(q[sampled]), (batch, 1)),
        w,
        b,
        true_log_q=np.log(q[labels]),
        logq_correction="standard",
        remove_accidental_hits=True,
    )
    # TF adds -FLT_MAX at hits, which costs it ~1e-5 relative precision; ours is exact (see below).
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    logits = h @ w.T + b
    pos = logits[0, labels[0]] - np.log(m * q[labels[0]])
    neg = logits[0, sampled] - np.log(m * q[sampled])
    kept = ~np.isin(sampled, labels[0])
    manual = -pos.mean() + np.logaddexp.reduce(np.concatenate([pos, neg[kept]]).astype(np.float64))
    assert ours[0].numpy() == pytest.approx(manual, rel=1e-6)


def test_eq3_keeps_positive_uncorrected():
    h, labels, w, b = _problem(batch=2)
    sampled = np.array([[1, 2, 3], [4, 5, 6]])
    log_q = np.full((2, 3), math.log(0.01), np.float32)
    logits = h @ w.T + b
    loss = estimator.sampled_softmax_loss(
        h, labels, sampled, log_q, w, b, logq_correction="negatives_only", remove_accidental_hits=False
    )
    for row in range(2):
        pos = logits[row, labels[row, 0]]
        neg = logits[row, sampled[row]] - math.log(3 * 0.01)
        manual = -pos + np.logaddexp.reduce(np.concatenate([[pos], neg]))
        assert loss[row].numpy() == pytest.approx(manual, rel=1e-5)


def test_default_corrects_the_positive_by_its_log_expected_count():
    h, labels, w, b = _problem(batch=2)
    sampled = np.array([[1, 2, 3], [4, 5, 6]])
    log_q = np.full((2, 3), math.log(0.01), np.float32)
    true_log_q = np.log([[0.2], [0.03]]).astype(np.float32)
    logits = h @ w.T + b
    loss = estimator.sampled_softmax_loss(
        h, labels, sampled, log_q, w, b, true_log_q=true_log_q, remove_accidental_hits=False
    )
    for row in range(2):
        pos = logits[row, labels[row, 0]] - math.log(3 * float(np.exp(true_log_q[row, 0])))
        neg = logits[row, sampled[row]] - math.log(3 * 0.01)
        manual = -pos + np.logaddexp.reduce(np.concatenate([[pos], neg]))
        assert loss[row].numpy() == pytest.approx(manual, rel=1e-5)


def test_accidental_hit_mask_matches_any_positive():
    true_ids = tf.constant([[1, 2], [3, 4]])
    sampled = tf.constant([[2, 5, 1], [4, 4, 0]])
    mask = estimator._accidental_hit_mask(true_ids, sampled).numpy()
    np.testing.assert_array_equal(mask, [[True, False, True], [True, True, False]])


def test_masked_hits_do_not_change_loss_when_removed():
    h, labels, w, b = _problem(batch=1)
    y = int(labels[0, 0])
    log_q = np.full((1, 3), math.log(0.05), np.float32)
    with_hit = estimator.sampled_softmax_loss(h, labels, [[y, 7, 9]], log_q, w, b, logq_correction="negatives_only")
    logits = h @ w.T + b
    negatives = logits[0, [7, 9]] - math.log(3 * 0.05)
    manual = -logits[0, y] + np.logaddexp.reduce(np.concatenate([[logits[0, y]], negatives]))
    assert with_hit[0].numpy() == pytest.approx(manual, rel=1e-5)


def test_sample_weight_scales_rows():
    h, labels, w, b = _problem(batch=3)
    sampled = np.tile(np.arange(5), (3, 1))
    log_q = np.full((3, 5), -3.0, np.float32)
    true_log_q = np.full((3, 1), -2.0, np.float32)
    plain = estimator.sampled_softmax_loss(h, labels, sampled, log_q, w, b, true_log_q=true_log_q)
    weighted = estimator.sampled_softmax_loss(
        h, labels, sampled, log_q, w, b, true_log_q=true_log_q, sample_weight=[0.0, 1.0, 2.0]
    )
    np.testing.assert_allclose(weighted.numpy(), plain.numpy() * [0.0, 1.0, 2.0], rtol=1e-6)


def test_full_softmax_loss_matches_sparse_cross_entropy():
    h, labels, w, b = _problem()
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(labels[:, 0], h @ w.T + b)
    np.testing.assert_allclose(estimator.full_softmax_loss(h, labels[:, 0], w, b).numpy(), expected.numpy(), rtol=1e-5)


def _logit_gradient_error(logits, y, draw, log_q_of, num_samples, repeats, seed):
    """|MC mean of the sampled-softmax gradient w.r.t. logits - (p - y)|_1."""
    n = logits.shape[0]
    rng = np.random.default_rng(seed)
    sampled = draw(rng, (repeats, num_samples))
    query = tf.Variable(np.tile(logits, (repeats, 1)))
    with tf.GradientTape() as tape:
        # Identity class embeddings make the logits equal the query: d(loss)/d(query) = d/d(logits).
        loss = estimator.sampled_softmax_loss(
            query,
            np.full(repeats, y),
            sampled,
            log_q_of(sampled),
            np.eye(n, dtype=np.float32),
            logq_correction="negatives_only",  # Blanc & Rendle's theorem is about eq. 3
        )
        total = tf.reduce_sum(loss)
    mean_grad = tape.gradient(total, query).numpy().mean(axis=0)
    p = np.exp(logits - np.logaddexp.reduce(logits))
    target = p - np.eye(n)[y]
    return np.abs(mean_grad - target).sum()


def test_gradient_unbiased_with_softmax_over_negatives():
    # Blanc & Rendle Thm 2.1: q = softmax restricted to the negatives, positive uncorrected ->
    # E[gradient] = p - y exactly; the Monte-Carlo error shrinks like 1/sqrt(draws).
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(15) * 1.5).astype(np.float32)
    y = 4
    q = np.exp(logits - logits.max())
    q[y] = 0
    q /= q.sum()
    draw = lambda r, shape: r.choice(len(q), size=shape, p=q)  # noqa: E731
    log_q_of = lambda s: np.log(q[s]).astype(np.float32)  # noqa: E731
    errors = [_logit_gradient_error(logits, y, draw, log_q_of, 5, r, seed=7) for r in (250, 4000, 64000)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01


def test_gradient_bias_shrinks_with_more_samples_for_full_softmax_sampler():
    # The Softmax oracle includes the positive; with hits masked the estimator is consistent.
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal(15) * 1.5).astype(np.float32)
    y = int(np.argmax(logits))
    sampler = samplers.Softmax(15)
    sampler.refresh(np.eye(15, dtype=np.float32))
    q = np.exp(logits - np.logaddexp.reduce(logits))
    draw = lambda r, shape: r.choice(len(q), size=shape, p=q)  # noqa: E731
    log_q_of = lambda s: sampler.log_prob(np.tile(logits, (len(s), 1)), s).numpy()  # noqa: E731
    errors = [_logit_gradient_error(logits, y, draw, log_q_of, m, 20000, seed=8) for m in (2, 16, 128)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05


def test_standard_correction_requires_true_log_q():
    h, labels, w, b = _problem(batch=1)
    with pytest.raises(ValueError, match="true_log_q"):
        estimator.sampled_softmax_loss(h, labels, [[1, 2]], [[-1.0, -1.0]], w, b, logq_correction="standard")


def test_float_labels_are_rejected():
    h, labels, w, b = _problem(batch=1)
    with pytest.raises(TypeError, match="labels"):
        estimator.full_softmax_loss(h, labels.astype(np.float32), w, b)

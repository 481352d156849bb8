"""Negatives shared by the batch: the batch-mixture proposal, its estimator path and the layer option."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import CHI_SQUARE_ALPHA, chi_square_pvalue, forbidden_in
from test_samplers import FACTORIES, NUM_CLASSES, _queries

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, estimator, samplers
from tf_adaptive_softmax._keras import K


def _all_ids(batch):
    return np.tile(np.arange(NUM_CLASSES), (batch, 1))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_shared_frequencies_match_the_batch_mixture(name):
    sampler = FACTORIES[name]()
    queries = _queries(batch=4)
    ids, log_q = sampler.sample_shared(queries, num_samples=20000, seed=11)
    assert ids.shape == (20000,) and ids.dtype == tf.int32 and log_q.shape == (20000,)
    mixture = np.exp(sampler.mixture_log_prob(queries, np.arange(NUM_CLASSES)).numpy())
    # Independent of the mixture code path: the mean over the batch of each query's own q.
    per_query = np.exp(sampler.log_prob(queries, _all_ids(4)).numpy()).mean(axis=0)
    np.testing.assert_allclose(mixture, per_query, rtol=1e-4, atol=1e-7)
    assert mixture.sum() == pytest.approx(1.0, abs=1e-5)
    counts = np.bincount(ids.numpy(), minlength=NUM_CLASSES)
    assert chi_square_pvalue(counts, mixture, counts.sum()) > CHI_SQUARE_ALPHA
    np.testing.assert_allclose(log_q.numpy(), np.log(mixture[ids.numpy()]), rtol=1e-5, atol=1e-5)


def test_quadratic_kernel_mixture_matches_numpy_closed_form():
    rng = np.random.default_rng(5)
    weights = rng.standard_normal((NUM_CLASSES, 4)).astype(np.float32) * 0.3
    queries = rng.standard_normal((6, 4)).astype(np.float32)
    sampler = samplers.QuadraticKernel(NUM_CLASSES, alpha=30.0, leaf_size=8)
    sampler.refresh(weights)
    kernel = 30.0 * (queries.astype(np.float64) @ weights.T) ** 2 + 1.0
    expected = (kernel / kernel.sum(axis=1, keepdims=True)).mean(axis=0)
    got = np.exp(sampler.mixture_log_prob(queries, np.arange(NUM_CLASSES)).numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_static_samplers_share_their_own_distribution():
    sampler = samplers.LogUniform(NUM_CLASSES, seed=0)
    queries = _queries(batch=3)
    np.testing.assert_allclose(
        sampler.mixture_log_prob(queries, [[0, 5], [9, 36]]).numpy(),
        sampler.log_prob(queries[:2], [[0, 5], [9, 36]]).numpy(),
        rtol=1e-6,
    )


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_shared_draws_handle_empty_batches_and_seeds(name):
    sampler = FACTORIES[name]()
    empty = np.zeros((0, 4), np.float32)
    for draw in (sampler.sample_shared, tf.function(sampler.sample_shared, reduce_retracing=True)):
        ids, log_q = draw(empty, 9, seed=3)
        assert ids.shape == (9,) and np.all((ids.numpy() >= 0) & (ids.numpy() < NUM_CLASSES))
        assert np.all(np.isfinite(log_q.numpy()))
    first, _ = sampler.sample_shared(_queries(5), 7, seed=4)
    again, _ = sampler.sample_shared(_queries(5), 7, seed=4)
    np.testing.assert_array_equal(first.numpy(), again.numpy())


def test_shared_draw_arguments_are_checked():
    sampler = FACTORIES["quadratic_kernel"]()
    with pytest.raises(ValueError, match="num_samples"):
        sampler.sample_shared(_queries(), 0)
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        sampler.sample_shared(np.ones((3, 5), np.float32), 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="ids"):
        sampler.mixture_log_prob(_queries(), [0, NUM_CLASSES])


@pytest.mark.parametrize("num_true", [1, 3])
def test_shared_ids_match_tf_sampled_softmax_loss(num_true):
    rng = np.random.default_rng(0)
    n, d, batch, m = 40, 8, 6, 12
    w = rng.standard_normal((n, d)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    h = rng.standard_normal((batch, d)).astype(np.float32)
    labels = np.stack([rng.choice(n, num_true, replace=False) for _ in range(batch)]).astype(np.int64)
    # Distinct draws, as TF's unique samplers give: TF masks only one copy of a repeated hit.
    sampled = rng.choice(n, m, replace=False)
    sampled[0] = labels[0, 0]  # an accidental hit
    q = rng.random(n).astype(np.float32) + 0.1
    q /= q.sum()
    expected = tf.nn.sampled_softmax_loss(
        w,
        b,
        labels,
        h,
        num_sampled=m,
        num_classes=n,
        num_true=num_true,
        sampled_values=(
            tf.constant(sampled, tf.int64),
            (m * q[labels]).astype(np.float32),
            (m * q[sampled]).astype(np.float32),
        ),
        remove_accidental_hits=True,
    )
    shared = estimator.sampled_softmax_loss(
        h, labels, sampled, np.log(q[sampled]), w, b, true_log_q=np.log(q[labels]), logq_correction="standard"
    )
    np.testing.assert_allclose(shared.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    per_query = estimator.sampled_softmax_loss(
        h,
        labels,
        np.tile(sampled, (batch, 1)),
        np.tile(np.log(q[sampled]), (batch, 1)),
        w,
        b,
        true_log_q=np.log(q[labels]),
        logq_correction="standard",
    )
    np.testing.assert_allclose(shared.numpy(), per_query.numpy(), rtol=1e-6)


def test_shared_gradient_touches_only_the_drawn_rows():
    rng = np.random.default_rng(1)
    w = tf.Variable(rng.standard_normal((30, 4)).astype(np.float32))
    h = rng.standard_normal((5, 4)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(
            estimator.sampled_softmax_loss(
                h, [0, 1, 2, 3, 4], [7, 8, 9], tf.fill([3], -3.0), w, true_log_q=tf.fill([5, 1], -3.0)
            )
        )
    gradient = tape.gradient(loss, w)
    assert isinstance(gradient, tf.IndexedSlices)
    assert set(gradient.indices.numpy()) == {0, 1, 2, 3, 4, 7, 8, 9}


@pytest.mark.parametrize("logq_correction", ["negatives_only", "standard"])
def test_layer_uses_shared_draws_from_the_batch_mixture(logq_correction):
    n, d = 50, 8
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, d)).astype(np.float32)
    y = rng.integers(0, n, 16).astype(np.int32)
    layer = AdaptiveSampledSoftmaxLoss(
        n,
        samplers.QuadraticKernel(n, leaf_size=8, seed=4),
        num_samples=6,
        shared_negatives=True,
        logq_correction=logq_correction,
    )
    layer.build_for_dim(d)
    assert layer.refresh_sampler()
    twin = samplers.QuadraticKernel(n, leaf_size=8, seed=4)
    twin.refresh(layer.class_embeddings, layer.class_bias)
    loss = layer((x, y), training=True).numpy()
    ids, log_q = twin.sample_shared(x, 6)  # the same seed stream, one step
    true_log_q = twin.mixture_log_prob(x, y[:, None]) if logq_correction == "standard" else None
    expected = estimator.sampled_softmax_loss(
        x,
        y,
        ids,
        log_q,
        layer.class_embeddings,
        layer.class_bias,
        true_log_q=true_log_q,
        logq_correction=logq_correction,
    )
    np.testing.assert_allclose(loss, expected.numpy(), rtol=1e-6)
    clone = AdaptiveSampledSoftmaxLoss.from_config(layer.get_config())
    assert clone.shared_negatives and clone.logq_correction == logq_correction


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_shared_ops_compile_under_xla(name):
    sampler = FACTORIES[name]()
    if name == "softmax":
        sampler = samplers.Softmax(NUM_CLASSES)  # live: reads the layer's own weights
    layer = AdaptiveSampledSoftmaxLoss(NUM_CLASSES, sampler, num_samples=6, shared_negatives=True)
    layer.build_for_dim(4)
    layer.refresh_sampler()
    variables = layer.trainable_weights

    def loss_and_gradients(query, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(layer((query, labels), training=True))
        return loss, tape.gradient(loss, variables)

    query, labels = tf.random.normal((5, 4)), tf.constant([0, 1, 2, 3, 36])
    compiled = tf.function(loss_and_gradients, jit_compile=True)
    loss, _ = compiled(query, labels)
    assert np.isfinite(loss.numpy())
    assert not forbidden_in(compiled.get_concrete_function(query, labels).graph.as_graph_def())


def test_fit_with_shared_negatives_learns():
    n, d = 60, 8
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, n, 2048).astype(np.int32)
    x = centers[y] + 0.1 * rng.standard_normal((2048, d)).astype(np.float32)
    features = K.Input((d,))
    labels = K.Input((), dtype="int32")
    query = K.layers.Dense(d)(features)
    output = AdaptiveSampledSoftmaxLoss(
        n,
        samplers.QuadraticKernel(n, leaf_size=8, seed=0),
        num_samples=20,
        shared_negatives=True,
        add_to_model_loss=True,
    )
    model = K.Model([features, labels], output((query, labels)))
    model.compile(optimizer=K.optimizers.Adam(0.05))
    before = float(np.mean(model.predict([x, y], verbose=0)))
    from tf_adaptive_softmax.callbacks import CodebookRefresh

    model.fit([x, y], epochs=3, batch_size=64, verbose=0, callbacks=[CodebookRefresh(output, every_n_steps=10)])
    after = float(np.mean(model.predict([x, y], verbose=0)))  # exact full-softmax cross-entropy
    assert after < 0.5 * before

"""Every public op compiles under tf.function(jit_compile=True) with no forbidden op (DESIGN 3.2)."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import forbidden_in
from test_samplers import FACTORIES, NUM_CLASSES

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, estimator, samplers
from tf_adaptive_softmax._keras import K


def _compiled(fn, *args):
    compiled = tf.function(fn, jit_compile=True)
    result = compiled(*args)  # compiles with XLA, or raises
    graph_def = compiled.get_concrete_function(*args).graph.as_graph_def()
    return result, graph_def


def _categorical_widths(fn, *args):
    """Number of categories (static logits width) of every StatelessMultinomial op of a trace."""
    graph = tf.function(fn).get_concrete_function(*args).graph
    return [op.inputs[0].shape[-1] for op in graph.get_operations() if op.type == "StatelessMultinomial"]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_sampler_ops_compile_without_forbidden_ops(name):
    sampler = FACTORIES[name]()
    queries = tf.constant(np.random.default_rng(0).standard_normal((4, 4)), tf.float32)
    ids = tf.constant(np.tile(np.arange(5), (4, 1)), tf.int32)
    (sampled, log_q), sample_graph = _compiled(lambda q: sampler.sample(q, 8), queries)
    assert sampled.shape == (4, 8)
    # One draw per query (a unit axis once sent XLA:CPU's simplifier into a minutes-long loop).
    (single, _), _ = _compiled(lambda q: sampler.sample(q, 1), queries)
    assert single.shape == (4, 1)
    (_, _, ids_log_q), joint_graph = _compiled(lambda q, i: sampler.sample_with_log_prob(q, 8, i), queries, ids)
    log_prob, log_prob_graph = _compiled(sampler.log_prob, queries, ids)
    np.testing.assert_allclose(ids_log_q.numpy(), log_prob.numpy(), atol=1e-5)
    np.testing.assert_allclose(log_prob.numpy(), sampler.log_prob(queries, ids).numpy(), atol=1e-5)
    embeddings = tf.ones((NUM_CLASSES, 4))
    _, refresh_graph = _compiled(lambda e: sampler.refresh(e), embeddings)
    for graph_def in (sample_graph, joint_graph, log_prob_graph, refresh_graph):
        assert not forbidden_in(graph_def)
    widths = _categorical_widths(lambda q: sampler.sample(q, 8), queries)
    if name != "softmax":  # only the documented O(N) oracle may draw a categorical over N
        assert all(width is not None and width < NUM_CLASSES for width in widths), widths
    else:
        assert widths == [NUM_CLASSES]


def test_estimator_compiles_without_forbidden_ops():
    rng = np.random.default_rng(0)
    args = (
        tf.constant(rng.standard_normal((3, 4)), tf.float32),
        tf.constant([[1, 2], [3, 4], [5, 6]]),
        tf.constant(rng.integers(0, 10, (3, 6)), tf.int32),
        tf.fill([3, 6], -2.3),
        tf.constant(rng.standard_normal((10, 4)), tf.float32),
        tf.zeros([10]),
    )
    true_log_q = tf.fill([3, 2], -2.3)
    loss, graph_def = _compiled(lambda *a: estimator.sampled_softmax_loss(*a, true_log_q=true_log_q), *args)
    assert loss.shape == (3,) and np.all(np.isfinite(loss.numpy()))
    assert not forbidden_in(graph_def)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_layer_train_step_compiles(name):
    sampler = FACTORIES[name]()
    if name == "softmax":
        sampler = samplers.Softmax(NUM_CLASSES)  # live: reads the layer's own weights
    layer = AdaptiveSampledSoftmaxLoss(NUM_CLASSES, sampler, num_samples=6)
    layer.build_for_dim(4)
    optimizer = K.optimizers.SGD(0.1)
    variables = layer.trainable_weights

    def loss_and_gradients(query, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(layer((query, labels), training=True))
        return loss, tape.gradient(loss, variables)

    def step(query, labels):
        loss, gradients = loss_and_gradients(query, labels)
        optimizer.apply_gradients(zip(gradients, variables))
        return loss

    query = tf.random.normal((5, 4))
    labels = tf.constant([0, 1, 2, 3, 36])
    loss, _ = _compiled(step, query, labels)
    assert np.isfinite(loss.numpy())
    # The optimizer is the user's (tf_keras' sparse updates use Unique); the loss path is ours.
    _, graph_def = _compiled(loss_and_gradients, query, labels)
    assert not forbidden_in(graph_def)


def test_out_of_range_labels_poison_the_loss_under_xla():
    # XLA compiles asserts away; the affected rows become NaN rather than silently clipped.
    layer = AdaptiveSampledSoftmaxLoss(10, samplers.Uniform(10), num_samples=3)
    layer.build_for_dim(4)
    compiled = tf.function(lambda q, y: layer((q, y), training=True), jit_compile=True)
    loss = compiled(tf.ones((2, 4)), tf.constant([1, 12])).numpy()
    assert np.isfinite(loss[0]) and np.isnan(loss[1])

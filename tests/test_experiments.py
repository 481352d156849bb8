"""The benchmark harness's baseline: the output layer trained with TF's own sampled softmax."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tf_adaptive_softmax import _experiments as experiments

NUM_CLASSES, DIM, BATCH = 50, 6, 8


def _layer_and_batch(num_samples=10):
    layer = experiments.TFSampledSoftmax(NUM_CLASSES, num_samples)
    rng = np.random.default_rng(0)
    query = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, BATCH)
    layer.build_for_dim(DIM)
    layer.class_bias.assign(rng.normal(size=NUM_CLASSES).astype(np.float32))
    return layer, query, labels


def test_training_loss_is_tf_sampled_softmax_loss_on_the_layers_weights():
    layer, query, labels = _layer_and_batch()
    weight = np.linspace(0.5, 2.0, BATCH).astype(np.float32)
    tf.random.set_seed(7)
    ours = layer.per_example_loss(query, labels, sample_weight=weight, training=True)
    tf.random.set_seed(7)
    theirs = tf.nn.sampled_softmax_loss(
        tf.convert_to_tensor(layer.class_embeddings),
        tf.convert_to_tensor(layer.class_bias),
        labels.reshape(-1, 1).astype(np.int64),
        query,
        10,
        NUM_CLASSES,
    )
    np.testing.assert_allclose(ours.numpy(), weight * theirs.numpy(), rtol=1e-6)


def test_outside_training_it_is_the_exact_full_softmax():
    layer, query, labels = _layer_and_batch()
    logits = query @ np.asarray(layer.class_embeddings).T + np.asarray(layer.class_bias)
    shifted = logits - logits.max(axis=1, keepdims=True)
    expected = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(BATCH), labels]
    np.testing.assert_allclose(layer.per_example_loss(query, labels).numpy(), expected, rtol=1e-5)


def test_sequence_queries_give_a_loss_per_position():
    layer, query, labels = _layer_and_batch()
    loss = layer.per_example_loss(query.reshape(2, 4, DIM), labels.reshape(2, 4), training=True)
    assert loss.shape == (2, 4) and np.isfinite(loss.numpy()).all()


@pytest.mark.parametrize("argument", ["sampler", "shared_negatives", "logq_correction", "correct_positive"])
def test_arguments_tf_fixes_are_refused_by_name(argument):
    with pytest.raises(ValueError, match=argument):
        experiments.TFSampledSoftmax(NUM_CLASSES, 5, **{argument: None})


def test_a_sharded_table_goes_to_tf_loss_as_its_row_blocks(monkeypatch):
    # Under ParameterServerStrategy the table is a ShardedVariable; TF's loss takes partitioned
    # weights as a list of row blocks (contiguous, "div"), and must give the unsharded loss.
    from tensorflow.python.distribute.sharded_variable import ShardedVariable

    layer, query, labels = _layer_and_batch()
    table, bias = layer.class_embeddings.numpy(), layer.class_bias.numpy()
    tf.random.set_seed(3)
    whole = layer.per_example_loss(query, labels, training=True)
    # 50 rows in 3 shards, as TF's partitioners split them: 17, 17, 16.
    bounds = [0, 17, 34, 50]
    sharded = ShardedVariable([tf.Variable(table[a:b]) for a, b in itertools.pairwise(bounds)])
    sharded_bias = ShardedVariable([tf.Variable(bias[a:b]) for a, b in itertools.pairwise(bounds)])
    monkeypatch.setattr(type(layer), "_weights", lambda self: (sharded, sharded_bias))
    tf.random.set_seed(3)
    parts = layer.per_example_loss(query, labels, training=True)
    np.testing.assert_allclose(parts.numpy(), whole.numpy(), rtol=1e-6)
    # Any other split would read the wrong rows: refused by name.
    uneven = ShardedVariable([tf.Variable(table[:30]), tf.Variable(table[30:])])
    monkeypatch.setattr(type(layer), "_weights", lambda self: (uneven, sharded_bias))
    with pytest.raises(ValueError, match=r"class table's shards.*\[25, 25\].*\[30, 20\]"):
        layer.per_example_loss(query, labels, training=True)


def test_make_sampler_overrides_midx_codebook_size_and_kmeans_only():
    from tf_adaptive_softmax import samplers

    options = samplers.KMeansOptions(iterations=3, tolerance=0.0)
    midx = experiments.make_sampler("midx_rvq", 5_000, num_codewords=16, kmeans=options)
    assert midx.num_codewords == 16 and midx.kmeans == options and midx.include_bias  # the registry's own
    assert experiments.make_sampler("midx_rvq", 5_000).kmeans == samplers.KMeansOptions()
    assert isinstance(experiments.make_sampler("uniform", 5_000, kmeans=options), samplers.Uniform)


def test_compiling_before_timing_leaves_training_unchanged():
    # The warm-up runs real steps and a refresh; restoring every variable (model, output layer,
    # sampler state and seeds, optimizer) must make the timed run the run without it, bit for bit.
    from tf_adaptive_softmax import datasets

    teacher = datasets.make_teacher(300, 6, seed=0, frequency_sorted_ids=False)
    train, test = datasets.train_test_split(teacher, 500, 100, seed=0)
    runs = [
        experiments.train_and_evaluate(
            train, test, 300, experiments.make_sampler("midx_rvq", 300), 8, 2, 96, refresh_every=3, compile_first=first
        )
        for first in (False, True)
    ]
    metrics = [[point[1:] for point in run["curve"]] for run in runs]  # (seconds, cross-entropy, accuracy)
    assert metrics[0] == metrics[1] and runs[0]["train_losses"] == runs[1]["train_losses"]
    assert runs[0]["compile_seconds"] == 0.0 < runs[1]["compile_seconds"]

"""ParameterServerStrategy (tf_keras only: Keras 3 has no parameter-server training).

An in-process cluster on localhost (2 workers, 2 parameter servers, `FixedShardsPartitioner(2)`,
as in TensorFlow's parameter-server tutorial) runs in a subprocess, bounded by a timeout; the
servers die with it.
"""

import textwrap

import pytest
from conftest import run_python

from tf_adaptive_softmax._keras import IS_KERAS_3

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(IS_KERAS_3, reason="ParameterServerStrategy training needs tf_keras (TF_USE_LEGACY_KERAS=1)"),
]

CLUSTER = textwrap.dedent("""
    import numpy as np, portpicker, tensorflow as tf
    import tf_adaptive_softmax as tfas
    from tf_adaptive_softmax._ops import tables
    K = tf.keras

    def in_process_cluster(num_workers=2, num_ps=2):
        spec = tf.train.ClusterSpec({
            "worker": [f"localhost:{portpicker.pick_unused_port()}" for _ in range(num_workers)],
            "ps": [f"localhost:{portpicker.pick_unused_port()}" for _ in range(num_ps)],
        })
        config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=num_workers + 1)
        for index in range(num_workers):
            tf.distribute.Server(spec, job_name="worker", task_index=index, config=config, protocol="grpc")
        for index in range(num_ps):
            tf.distribute.Server(spec, job_name="ps", task_index=index, protocol="grpc")
        return tf.distribute.cluster_resolver.SimpleClusterResolver(spec, rpc_layer="grpc")

    strategy = tf.distribute.ParameterServerStrategy(
        in_process_cluster(), variable_partitioner=tf.distribute.experimental.partitioners.FixedShardsPartitioner(2)
    )
""")

LAYER_SCRIPT = CLUSTER + textwrap.dedent("""
    from tf_adaptive_softmax import datasets
    N, D = 203, 8
    teacher = datasets.make_teacher(N, D, seed=0)
    (x, y), (x_test, y_test) = datasets.train_test_split(teacher, 2048, 512)

    def build(seed=0, **layer_options):
        # k-means trains on 64 sampled rows, as it would on 1024·K of 10^8 (all rows when N is small).
        sampler = tfas.samplers.MIDX(N, num_codewords=4, kmeans=tfas.samplers.KMeansOptions(sample_size=64), seed=seed)
        output = tfas.AdaptiveSampledSoftmaxLoss(N, sampler, num_samples=8, **layer_options)
        features = K.Input((D,))
        query = K.layers.Dense(D, kernel_initializer=K.initializers.GlorotUniform(seed))(features)
        model = K.Model(features, query)
        model.compile(optimizer=K.optimizers.Adam(0.05), loss=tfas.SampledSoftmaxLoss(output, model=model),
                      steps_per_execution=2)
        return model, output, sampler

    with strategy.scope():
        model, output, sampler = build()

    # The strategy shards the class table and bias; the sampler's state stays whole on one server.
    assert [v.shape[0] for v in output.class_embeddings.variables] == [102, 101]
    assert [v.shape[0] for v in output.class_bias.variables] == [102, 101]
    assert not any(tables.is_sharded(w) for w in sampler.weights)
    assert len({w.device for w in sampler.weights}) == 1 and "/job:ps/" in sampler.weights[0].device
    assert len(sampler.weights) == 8  # no extra variable: checkpoints match other strategies'

    # A training step reads the sampled rows shard by shard: no tensor in its graph has all N rows.
    def tensors_with_all_rows(function, *specs):
        graph = tf.function(function).get_concrete_function(*specs).graph
        return [op.name for op in graph.get_operations() for t in op.outputs if t.shape.rank and t.shape[0] == N]
    with strategy.scope():
        step = lambda a, b: output.per_example_loss(model(a), b, training=True)
        assert tensors_with_all_rows(step, tf.TensorSpec([32, D]), tf.TensorSpec([32], tf.int32)) == []
        # The scan does find the table when something concatenates its shards.
        assert tensors_with_all_rows(lambda: tf.convert_to_tensor(output.class_embeddings))

    # The refresh reads the sharded table on the servers (k-means on sampled rows, then each
    # shard assigned where it lives): no [N, d] tensor in its graph either.
    def table_sized(function):
        graph = function.get_concrete_function("raise").graph
        return [op.name for op in graph.get_operations() for t in op.outputs if t.shape.rank == 2 and t.shape[0] == N]
    twin = tfas.samplers.MIDX(N, num_codewords=4, kmeans=tfas.samplers.KMeansOptions(sample_size=64), seed=0)
    twin.build_state(D)
    twin.set_weights(sampler.get_weights())
    assert output.refresh_sampler()
    assert table_sized(output._refresh._function) == []
    # ... and builds exactly the state one process builds from the whole table.
    twin.refresh(tf.convert_to_tensor(output.class_embeddings), tf.convert_to_tensor(output.class_bias))
    for sharded_state, whole_state in zip(sampler.weights, twin.weights):
        np.testing.assert_array_equal(sharded_state.numpy(), whole_state.numpy(), err_msg=sharded_state.name)
    assert sampler.bucket_sizes.numpy().sum() == N
    # A sampler that needs the table whole (a snapshot) gets it as one tensor, and the scan sees it.
    with strategy.scope():
        snapshot = tfas.samplers.Softmax(N, live=False)
    snapshot_refresh = snapshot.compiled_refresh(lambda: (output.class_embeddings, None))
    assert table_sized(snapshot_refresh)

    refresh = tfas.CodebookRefresh(output)  # the epoch schedule: no batch hooks
    train = lambda context: tf.data.Dataset.from_tensor_slices((x, y)).shuffle(2048, seed=0).repeat().batch(64)
    history = model.fit(K.utils.experimental.DatasetCreator(train), epochs=4, steps_per_epoch=16, verbose=0,
                        callbacks=[refresh])
    losses = history.history["loss"]
    assert losses[-1] < 0.9 * losses[0], losses
    assert refresh.refresh_count == 4 and bool(sampler.initialized.numpy())
    assert sampler.bucket_sizes.numpy().sum() == N and (sampler.bucket_sizes.numpy() > 0).sum() > 1
    test = lambda context: tf.data.Dataset.from_tensor_slices((x_test, y_test)).repeat().batch(64)
    test_loss = model.evaluate(K.utils.experimental.DatasetCreator(test), steps=8, verbose=0)
    assert np.isfinite(test_loss) and test_loss < np.log(N), test_loss

    # A step schedule runs inside the workers' steps (no batch callbacks under this strategy):
    # a fresh sampler is refreshed on the servers at the layer's training steps 0, 5, ...
    with strategy.scope():
        scheduled_model, scheduled, scheduled_sampler = build(seed=1, refresh_every_n_steps=5)
    assert not bool(scheduled_sampler.initialized.numpy())
    history = scheduled_model.fit(K.utils.experimental.DatasetCreator(train), epochs=1, steps_per_epoch=10, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert int(scheduled._training_steps.numpy()) == 10
    assert bool(scheduled_sampler.initialized.numpy()) and scheduled_sampler.bucket_sizes.numpy().sum() == N

    # With the same weights and draws, the sharded loss and gradients equal one process's.
    kmeans = tfas.samplers.KMeansOptions(sample_size=64)
    single = tfas.AdaptiveSampledSoftmaxLoss(
        N, tfas.samplers.MIDX(N, num_codewords=4, kmeans=kmeans, seed=0), num_samples=8
    )
    single.build_for_dim(D)
    single.class_embeddings.assign(tf.convert_to_tensor(output.class_embeddings))
    single.class_bias.assign(tf.convert_to_tensor(output.class_bias))
    single.sampler.set_weights(sampler.get_weights())
    queries = tf.constant(np.random.default_rng(1).standard_normal((16, D)).astype("float32"))

    def loss_and_gradients(layer):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(layer.per_example_loss(queries, y[:16], training=True))
        table, bias = tables.shards(layer.class_embeddings), tables.shards(layer.class_bias)
        gradients = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, table + bias)]
        return float(loss), np.concatenate(gradients[: len(table)]), np.concatenate(gradients[len(table) :])

    with strategy.scope():
        sharded = loss_and_gradients(output)
    unsharded = loss_and_gradients(single)
    np.testing.assert_allclose(sharded[0], unsharded[0], rtol=1e-6)
    np.testing.assert_allclose(sharded[1], unsharded[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sharded[2], unsharded[2], rtol=1e-5, atol=1e-7)
    assert np.abs(unsharded[1]).sum() > 0

    # The checkpoint holds the refreshed sampler and the sharded table; it restores into one process.
    path = tf.train.Checkpoint(output=output).save(CHECKPOINT_DIR + "/ckpt")
    _, restored, restored_sampler = build(seed=5)
    restored.build_for_dim(D)
    tf.train.Checkpoint(output=restored).restore(path).assert_existing_objects_matched()
    for saved, loaded in zip(sampler.weights, restored_sampler.weights):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy(), err_msg=saved.name)
    np.testing.assert_array_equal(tf.convert_to_tensor(output.class_embeddings).numpy(),
                                  restored.class_embeddings.numpy())
    print("PARAMETER_SERVER_LAYER_OK")
""")

RETRIEVAL_SCRIPT = CLUSTER + textwrap.dedent("""
    import tensorflow_recommenders as tfrs
    from tf_adaptive_softmax.tfrs import AdaptiveRetrieval
    N, D = 41, 5
    with strategy.scope():
        items = K.layers.Embedding(N, D); items.build((None,))
        users = K.layers.Embedding(30, D); users.build((None,))
        sampler = tfas.samplers.MIDX(N, num_codewords=4, seed=0)
        task = AdaptiveRetrieval(sampler, num_samples=8, candidate_embeddings=items)

        class TwoTower(tfrs.Model):
            def __init__(self):
                super().__init__()
                self.task, self.users, self.items = task, users, items

            def compute_loss(self, data, training=False):
                u, i = data
                return self.task(self.users(u), self.items(i), candidate_ids=i, training=training,
                                 compute_metrics=not training)

        model = TwoTower()
        model.compile(optimizer=K.optimizers.Adam(0.05))
    assert tables.is_sharded(items.embeddings)
    rng = np.random.default_rng(0)
    u = rng.integers(0, 30, 512).astype(np.int32)
    i = ((u * 7) % N).astype(np.int32)
    data = lambda context: tf.data.Dataset.from_tensor_slices((u, i)).repeat().batch(32, drop_remainder=True)
    refresh = tfas.CodebookRefresh(task)
    history = model.fit(K.utils.experimental.DatasetCreator(data), epochs=3, steps_per_epoch=8, verbose=0,
                        callbacks=[refresh])
    assert history.history["loss"][-1] < history.history["loss"][0], history.history
    assert refresh.refresh_count == 3 and bool(sampler.initialized.numpy())
    assert np.isfinite(model.evaluate(K.utils.experimental.DatasetCreator(data), steps=4, verbose=0)[0])
    print("PARAMETER_SERVER_RETRIEVAL_OK")
""")


def _run(script: str, marker: str, tmp_path) -> None:
    script = f"CHECKPOINT_DIR = {str(tmp_path)!r}\n" + script
    assert marker in run_python("-c", script).stdout


def test_loss_layer_trains_evaluates_refreshes_and_checkpoints_on_sharded_tables(tmp_path):
    _run(LAYER_SCRIPT, "PARAMETER_SERVER_LAYER_OK", tmp_path)


def test_adaptive_retrieval_trains_with_a_sharded_candidate_table(tmp_path):
    _run(RETRIEVAL_SCRIPT, "PARAMETER_SERVER_RETRIEVAL_OK", tmp_path)

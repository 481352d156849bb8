import numpy as np
import pytest
import tensorflow as tf
from conftest import CHI_SQUARE_ALPHA, chi_square_pvalue, forbidden_in, tensorflow_executed_operations

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, CodebookRefresh, SampledSoftmaxLoss, samplers
from tf_adaptive_softmax._keras import K
from tf_adaptive_softmax._ops import tables
from tf_adaptive_softmax.samplers import quadratic_kernel

D = 5


def _setup(n, leaf_size=None, alpha=100.0, seed=0):
    rng = np.random.default_rng(seed)
    embeddings = (rng.standard_normal((n, D)) * 0.2).astype(np.float32)
    sampler = samplers.QuadraticKernel(n, alpha=alpha, leaf_size=leaf_size, seed=1)
    sampler.refresh(embeddings)
    queries = rng.standard_normal((3, D)).astype(np.float32)
    return sampler, embeddings, queries


def _numpy_q(queries, embeddings, alpha):
    kernel = alpha * (queries @ embeddings.T) ** 2 + 1.0
    return kernel / kernel.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n,leaf_size", [(211, None), (211, 8), (3, 8), (100, 100)])
def test_frequencies_match_independent_numpy_kernel(n, leaf_size):
    # 211 is prime (no leaf divides it); n=3 is smaller than one leaf.
    sampler, embeddings, queries = _setup(n, leaf_size)
    expected = _numpy_q(queries, embeddings, 100.0)
    log_prob = sampler.log_prob(queries, np.tile(np.arange(n), (3, 1))).numpy()
    np.testing.assert_allclose(np.exp(log_prob), expected, rtol=2e-4, atol=1e-7)
    ids, log_q = sampler.sample(queries, num_samples=30000, seed=5)
    np.testing.assert_allclose(log_q.numpy(), np.log(np.take_along_axis(expected, ids.numpy(), 1)), atol=2e-4)
    for row in range(3):
        counts = np.bincount(ids[row].numpy(), minlength=n)
        assert chi_square_pvalue(counts, expected[row], counts.sum()) > CHI_SQUARE_ALPHA


def test_chunked_leaf_draws_match_unchunked(monkeypatch):
    # Chunking only bounds memory: the draws are identical to the one-chunk path (whose frequencies
    # the chi-square test above checks).
    sampler, _, queries = _setup(150, leaf_size=10)
    whole = sampler.sample(queries, num_samples=37, seed=2)[0].numpy()
    monkeypatch.setattr(quadratic_kernel, "_CHUNK_ELEMENTS", 3 * 10 * D * 4)  # 4 draws per chunk
    chunked = sampler.sample(queries, num_samples=37, seed=2)[0].numpy()
    np.testing.assert_array_equal(whole, chunked)


def test_chunked_draws_keep_a_static_sample_axis_in_a_layer(monkeypatch):
    monkeypatch.setattr(quadratic_kernel, "_CHUNK_ELEMENTS", 4 * 16 * D * 4)
    layer = AdaptiveSampledSoftmaxLoss(100, samplers.QuadraticKernel(100, leaf_size=16, seed=0), num_samples=9)
    layer.build_for_dim(D)
    layer.refresh_sampler()
    compiled = tf.function(lambda q, y: layer((q, y), training=True))
    loss = compiled(tf.random.normal((4, D)), tf.constant([1, 2, 3, 99]))
    assert loss.shape == (4,) and np.all(np.isfinite(loss.numpy()))


def test_memory_is_linear_in_n_times_d():
    n, d = 50_000, 32
    sampler = samplers.QuadraticKernel(n)
    sampler.build_state(d)
    assert sampler.leaf >= d
    assert sampler.state_bytes() <= 2 * 4 * (n + sampler.leaf) * d  # snapshot + group sums, never n·d²


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        samplers.QuadraticKernel(10, alpha=0.0)
    with pytest.raises(ValueError, match="leaf_size"):
        samplers.QuadraticKernel(100, leaf_size=4).build_state(16)
    sampler, _, _ = _setup(40)
    with pytest.raises(ValueError, match="class_embeddings"):
        sampler.refresh(np.zeros((40, D + 1), np.float32))
    bad = np.zeros((40, D), np.float32)
    bad[0, 0] = np.inf
    before = sampler.snapshot_embeddings.numpy().copy()
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        sampler.refresh(bad)
    np.testing.assert_array_equal(before, sampler.snapshot_embeddings.numpy())


def test_xla_compiles_sample_log_prob_and_refresh_with_chunks(monkeypatch):
    monkeypatch.setattr(quadratic_kernel, "_CHUNK_ELEMENTS", 4 * 16 * D * 4)
    sampler = samplers.QuadraticKernel(300, leaf_size=16, seed=0)
    embeddings = tf.random.normal((300, D))
    refresh = tf.function(lambda e: sampler.refresh(e), jit_compile=True)
    refresh(embeddings)
    sample = tf.function(lambda q: sampler.sample(q, 9), jit_compile=True)
    queries = tf.random.normal((4, D))
    ids, log_q = sample(queries)
    np.testing.assert_allclose(sampler.log_prob(queries, ids).numpy(), log_q.numpy(), atol=1e-4)
    for fn, arg in ((refresh, embeddings), (sample, queries)):
        assert not forbidden_in(fn.get_concrete_function(arg).graph.as_graph_def())


def test_refresh_inside_fit_with_absolute_softmax():
    n, d = 90, 8
    sampler = samplers.QuadraticKernel(n, leaf_size=16, seed=0)
    layer = AdaptiveSampledSoftmaxLoss(n, sampler, num_samples=6, absolute_softmax=True)
    features = K.Input((d,))
    model = K.Model(features, K.layers.Dense(d)(features))
    model.compile(optimizer=K.optimizers.Adam(0.05), loss=SampledSoftmaxLoss(layer, model=model), jit_compile=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, d)).astype(np.float32)
    y = rng.integers(0, n, 128).astype(np.int32)
    initial = layer.class_embeddings.numpy().copy()
    refresh = CodebookRefresh(layer, every_n_steps=2)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[refresh])
    assert refresh.refresh_count == 4  # before global steps 0, 2, 4, 6 (epoch starts coincide)
    # The last refresh (before step 6) snapshotted trained weights, two updates behind the end.
    snapshot = sampler.snapshot_embeddings.numpy()[:n]
    assert not np.allclose(snapshot, initial) and not np.allclose(snapshot, layer.class_embeddings.numpy())
    layer.refresh_sampler()
    np.testing.assert_allclose(sampler.snapshot_embeddings.numpy()[:n], layer.class_embeddings.numpy(), rtol=1e-6)
    assert np.isfinite(model.evaluate(x, y, verbose=0))


def test_refresh_of_a_table_variable_reads_it_only_inside_xla(monkeypatch):
    # Once training has read W sparsely, a dense read by TensorFlow copies the whole variable: it
    # goes into the XLA writers as is (XLA reads it in place) and the finiteness check gathers
    # blocks of rows. The state equals the one built from the table as a tensor.
    monkeypatch.setattr(tables, "_BLOCK_ELEMENTS", D * 50)
    n = 203
    embeddings = np.random.default_rng(2).standard_normal((n, D)).astype(np.float32)
    table = tf.Variable(embeddings)
    sampler = samplers.QuadraticKernel(n, leaf_size=8, seed=0)
    reference = samplers.QuadraticKernel(n, leaf_size=8, seed=0)
    refresh = sampler.compiled_refresh(lambda: (table, None))
    assert bool(refresh("raise"))
    reference.refresh(tf.constant(embeddings))
    for mine, expected in zip(sampler.variables, reference.variables):
        np.testing.assert_allclose(mine.numpy(), expected.numpy(), rtol=1e-6, err_msg=mine.name)

    def whole_table_reads(function):
        operations = tensorflow_executed_operations(function.get_concrete_function("raise").graph)
        reads = [op for op in operations if op.type in ("ReadVariableOp", "ResourceGather")]
        return [op.name for op in reads if op.outputs[0].shape.as_list() == [n, D]], operations

    reads, operations = whole_table_reads(refresh)
    assert reads == []
    assert any("_XlaMustCompile" in op.node_def.attr for op in operations)  # the writers were seen
    # Control: a snapshot sampler that takes one tensor shows TensorFlow's dense read.
    assert whole_table_reads(samplers.Softmax(n, live=False).compiled_refresh(lambda: (table, None)))[0]


@pytest.mark.parametrize("n,leaf_size", [(203, 8), (96, 8), (5, 8)])
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_refresh_writes_chunked_group_moments_and_the_snapshot(monkeypatch, n, leaf_size, mode):
    # 3 groups per chunk: 203 = 25 full leaves (9 chunks, the last shifted back) + a tail of 3;
    # 96 = 12 full leaves and no tail; 5 is a lone partial leaf.
    monkeypatch.setattr(quadratic_kernel, "_MOMENT_CHUNK_ELEMENTS", 3 * (leaf_size * D + D * D))
    sampler = samplers.QuadraticKernel(n, leaf_size=leaf_size, seed=0)
    refresh = sampler.refresh if mode == "eager" else tf.function(sampler.refresh, jit_compile=mode == "xla")
    rows, cols = np.triu_indices(D)
    for seed in (0, 1):  # the second refresh overwrites every entry of the first
        embeddings = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
        refresh(tf.constant(embeddings))
        groups = -(-n // leaf_size)
        padded = np.zeros((groups * leaf_size, D), np.float32)
        padded[:n] = embeddings
        blocks = padded.reshape(groups, leaf_size, D).astype(np.float64)
        expected = np.einsum("gld,gle->gde", blocks, blocks)[:, rows, cols]  # Σ w wᵀ per group
        np.testing.assert_allclose(sampler.group_second_moments.numpy(), expected, rtol=1e-5, atol=1e-5)
        full = embeddings.astype(np.float64).T @ embeddings.astype(np.float64)
        np.testing.assert_allclose(sampler.second_moment.numpy(), full, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(sampler.snapshot_embeddings.numpy(), padded)

import numpy as np
import pytest
import tensorflow as tf
from conftest import CHI_SQUARE_ALPHA, chi_square_pvalue, forbidden_in, tensorflow_executed_operations

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, CodebookRefresh, SampledSoftmaxLoss, samplers
from tf_adaptive_softmax import _quantization as quantization
from tf_adaptive_softmax._keras import K
from tf_adaptive_softmax._ops import tables
from tf_adaptive_softmax._ops.discrete import _count_by_blocks, search_buckets, segmented_cumsum
from tf_adaptive_softmax._ops.xla import in_xla_context
from tf_adaptive_softmax.samplers.midx._draw import block_masses as _block_masses
from tf_adaptive_softmax.samplers.midx.options import _default_num_codewords

N, D = 203, 6  # N prime: a multiple of nothing


def _embeddings(n=N, d=D, clusters=12, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)) * 2
    return (centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d))).astype(np.float32)


def _midx(quantizer="rvq", residual="uniform", n=N, k=4, **kwargs):
    counts = np.random.default_rng(5).integers(0, 30, n).astype(np.float64) if residual == "unigram" else None
    return samplers.MIDX(n, num_codewords=k, quantizer=quantizer, residual=residual, counts=counts, seed=1, **kwargs)


def _numpy_log_q(sampler, queries, embeddings=None, bias=None):
    """Independent formula: q ∝ exp(<z, q̂_i>) · w_i with q̂ rebuilt from codebooks and codes."""
    c1, c2 = (c.numpy() for c in sampler.codebooks)
    codes = sampler.codes.numpy()
    q_hat = quantization.reconstruct(c1, c2, codes[:, 0], codes[:, 1], sampler.quantizer).numpy()
    logits = queries @ q_hat.T
    if sampler.residual == "unigram":
        with np.errstate(divide="ignore"):
            logits = logits + sampler.power * np.log(sampler._counts)
    if sampler.include_bias and bias is not None:
        logits = logits + bias
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


VARIANTS = [(q, r) for q in ("pq", "rvq") for r in ("uniform", "unigram")]


@pytest.mark.parametrize("quantizer,residual", VARIANTS)
def test_frequencies_match_log_prob_and_independent_formula(quantizer, residual):
    sampler = _midx(quantizer, residual)
    sampler.refresh(_embeddings())
    queries = np.random.default_rng(3).standard_normal((3, D)).astype(np.float32)
    all_ids = np.tile(np.arange(N), (3, 1))
    log_prob = sampler.log_prob(queries, all_ids).numpy()
    np.testing.assert_allclose(log_prob, _numpy_log_q(sampler, queries), atol=2e-4)
    np.testing.assert_allclose(np.logaddexp.reduce(log_prob, axis=1), 0.0, atol=1e-5)
    ids, log_q = sampler.sample(queries, num_samples=30000, seed=2)
    np.testing.assert_allclose(log_q.numpy(), np.take_along_axis(log_prob, ids.numpy(), 1), atol=1e-4)
    for row in range(3):
        counts = np.bincount(ids[row].numpy(), minlength=N)
        assert chi_square_pvalue(counts, np.exp(log_prob[row]), counts.sum()) > CHI_SQUARE_ALPHA


@pytest.mark.parametrize("quantizer,residual", VARIANTS)
def test_fewer_draws_than_codewords_keep_the_law(quantizer, residual):
    # m < K, K not a multiple of the draw's block of 8 codewords (padded with empty ones).
    sampler = _midx(quantizer, residual, k=11)
    sampler.refresh(_embeddings())
    query = np.random.default_rng(4).standard_normal((1, D)).astype(np.float32)
    log_prob = sampler.log_prob(query, np.arange(N)[np.newaxis]).numpy()[0]
    ids, log_q = sampler.sample(np.repeat(query, 10_000, axis=0), num_samples=3, seed=5)
    np.testing.assert_allclose(log_q.numpy(), log_prob[ids.numpy()], atol=1e-4)
    counts = np.bincount(ids.numpy().ravel(), minlength=N)
    assert chi_square_pvalue(counts, np.exp(log_prob), counts.sum()) > CHI_SQUARE_ALPHA


def test_include_bias_folds_the_bias_into_the_proposal():
    sampler = _midx("pq", "uniform", include_bias=True)
    bias = np.random.default_rng(2).standard_normal(N).astype(np.float32) * 2
    sampler.refresh(_embeddings(), bias)
    queries = np.random.default_rng(3).standard_normal((2, D)).astype(np.float32)
    log_prob = sampler.log_prob(queries, np.tile(np.arange(N), (2, 1))).numpy()
    np.testing.assert_allclose(log_prob, _numpy_log_q(sampler, queries, bias=bias), atol=2e-4)
    ids, _ = sampler.sample(queries, num_samples=30000, seed=4)
    counts = np.bincount(ids[0].numpy(), minlength=N)
    assert chi_square_pvalue(counts, np.exp(log_prob[0]), counts.sum()) > CHI_SQUARE_ALPHA


def test_uniform_before_first_refresh():
    sampler = _midx()
    sampler.build_state(D)
    lp = sampler.log_prob(np.ones((1, D), np.float32), np.arange(N)[None]).numpy()
    np.testing.assert_allclose(lp, -np.log(N), atol=1e-5)


def test_kl_to_softmax_far_below_uniform_on_clustered_embeddings():
    n, d = 4000, 16
    embeddings = _embeddings(n, d, clusters=16, spread=0.1, seed=1)
    queries = np.random.default_rng(4).standard_normal((64, d)).astype(np.float32)
    logits = queries @ embeddings.T
    log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    p = np.exp(log_p)
    kl_uniform = np.mean(np.sum(p * (log_p + np.log(n)), axis=1))
    for quantizer in ("pq", "rvq"):
        sampler = samplers.MIDX(n, num_codewords=16, quantizer=quantizer, seed=0)
        sampler.refresh(embeddings)
        log_q = sampler.log_prob(queries, np.tile(np.arange(n), (64, 1))).numpy()
        kl_midx = np.mean(np.sum(p * (log_p - log_q), axis=1))
        print(f"{quantizer}: KL(p||MIDX)={kl_midx:.4f} KL(p||Uniform)={kl_uniform:.4f}")
        assert kl_midx * 10 < kl_uniform


def test_refresh_is_warm_started_and_deterministic():
    embeddings = _embeddings()
    a, b = _midx(), _midx()
    a.refresh(embeddings)
    b.refresh(embeddings)
    np.testing.assert_array_equal(a.codes.numpy(), b.codes.numpy())
    before = a.codebooks[0].numpy()
    a.refresh(embeddings)  # warm start from converged codebooks: little moves
    assert np.abs(a.codebooks[0].numpy() - before).max() < 0.5


def test_index_is_consistent():
    sampler = _midx(k=5)
    sampler.refresh(_embeddings())
    sizes = sampler.bucket_sizes.numpy()
    codes = sampler.codes.numpy()
    assert sizes.sum() == N and sizes.shape == (5, 5)
    expected = np.zeros((5, 5), int)
    np.add.at(expected, (codes[:, 0], codes[:, 1]), 1)
    np.testing.assert_array_equal(sizes, expected)
    sorted_ids = sampler.sorted_ids.numpy()
    assert sorted(sorted_ids) == list(range(N))
    buckets = codes[sorted_ids, 0] * 5 + codes[sorted_ids, 1]
    assert np.all(np.diff(buckets) >= 0)


def test_empty_buckets_and_more_buckets_than_classes():
    # K*K = 400 > N = 30: most buckets are empty and must never be drawn.
    n = 30
    sampler = samplers.MIDX(n, num_codewords=20, quantizer="pq", seed=0)
    sampler.refresh(_embeddings(n, 4, clusters=3))
    assert (sampler.bucket_sizes.numpy() == 0).sum() > 300
    queries = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    log_prob = sampler.log_prob(queries, np.tile(np.arange(n), (2, 1))).numpy()
    np.testing.assert_allclose(np.logaddexp.reduce(log_prob, axis=1), 0.0, atol=1e-5)
    ids, _ = sampler.sample(queries, num_samples=20000, seed=1)
    counts = np.bincount(ids[0].numpy(), minlength=n)
    assert chi_square_pvalue(counts, np.exp(log_prob[0]), counts.sum()) > CHI_SQUARE_ALPHA


def test_identical_embeddings_do_not_break_kmeans():
    sampler = _midx("rvq", "unigram", k=4)
    sampler.refresh(np.ones((N, D), np.float32))
    lp = sampler.log_prob(np.ones((1, D), np.float32), np.arange(N)[None]).numpy()
    assert np.isfinite(np.logaddexp.reduce(lp[0])) and abs(np.logaddexp.reduce(lp[0])) < 1e-5


def test_odd_width_product_quantization():
    sampler = samplers.MIDX(N, num_codewords=4, quantizer="pq", seed=0)
    sampler.refresh(_embeddings(d=7))
    c1, c2 = sampler.codebooks
    assert c1.shape == (4, 3) and c2.shape == (4, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_codewords"):
        samplers.MIDX(10, num_codewords=11)
    with pytest.raises(ValueError, match="quantizer"):
        samplers.MIDX(10, num_codewords=2, quantizer="opq")
    with pytest.raises(ValueError, match="residual"):
        samplers.MIDX(10, num_codewords=2, residual="pop")
    with pytest.raises(ValueError, match="counts"):
        samplers.MIDX(10, num_codewords=2, residual="unigram")
    with pytest.raises(ValueError, match="width >= 2"):
        samplers.MIDX(10, num_codewords=2, quantizer="pq").build_state(1)
    sampler = _midx()
    sampler.refresh(_embeddings())
    with pytest.raises(ValueError, match="class_embeddings"):
        sampler.refresh(_embeddings(d=D + 1))
    codes = sampler.codes.numpy()
    bad = _embeddings()
    bad[3, 1] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
        sampler.refresh(bad)
    np.testing.assert_array_equal(codes, sampler.codes.numpy())  # nothing half-updated


# The other two variants compile in test_xla.py (its FACTORIES: pq + uniform, rvq + unigram).
@pytest.mark.parametrize("quantizer,residual", [("pq", "unigram"), ("rvq", "uniform")])
def test_xla_compiles_sample_log_prob_and_refresh(quantizer, residual):
    sampler = _midx(quantizer, residual)
    embeddings = tf.constant(_embeddings())
    refresh = tf.function(lambda e: sampler.refresh(e), jit_compile=True)
    refresh(embeddings)
    queries = tf.random.normal((4, D))
    sample = tf.function(lambda q: sampler.sample(q, 16), jit_compile=True)
    ids, log_q = sample(queries)
    log_prob = tf.function(sampler.log_prob, jit_compile=True)
    np.testing.assert_allclose(log_prob(queries, ids).numpy(), log_q.numpy(), atol=1e-4)
    for fn, args in ((refresh, (embeddings,)), (sample, (queries,)), (log_prob, (queries, ids))):
        graph_def = fn.get_concrete_function(*args).graph.as_graph_def()
        assert not forbidden_in(graph_def)
    graph = tf.function(lambda q: sampler.sample(q, 16)).get_concrete_function(queries).graph
    widths = [op.inputs[0].shape[-1] for op in graph.get_operations() if op.type == "StatelessMultinomial"]
    assert not widths  # inverse-CDF draws over K codewords: no categorical op at all
    # Compare with the eager refresh: same state for the same seed stream.
    eager = _midx(quantizer, residual)
    eager.refresh(embeddings)
    np.testing.assert_array_equal(eager.bucket_sizes.numpy().sum(), sampler.bucket_sizes.numpy().sum())


def test_segmented_cumsum_and_bucket_search():
    values = tf.constant([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    segments = tf.constant([0, 0, 2, 2, 2, 5])
    np.testing.assert_allclose(segmented_cumsum(values, segments).numpy(), [1, 3, 3, 7, 12, 6])
    cumulative = tf.constant([1.0, 3.0, 3.0, 7.0, 12.0, 6.0])
    start, end = tf.constant([0, 2, 2, 2, 5]), tf.constant([2, 5, 5, 5, 6])
    target = tf.constant([0.5, 2.9, 3.0, 11.99, 0.0])
    np.testing.assert_array_equal(search_buckets(cumulative, start, end, target, 4).numpy(), [0, 2, 3, 4, 5])


@pytest.mark.parametrize("size", [9, 16, 64, 70])
def test_count_by_blocks_is_searchsorted(size):
    rng = np.random.default_rng(size)
    masses = rng.exponential(size=(6, size))
    masses[:, ::3] = 0.0  # zero-mass categories: runs of equal entries
    cdf = np.cumsum(masses, axis=1).astype(np.float32)
    targets = rng.uniform(size=(6, size + 40)).astype(np.float32) * cdf[:, -1:]
    targets[:, :size] = cdf[:, :size]  # targets on the entries themselves
    targets[:, -1] = 0.0
    expected = tf.searchsorted(cdf, targets, side="right").numpy()
    count = tf.function(_count_by_blocks, jit_compile=True)
    np.testing.assert_array_equal(count(tf.constant(cdf), tf.constant(targets)).numpy(), expected)
    np.testing.assert_array_equal(_count_by_blocks(tf.constant(cdf), tf.constant(targets)).numpy(), expected)


def test_in_xla_context_tells_compiled_code_from_graph_mode():
    seen = []

    def probe(x):
        seen.append(in_xla_context())
        return x

    tf.function(probe)(tf.constant(1.0))
    tf.function(probe, jit_compile=True)(tf.constant(1.0))
    assert seen == [False, True]
    assert not in_xla_context()  # eagerly


@pytest.mark.parametrize("residual", ["uniform", "unigram"])
def test_graph_mode_draw_is_one_xla_computation_and_keeps_the_law(residual):
    # K = 12: rows longer than one block of XLA's count and not a multiple of it.
    n = 400
    sampler = _midx("rvq", residual, n=n, k=12)
    sampler.refresh(_embeddings(n=n, clusters=20))
    queries = tf.constant(np.random.default_rng(6).standard_normal((2, D)).astype(np.float32))
    draw = tf.function(lambda q: sampler.sample(q, 20_000, seed=3))
    operations = tensorflow_executed_operations(draw.get_concrete_function(queries).graph)
    executed = {op.type for op in operations}
    # The codeword draw's searches, einsum and matmuls run inside XLA, not op by op.
    assert not executed & {"UpperBound", "Einsum", "MatMul", "StatelessIf"}
    assert any("_XlaMustCompile" in op.node_def.attr and op.get_attr("_XlaMustCompile") for op in operations)
    ids, log_q = draw(queries)
    log_prob = sampler.log_prob(queries, np.tile(np.arange(n), (2, 1))).numpy()
    np.testing.assert_allclose(log_q.numpy(), np.take_along_axis(log_prob, ids.numpy(), 1), atol=1e-4)
    for row in range(2):
        counts = np.bincount(ids[row].numpy(), minlength=n)
        assert chi_square_pvalue(counts, np.exp(log_prob[row]), counts.sum()) > CHI_SQUARE_ALPHA
    xla_ids, _ = tf.function(lambda q: sampler.sample(q, 20_000, seed=3), jit_compile=True)(queries)
    np.testing.assert_array_equal(xla_ids.numpy(), ids.numpy())


@pytest.mark.parametrize("jit_compile", [False, True])
def test_refresh_during_fit_is_seen_by_the_compiled_step(jit_compile):
    n, d = 120, 8
    sampler = samplers.MIDX(n, num_codewords=4, seed=0)
    layer = AdaptiveSampledSoftmaxLoss(n, sampler, num_samples=8)
    features = K.Input((d,))
    model = K.Model(features, K.layers.Dense(d)(features))
    model.compile(
        optimizer=K.optimizers.Adam(0.05), loss=SampledSoftmaxLoss(layer, model=model), jit_compile=jit_compile
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, d)).astype(np.float32)
    y = rng.integers(0, n, 256).astype(np.int32)
    refresh = CodebookRefresh(layer, every_n_steps=4)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[refresh])
    # 16 global steps: refreshes before steps 0, 4, 8, 12; the epoch starts (steps 0 and 8) coincide.
    assert refresh.refresh_count == 4
    assert bool(sampler.initialized.numpy())
    # The state equals a fresh quantization of the current embeddings' buckets, not the initial one.
    assert (sampler.bucket_sizes.numpy() > 0).sum() > 1
    assert model.train_function is not None


def test_state_memory_per_class():
    n, k, d = 10_000, 16, 32
    for residual, per_class in (("uniform", 8), ("unigram", 16)):
        sampler = samplers.MIDX(
            n, num_codewords=k, residual=residual, counts=np.ones(n) if residual == "unigram" else None
        )
        sampler.build_state(d)
        fixed = 4 * (2 * k * d + k * k + k * k + 1) + 1
        assert sampler.state_bytes() == per_class * n + fixed


def test_refresh_reaches_an_xla_compiled_function_without_retracing():
    sampler = _midx("pq", "uniform")
    sampler.refresh(_embeddings(seed=0))
    queries = tf.constant(np.random.default_rng(0).standard_normal((2, D)), tf.float32)
    all_ids = tf.constant(np.tile(np.arange(N), (2, 1)), tf.int32)
    compiled = tf.function(sampler.log_prob, jit_compile=True)
    before = compiled(queries, all_ids).numpy()
    sampler.refresh(_embeddings(seed=7))
    after = compiled(queries, all_ids).numpy()
    assert compiled.experimental_get_tracing_count() == 1
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _numpy_log_q(sampler, queries.numpy()), atol=2e-4)


# -- the default codebook size -------------------------------------------------------------------
@pytest.mark.parametrize(
    "num_classes,expected",
    [
        (1, 1),
        (2, 2),
        (15, 15),
        (16, 16),
        (17, 16),
        (511, 16),
        (2_047, 16),
        (2_048, 32),
        (5_000, 32),
        (8_191, 32),
        (8_192, 64),
        (10_000, 64),
        (100_000, 64),
        (1_000_000, 64),
        (10**9, 64),
    ],
)
def test_default_num_codewords_values(num_classes, expected):
    assert _default_num_codewords(num_classes) == expected


def test_default_num_codewords_closed_form():
    # K = min(N, clip(2^⌊(⌊log2 N⌋ − 1) / 2⌋, 16, 64)): the power of two nearest √N / 2 (log scale).
    previous = 0
    for n in list(range(1, 70_000, 7)) + [2**e + o for e in range(1, 31) for o in (-1, 0, 1)]:
        k = _default_num_codewords(n)
        assert isinstance(k, int) and 1 <= k <= n
        assert k == min(n, max(16, min(64, 2 ** ((int(np.floor(np.log2(n))) - 1) // 2 if n > 1 else 1))))
        if 16 < k < 64:
            assert 2**-0.5 - 1e-9 <= np.sqrt(n) / 2 / k < 2**0.5 + 1e-9
    for n in range(1, 20_000):
        k = _default_num_codewords(n)
        assert k >= previous  # never shrinks as the catalogue grows
        previous = k


def test_default_num_codewords_in_the_sampler_and_explicit_k_wins():
    sampler = samplers.MIDX(10_000, seed=0)
    assert type(sampler.num_codewords) is int and sampler.num_codewords == 64
    assert samplers.MIDX(12, seed=0).num_codewords == 12  # never above N
    assert samplers.MIDX(10_000, num_codewords=8).num_codewords == 8
    assert samplers.MIDX(100, num_codewords=100).num_codewords == 100
    with pytest.raises(ValueError, match="num_codewords"):
        samplers.MIDX(100, num_codewords=101)  # an explicit K above N still raises
    with pytest.raises(ValueError, match="num_codewords"):
        samplers.MIDX(100, num_codewords=0)
    sampler.build_state(D)
    assert type(sampler.num_codewords) is int and sampler.codebooks[0].shape == (64, D)
    assert sampler.bucket_sizes.shape == (64, 64)


def test_default_num_codewords_config_round_trip():
    sampler = samplers.MIDX(3_000, quantizer="pq", seed=2)
    config = sampler.get_config()
    assert config["num_codewords"] == 32  # the resolved K is recorded, not None
    clone = samplers.MIDX.from_config(config)
    assert clone.num_codewords == 32 and clone.quantizer == "pq"


def test_default_num_codewords_survives_a_keras_file(tmp_path):
    n, d = 9_000, 4  # default K = 64
    layer = AdaptiveSampledSoftmaxLoss(n, samplers.MIDX(n, seed=0), num_samples=5, add_to_model_loss=True)
    features = K.Input((d,), name="features")
    labels = K.Input((), dtype="int32", name="labels")
    model = K.Model([features, labels], layer((K.layers.Dense(d)(features), labels)))
    assert layer.refresh_sampler()
    path = str(tmp_path / "midx_default.keras")
    model.save(path)
    restored = K.models.load_model(path)
    restored_sampler = next(x for x in restored.layers if isinstance(x, AdaptiveSampledSoftmaxLoss)).sampler
    assert restored_sampler.num_codewords == layer.sampler.num_codewords == 64
    np.testing.assert_array_equal(restored_sampler.bucket_sizes.numpy(), layer.sampler.bucket_sizes.numpy())
    np.testing.assert_array_equal(restored_sampler.codebooks[0].numpy(), layer.sampler.codebooks[0].numpy())


@pytest.mark.parametrize("quantizer", ["pq", "rvq"])
def test_log_prob_stays_exact_when_codeword_scores_span_hundreds_of_nats(quantizer):
    # exp(s² − max) underflows for every codeword > 87 nats below the best; rows emptied that way
    # are redone in log space, so log q still matches the independent formula and normalizes.
    sampler = _midx(quantizer, k=4)
    sampler.refresh(_embeddings())
    queries = 300.0 * np.random.default_rng(6).standard_normal((4, D)).astype(np.float32)
    log_prob = sampler.log_prob(queries, np.tile(np.arange(N), (4, 1))).numpy()
    reference = _numpy_log_q(sampler, queries.astype(np.float64))
    finite = reference > -80  # the classes that carry the mass
    np.testing.assert_allclose(log_prob[finite], reference[finite], atol=0.05)
    np.testing.assert_allclose(np.logaddexp.reduce(log_prob, axis=1), 0.0, atol=1e-3)


@pytest.mark.parametrize("quantizer,residual", VARIANTS)
def test_draws_keep_the_law_when_codeword_scores_span_hundreds_of_nats(quantizer, residual):
    # exp(s² − max) then underflows in the block draw's linear masses: such batches are drawn from
    # the exact log-space table instead, and the frequencies still follow log q.
    sampler = _midx(quantizer, residual, k=8)
    sampler.refresh(_embeddings())
    query = 300.0 * np.random.default_rng(7).standard_normal((1, D)).astype(np.float32)
    scores2 = sampler._codeword_scores(tf.constant(query))[1]
    blocks = _block_masses(scores2, tf.convert_to_tensor(sampler.log_bucket_weights))
    assert bool(blocks.underflow)  # the fallback is what this test exercises
    log_prob = sampler.log_prob(query, np.arange(N)[np.newaxis]).numpy()[0]
    ids, log_q = sampler.sample(np.repeat(query, 2000, axis=0), num_samples=10, seed=8)
    np.testing.assert_allclose(log_q.numpy(), log_prob[ids.numpy()], atol=1e-3)
    counts = np.bincount(ids.numpy().ravel(), minlength=N)
    keep = np.exp(log_prob) * counts.sum() > 1e-3  # classes the test can see
    assert counts[~keep].sum() == 0
    assert chi_square_pvalue(counts[keep], np.exp(log_prob[keep]) / np.exp(log_prob[keep]).sum(), counts.sum()) > (
        CHI_SQUARE_ALPHA
    )


@pytest.mark.parametrize("quantizer", ["pq", "rvq"])
def test_refresh_reads_a_table_variable_a_block_of_rows_at_a_time(monkeypatch, quantizer):
    # Once training has read W sparsely, TensorFlow copies W whole at every dense read, so the
    # refresh must read a variable with gathers of blocks of rows only, and build the same state
    # as from the table as one tensor.
    monkeypatch.setattr(quantization, "_CHUNK_ELEMENTS", 4 * 50)  # assignment chunks of 50 rows
    monkeypatch.setattr(tables, "_BLOCK_ELEMENTS", D * 100)  # finiteness blocks of 100 rows
    n = 600
    embeddings = _embeddings(n, seed=4)
    table = tf.Variable(embeddings)
    from_variable = _midx(quantizer, "unigram", n=n, kmeans=samplers.KMeansOptions(sample_size=40))
    from_tensor = _midx(quantizer, "unigram", n=n, kmeans=samplers.KMeansOptions(sample_size=40))
    refresh = from_variable.compiled_refresh(lambda: (table, None))
    for _ in range(2):  # first and warm-started
        assert bool(refresh("raise"))
        from_tensor.refresh(tf.constant(embeddings))
    for mine, reference in zip(from_variable.variables, from_tensor.variables):
        np.testing.assert_array_equal(mine.numpy(), reference.numpy())

    def reads_of_the_whole_table(function):
        operations = tensorflow_executed_operations(function.get_concrete_function("raise").graph)
        reads = [op for op in operations if op.type in ("ReadVariableOp", "ResourceGather")]
        assert reads  # the scan sees the loop bodies' reads
        return [op.name for op in reads if op.outputs[0].shape.as_list() == [n, D]]

    assert reads_of_the_whole_table(refresh) == []
    # Control: a sampler that takes the table as one tensor shows the dense read.
    snapshot = samplers.Softmax(n, live=False)
    assert reads_of_the_whole_table(snapshot.compiled_refresh(lambda: (table, None)))
    # NaN in one block of the variable is still refused before anything changes.
    table[250, 1].assign(np.nan)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        refresh("raise")
    np.testing.assert_array_equal(from_variable.codes.numpy(), from_tensor.codes.numpy())


@pytest.mark.parametrize("quantizer,residual", VARIANTS)
def test_refresh_on_a_kmeans_sample_keeps_exact_codes_and_the_law(monkeypatch, quantizer, residual):
    # 40 of 600 classes train the codebooks (several chunks of the assignment pass too); every
    # class still gets the nearest codewords of the codebooks it returns, and draws follow log q.
    monkeypatch.setattr(quantization, "_CHUNK_ELEMENTS", 4 * 50)
    n = 600
    embeddings = _embeddings(n, seed=3)
    sampler = _midx(quantizer, residual, n=n, kmeans=samplers.KMeansOptions(sample_size=40))
    sampler.refresh(embeddings)
    sampler.refresh(embeddings)  # and warm-started
    c1, c2 = (c.numpy().astype(np.float64) for c in sampler.codebooks)
    codes = sampler.codes.numpy()
    if quantizer == "pq":
        first, second = embeddings[:, :3], embeddings[:, 3:]
    else:
        first, second = embeddings, embeddings - c1[codes[:, 0]]

    def nearest(points, centroids):
        return ((points[:, np.newaxis] - centroids[np.newaxis]) ** 2).sum(axis=2).argmin(axis=1)

    np.testing.assert_array_equal(codes[:, 0], nearest(first, c1))
    np.testing.assert_array_equal(codes[:, 1], nearest(second, c2))
    queries = np.random.default_rng(3).standard_normal((2, D)).astype(np.float32)
    log_prob = sampler.log_prob(queries, np.tile(np.arange(n), (2, 1))).numpy()
    np.testing.assert_allclose(log_prob, _numpy_log_q(sampler, queries), atol=2e-4)
    ids, log_q = sampler.sample(queries, num_samples=30000, seed=2)
    np.testing.assert_allclose(log_q.numpy(), np.take_along_axis(log_prob, ids.numpy(), 1), atol=1e-4)
    for row in range(2):
        counts = np.bincount(ids[row].numpy(), minlength=n)
        assert chi_square_pvalue(counts, np.exp(log_prob[row]), counts.sum()) > CHI_SQUARE_ALPHA


def test_kmeans_sample_size_is_checked_and_kept_in_the_config():
    sampler = samplers.MIDX(1_000, num_codewords=8, kmeans=samplers.KMeansOptions(sample_size=100), seed=0)
    assert sampler.get_config()["kmeans"] == {"iterations": 10, "sample_size": 100, "tolerance": 0.1}
    assert samplers.MIDX.from_config(sampler.get_config()).kmeans == sampler.kmeans
    # Saved before `tolerance` existed: loads with 0.0, every refresh running all its iterations.
    saved_then = {**sampler.get_config(), "kmeans": {"iterations": 10, "sample_size": 100}}
    assert samplers.MIDX.from_config(saved_then).kmeans.tolerance == 0.0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"kmeans\.tolerance"):
            samplers.KMeansOptions(tolerance=bad)
    assert samplers.MIDX(1_000, num_codewords=8).get_config()["kmeans"]["sample_size"] is None
    with pytest.raises(ValueError, match=r"kmeans\.sample_size"):
        samplers.MIDX(1_000, num_codewords=8, kmeans=samplers.KMeansOptions(sample_size=7))
    with pytest.raises(ValueError, match=r"kmeans\.sample_size"):
        samplers.KMeansOptions(sample_size=0)
    with pytest.raises(TypeError, match="kmeans"):
        samplers.MIDX(1_000, num_codewords=8, kmeans={"iterations": 3})


@pytest.mark.parametrize("quantizer", ["pq", "rvq"])
def test_refresh_stops_lloyd_at_the_kmeans_tolerance(quantizer):
    # tolerance 1.0 stops after the first iteration: the refresh of at most one iteration, exactly;
    # the default tolerance runs more on this table, and fewer than a tolerance of 0.0 does.
    table = np.random.default_rng(2).normal(size=(N, 8)).astype(np.float32)

    def codebooks(**options):
        sampler = _midx(quantizer, k=8, kmeans=samplers.KMeansOptions(**options))
        sampler.refresh(table)
        return np.concatenate([c.numpy().ravel() for c in sampler.codebooks])

    one = codebooks(iterations=1, tolerance=0.0)
    np.testing.assert_array_equal(codebooks(iterations=10, tolerance=1.0), one)
    default, every = codebooks(iterations=10), codebooks(iterations=10, tolerance=0.0)
    assert not np.allclose(default, one) and not np.allclose(default, every)


def test_configs_and_arguments_of_the_flat_options_still_load():
    # Configs saved before the options were grouped load with the same options; the flat keywords
    # still work for one release, with a DeprecationWarning.
    old = {
        "name": "midx", "num_classes": 1_000, "seed": 3, "num_codewords": 8, "quantizer": "pq",
        "residual": "uniform", "power": 1.0, "include_bias": True, "kmeans_iterations": 4,
        "kmeans_sample_size": 200, "learn_codebooks": True, "codebook_loss_weight": 0.5,
        "reconstruction_weight": 0.2, "counts": None,
    }  # fmt: skip
    restored = samplers.MIDX.from_config(old)
    assert restored.kmeans == samplers.KMeansOptions(iterations=4, sample_size=200, tolerance=0.0)
    assert restored.learned == samplers.LearnedCodebooks(loss_weight=0.5, reconstruction_weight=0.2)
    assert restored.quantizer == "pq" and restored.include_bias and restored.num_codewords == 8
    assert samplers.MIDX.from_config({**old, "learn_codebooks": False}).learned is None
    with pytest.warns(DeprecationWarning, match="kmeans=KMeansOptions"):
        flat = samplers.MIDX(
            1_000, num_codewords=8, kmeans_iterations=3, learn_codebooks=True, codebook_loss_weight=2.0
        )
    assert flat.kmeans.iterations == 3 and flat.learned.loss_weight == 2.0


def test_cumulative_weights_restart_in_every_bucket():
    rng = np.random.default_rng(0)
    buckets = np.sort(rng.integers(0, 9, 1000)).astype(np.int32)
    buckets[600:900] = 4  # one bucket longer than half the array: every doubling step matters
    buckets = np.sort(buckets)
    weights = rng.random(1000).astype(np.float32)
    expected = np.concatenate([np.cumsum(weights[buckets == b], dtype=np.float64) for b in np.unique(buckets)])
    got = segmented_cumsum(tf.constant(weights), tf.constant(buckets))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)

import numpy as np
import pytest
import tensorflow as tf
from conftest import CHI_SQUARE_ALPHA, chi_square_pvalue

from tf_adaptive_softmax import samplers

NUM_CLASSES = 37  # deliberately not a power of anything


def _counts():
    return np.random.default_rng(0).integers(0, 50, NUM_CLASSES).astype(np.float64)


def _softmax():
    sampler = samplers.Softmax(NUM_CLASSES, seed=3)
    rng = np.random.default_rng(1)
    sampler.refresh(rng.standard_normal((NUM_CLASSES, 4)).astype(np.float32), rng.standard_normal(NUM_CLASSES))
    return sampler


def _midx(quantizer, residual):
    sampler = samplers.MIDX(
        NUM_CLASSES,
        num_codewords=3,
        quantizer=quantizer,
        residual=residual,
        counts=_counts() if residual == "unigram" else None,
        seed=3,
    )
    sampler.refresh(np.random.default_rng(1).standard_normal((NUM_CLASSES, 4)).astype(np.float32))
    return sampler


def _midx_learned():
    """A learned-codebook MIDX between refreshes: codewords moved by training, codes not re-assigned."""
    sampler = samplers.MIDX(NUM_CLASSES, num_codewords=3, quantizer="pq", learn_codebooks=True, seed=3)
    sampler.refresh(np.random.default_rng(1).standard_normal((NUM_CLASSES, 4)).astype(np.float32))
    rng = np.random.default_rng(6)
    for codebook in (sampler.codebook1, sampler.codebook2):
        codebook.assign_add(0.5 * rng.standard_normal(codebook.shape).astype(np.float32))
    return sampler


def _kernel(leaf_size=None):
    sampler = samplers.QuadraticKernel(NUM_CLASSES, alpha=100.0, leaf_size=leaf_size, seed=3)
    sampler.refresh(np.random.default_rng(1).standard_normal((NUM_CLASSES, 4)).astype(np.float32) * 0.3)
    return sampler


FACTORIES = {
    "quadratic_kernel": _kernel,
    "quadratic_kernel_leaf5": lambda: _kernel(leaf_size=5),
    "midx_pq_uniform": lambda: _midx("pq", "uniform"),
    "midx_rvq_unigram": lambda: _midx("rvq", "unigram"),
    "midx_learned": _midx_learned,
    "uniform": lambda: samplers.Uniform(NUM_CLASSES, seed=3),
    "log_uniform": lambda: samplers.LogUniform(NUM_CLASSES, seed=3),
    "unigram": lambda: samplers.Unigram(_counts(), power=0.75, seed=3),
    "unigram_power1": lambda: samplers.Unigram(_counts(), power=1.0, seed=3),
    "softmax": _softmax,
}


def _queries(batch=3, dim=4):
    return np.random.default_rng(2).standard_normal((batch, dim)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_frequencies_match_log_prob(name):
    sampler = FACTORIES[name]()
    queries = _queries()
    ids, log_q = sampler.sample(queries, num_samples=20000, seed=11)
    all_ids = np.tile(np.arange(NUM_CLASSES), (len(queries), 1))
    probs = np.exp(sampler.log_prob(queries, all_ids).numpy())
    for row in range(len(queries)):
        counts = np.bincount(ids[row].numpy(), minlength=NUM_CLASSES)
        assert chi_square_pvalue(counts, probs[row], counts.sum()) > CHI_SQUARE_ALPHA
    # The returned log q is the log_prob of the drawn ids.
    np.testing.assert_allclose(log_q.numpy(), sampler.log_prob(queries, ids).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_log_prob_is_normalized(name):
    sampler = FACTORIES[name]()
    queries = _queries()
    all_ids = np.tile(np.arange(NUM_CLASSES), (len(queries), 1))
    lse = tf.reduce_logsumexp(sampler.log_prob(queries, all_ids), axis=1).numpy()
    np.testing.assert_allclose(lse, 0.0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_shapes_dtypes_and_seeds(name):
    sampler = FACTORIES[name]()
    ids, log_q = sampler.sample(_queries(5), num_samples=7, seed=4)
    assert ids.shape == (5, 7) and ids.dtype == tf.int32 and log_q.dtype == tf.float32
    assert np.all((ids.numpy() >= 0) & (ids.numpy() < NUM_CLASSES))
    again, _ = sampler.sample(_queries(5), num_samples=7, seed=4)
    np.testing.assert_array_equal(ids.numpy(), again.numpy())
    # The own seed stream advances: consecutive draws differ, and a same-seeded twin repeats them.
    first, _ = sampler.sample(_queries(5), num_samples=50)
    second, _ = sampler.sample(_queries(5), num_samples=50)
    assert not np.array_equal(first.numpy(), second.numpy())


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("num_samples", [3, 64])  # MIDX: below and above K (its two draw paths)
def test_sample_with_log_prob_is_sample_and_log_prob_in_one_call(name, num_samples):
    sampler = FACTORIES[name]()
    queries = _queries(5)
    positives = np.random.default_rng(6).integers(0, NUM_CLASSES, (5, 2)).astype(np.int32)
    ids, log_q, positives_log_q = sampler.sample_with_log_prob(queries, num_samples, positives, seed=4)
    expected_ids, expected_log_q = sampler.sample(queries, num_samples, seed=4)
    np.testing.assert_array_equal(ids.numpy(), expected_ids.numpy())
    np.testing.assert_allclose(log_q.numpy(), expected_log_q.numpy(), rtol=1e-6, atol=1e-6)
    assert positives_log_q.shape == (5, 2)
    np.testing.assert_allclose(
        positives_log_q.numpy(), sampler.log_prob(queries, positives).numpy(), rtol=1e-5, atol=1e-5
    )
    # [B] ids read as one per row; out-of-range ids are refused, naming the argument.
    assert sampler.sample_with_log_prob(queries, 2, positives[:, 0], seed=4)[2].shape == (5, 1)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="ids"):
        sampler.sample_with_log_prob(queries, 2, np.full((5, 1), NUM_CLASSES, np.int32), seed=4)


def test_own_seed_stream_is_reproducible():
    a, b = samplers.Uniform(1000, seed=9), samplers.Uniform(1000, seed=9)
    for _ in range(2):
        np.testing.assert_array_equal(a.sample(_queries(), 5)[0].numpy(), b.sample(_queries(), 5)[0].numpy())


def test_log_uniform_matches_closed_form():
    n = 1000
    ids = np.arange(n)
    expected = (np.log(ids + 2.0) - np.log(ids + 1.0)) / np.log(n + 1.0)
    got = np.exp(samplers.LogUniform(n).log_prob(_queries(1), ids[None]).numpy()[0])
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_unigram_matches_counts_and_never_draws_zero_counts():
    counts = np.array([0.0, 1.0, 4.0, 9.0, 0.0])
    sampler = samplers.Unigram(counts, power=0.5)
    expected = np.sqrt(counts) / np.sqrt(counts).sum()
    got = np.exp(sampler.log_prob(_queries(1), [[0, 1, 2, 3, 4]]).numpy()[0])
    np.testing.assert_allclose(got, expected, atol=1e-7)
    ids, _ = sampler.sample(_queries(2), num_samples=5000, seed=1)
    assert not np.isin(ids.numpy(), [0, 4]).any()


def test_softmax_matches_numpy_softmax():
    sampler = _softmax()
    queries = _queries()
    w = sampler.snapshot_embeddings.numpy()
    b = sampler.snapshot_bias.numpy()
    logits = queries @ w.T + b
    expected = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    got = sampler.log_prob(queries, np.tile(np.arange(NUM_CLASSES), (3, 1))).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_num_samples_must_be_positive_int(bad):
    with pytest.raises(ValueError, match="num_samples"):
        samplers.Uniform(10).sample(_queries(), num_samples=bad)


def test_bad_inputs_name_the_argument():
    sampler = samplers.Uniform(10)
    with pytest.raises(ValueError, match="queries"):
        sampler.sample(np.zeros(4, np.float32), num_samples=2)
    with pytest.raises(TypeError, match="ids"):
        sampler.log_prob(_queries(), np.zeros((3, 2), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="ids"):
        sampler.log_prob(_queries(), [[0, 10], [1, 2], [3, 4]])
    with pytest.raises(ValueError, match="num_classes"):
        samplers.Uniform(0)
    with pytest.raises(ValueError, match="counts"):
        samplers.Unigram([1.0, -1.0])
    with pytest.raises(ValueError, match="counts"):
        samplers.Unigram([0.0, 0.0])


def test_refresh_checks_embedding_shape_and_finiteness():
    sampler = samplers.Softmax(5)
    with pytest.raises(ValueError, match="class_embeddings"):
        sampler.refresh(np.zeros((4, 3), np.float32))
    sampler = samplers.Softmax(5)
    sampler.refresh(np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="class_embeddings"):
        sampler.refresh(np.zeros((5, 2), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
        sampler.refresh(np.full((5, 3), np.nan, np.float32))
    # The failed refresh left the previous state in place.
    assert np.all(np.isfinite(sampler.snapshot_embeddings.numpy()))


@pytest.mark.parametrize("name", ["uniform", "log_uniform", "unigram"])
def test_static_refresh_is_a_no_op(name):
    sampler = FACTORIES[name]()
    before = [w.numpy().copy() for w in sampler.weights]
    sampler.refresh(np.ones((NUM_CLASSES, 4), np.float32))
    for old, new in zip(before, sampler.weights):
        np.testing.assert_array_equal(old, new.numpy())


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_config_round_trip(name):
    sampler = FACTORIES[name]()
    clone = type(sampler).from_config(sampler.get_config())
    assert clone.num_classes == sampler.num_classes and type(clone) is type(sampler)


def test_uniform_reaches_every_id_of_a_huge_catalogue():
    # A float32 uniform scaled by 10^8 could only produce multiples of 8 near the top of the range.
    ids = samplers.Uniform(100_000_000, seed=0).sample(_queries(4), 50_000)[0].numpy().ravel()
    for modulus in (2, 8):
        counts = np.bincount(ids % modulus, minlength=modulus)
        assert chi_square_pvalue(counts, np.full(modulus, 1.0 / modulus), counts.sum()) > CHI_SQUARE_ALPHA
    assert ids.max() > 99_000_000


def test_uniform_ints_with_per_element_ranges():
    from tf_adaptive_softmax._ops.random import uniform_ints

    sizes = tf.constant([[3, 7, 50_000_000]])
    draws = uniform_ints([20000, 3], tf.broadcast_to(sizes, [20000, 3]), tf.constant([1, 2])).numpy()
    for column, size in enumerate((3, 7)):
        counts = np.bincount(draws[:, column], minlength=size)
        assert chi_square_pvalue(counts, np.full(size, 1.0 / size), counts.sum()) > CHI_SQUARE_ALPHA
    assert draws[:, 2].max() < 50_000_000 and (draws[:, 2] % 2).mean() > 0.45

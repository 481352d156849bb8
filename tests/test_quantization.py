"""k-means on a sample, chunked nearest-centroid search with per-chunk views (halves, residuals)."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import forbidden_in

from tf_adaptive_softmax import _quantization as quantization

SEED = tf.constant([3, 4])


def _clustered(n, d, clusters=6, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)) * 3
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + spread * rng.standard_normal((n, d))).astype(np.float32), labels


def _numpy_nearest(points, centroids):
    """Independent formula: argmin of the squared distances, computed in float64."""
    points, centroids = np.asarray(points, np.float64), np.asarray(centroids, np.float64)
    distances = ((points[:, np.newaxis, :] - centroids[np.newaxis]) ** 2).sum(axis=2)
    return distances.argmin(axis=1)


def _numpy_lloyd(points, centroids, iterations, tolerance=None):
    """Full-data Lloyd iterations in NumPy (data chosen so that no cluster empties); with a
    tolerance, stop after the first iteration that moved at most that fraction of the points.
    Returns (centroids, codes, iterations run)."""
    centroids, previous, ran = np.asarray(centroids, np.float64), None, 0
    while ran < iterations:
        codes = _numpy_nearest(points, centroids)
        assert len(np.unique(codes)) == len(centroids), "a cluster emptied: pick other data"
        centroids = np.stack([points[codes == c].mean(axis=0) for c in range(len(centroids))])
        ran += 1
        if tolerance is not None and previous is not None and np.mean(codes != previous) <= tolerance:
            break
        previous = codes
    return centroids, _numpy_nearest(points, centroids), ran


@pytest.fixture
def tiny_chunks(monkeypatch):
    """7 rows per chunk for 5 centroids: N = 53 makes 8 chunks, the last one shifted back."""
    monkeypatch.setattr(quantization, "_CHUNK_ELEMENTS", 5 * 7)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_chunked_views_match_numpy_nearest_for_halves_and_residuals(tiny_chunks, mode):
    rng = np.random.default_rng(1)
    n, d, split = 53, 6, 3
    points = rng.standard_normal((n, d)).astype(np.float32)
    first_half, second_half = rng.standard_normal((5, split)), rng.standard_normal((5, d - split))
    first_codebook = rng.standard_normal((5, d)).astype(np.float32)
    first_codes = rng.integers(0, 5, n).astype(np.int32)
    residual_codebook = rng.standard_normal((5, d)).astype(np.float32) * 0.3

    def residual(rows, row_ids):
        return rows - tf.gather(first_codebook, tf.gather(first_codes, row_ids))

    cases = [
        (lambda rows, _: rows[:, :split], first_half, points[:, :split]),
        (lambda rows, _: rows[:, split:], second_half, points[:, split:]),
        (residual, residual_codebook, points - first_codebook[first_codes]),
        (None, first_codebook, points),
    ]
    for view, centroids, viewed in cases:
        centroids = tf.constant(centroids, tf.float32)

        def assign(p, c, view=view):
            return quantization.nearest_centroid(p, c, view)

        if mode != "eager":
            assign = tf.function(assign, jit_compile=mode == "xla")
        codes = assign(tf.constant(points), centroids).numpy()
        np.testing.assert_array_equal(codes, _numpy_nearest(viewed, centroids.numpy()))
        if mode == "xla":
            assert not forbidden_in(assign.get_concrete_function(tf.constant(points), centroids).graph.as_graph_def())


def test_kmeans_within_the_sample_size_is_full_data_lloyd():
    points, _ = _clustered(300, 4, clusters=5, seed=2)
    initial = points[[0, 60, 120, 180, 240]]
    centroids, codes = quantization.kmeans(points, initial, iterations=6, seed=SEED)  # 300 <= 1024·5
    expected_centroids, expected_codes, _ = _numpy_lloyd(points, initial, 6)
    np.testing.assert_allclose(centroids.numpy(), expected_centroids, atol=1e-5)
    np.testing.assert_array_equal(codes.numpy(), expected_codes)
    # An explicit sample size of at least N is the same computation, bit for bit.
    again, again_codes = quantization.kmeans(points, initial, iterations=6, seed=SEED, sample_size=300)
    np.testing.assert_array_equal(again.numpy(), centroids.numpy())
    np.testing.assert_array_equal(again_codes.numpy(), codes.numpy())


@pytest.mark.parametrize("tolerance", [0.0, 0.02, 0.1])
def test_lloyd_stops_at_the_first_iteration_that_moves_at_most_a_tolerance(tolerance):
    # Overlapping clusters and poor seeds: the points settle over several iterations.
    points, _ = _clustered(400, 2, clusters=4, spread=2.0, seed=5)
    initial = points[:4]
    expected, expected_codes, ran = _numpy_lloyd(points, initial, 40, tolerance)
    _, _, converged = _numpy_lloyd(points, initial, 40, 0.0)
    centroids, codes = quantization.kmeans(points, initial, iterations=40, seed=SEED, tolerance=tolerance)
    np.testing.assert_allclose(centroids.numpy(), expected, atol=1e-4)
    np.testing.assert_array_equal(codes.numpy(), expected_codes)
    _, iterations_run = quantization._lloyd(tf.constant(points), initial, 40, SEED, tolerance)
    assert int(iterations_run) == ran
    # The data make the tolerance matter: a looser one stops earlier than full convergence.
    assert (ran < converged) == (tolerance > 0.0), (ran, converged)


def test_kmeans_on_a_sample_codes_every_point_by_its_nearest_centroid(tiny_chunks):
    points, labels = _clustered(2000, 4, clusters=5, seed=3)
    initial = quantization.kmeans_plus_plus(tf.constant(points), 5, tf.constant([0, 9]))
    centroids, codes = quantization.kmeans(points, initial, iterations=8, seed=SEED, sample_size=100)
    np.testing.assert_array_equal(codes.numpy(), _numpy_nearest(points, centroids.numpy()))
    # Trained on 100 of 2,000 points, the centroids still separate the 5 true clusters.
    for cluster in range(5):
        assert len(np.unique(codes.numpy()[labels == cluster])) == 1
    # Deterministic for a seed; another seed draws another sample.
    same, _ = quantization.kmeans(points, initial, iterations=8, seed=SEED, sample_size=100)
    np.testing.assert_array_equal(same.numpy(), centroids.numpy())
    other, _ = quantization.kmeans(points, initial, iterations=8, seed=tf.constant([5, 6]), sample_size=100)
    assert not np.array_equal(other.numpy(), centroids.numpy())


@pytest.mark.parametrize("quantizer", ["pq", "rvq"])
@pytest.mark.parametrize("warm_start", [False, True])
def test_two_codebooks_on_a_sample_give_exact_codes_for_every_class(tiny_chunks, quantizer, warm_start):
    points, _ = _clustered(1000, 6, clusters=8, spread=0.3, seed=4)
    d1 = 3 if quantizer == "pq" else 6
    rng = np.random.default_rng(0)
    codebook1 = rng.standard_normal((5, d1)).astype(np.float32)
    codebook2 = rng.standard_normal((5, 6 - d1 if quantizer == "pq" else 6)).astype(np.float32)
    c1, c2, k1, k2 = (
        t.numpy()
        for t in quantization.two_codebook_quantize(
            points, codebook1, codebook2, quantizer, 5, SEED, warm_start=warm_start, sample_size=64
        )
    )
    if quantizer == "pq":
        first, second = points[:, :3], points[:, 3:]
    else:
        first, second = points, points - c1[k1]  # the residual of every class, in NumPy
    np.testing.assert_array_equal(k1, _numpy_nearest(first, c1))
    np.testing.assert_array_equal(k2, _numpy_nearest(second, c2))
    # The sampled codebooks quantize far better than the starting ones.
    error = np.mean(np.sum((quantization.reconstruct(c1, c2, k1, k2, quantizer).numpy() - points) ** 2, axis=1))
    assert error < 0.25 * np.mean(np.sum(points**2, axis=1))


def test_training_sample_views_only_the_sampled_rows():
    points = np.arange(40, dtype=np.float32).reshape(20, 2)
    offsets = np.arange(20, dtype=np.float32)[:, np.newaxis] * 1000

    def view(rows, row_ids):
        return rows + tf.gather(offsets, row_ids)  # tells which row each sampled row came from

    sample = quantization._training_sample(tf.constant(points), 8, SEED, view).numpy()
    assert sample.shape == (8, 2)
    rows = (sample[:, 0] // 1000).astype(int)
    np.testing.assert_array_equal(sample, points[rows] + offsets[rows])
    # Within the sample size: every point, in order, viewed.
    everything = quantization._training_sample(tf.constant(points), 20, SEED, view).numpy()
    np.testing.assert_array_equal(everything, points + offsets)


def test_sample_size_rule_and_checks():
    assert quantization.default_sample_size(64) == 1024 * 64
    with pytest.raises(ValueError, match="sample_size"):
        quantization.kmeans(np.ones((10, 2), np.float32), np.ones((4, 2), np.float32), 1, SEED, sample_size=3)
    with pytest.raises(ValueError, match="sample_size"):
        quantization.two_codebook_quantize(
            np.ones((10, 2), np.float32), np.ones((4, 1)), np.ones((4, 1)), "pq", 1, SEED, sample_size=0
        )

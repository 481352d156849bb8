"""k-means, product and residual quantization in TensorFlow: fixed shapes, XLA-compilable.

Everything here runs inside a graph function (a sampler's `refresh`): the iteration count is bounded,
shapes are static, the nearest-centroid search is chunked so that [N, K] distances never sit in
memory at once, and empty clusters are re-seeded with random points so every codeword stays used.

k-means trains on a uniform sample (`default_sample_size`: 1024 per centroid), then assigns every
point in one chunked pass. A `view` (a half for PQ, the residual for RVQ) is applied chunk by chunk.

Example:
    >>> import tensorflow as tf
    >>> from tf_adaptive_softmax import _quantization as quantization
    >>> points = tf.concat([tf.random.normal([50, 2]) - 5.0, tf.random.normal([50, 2]) + 5.0], 0)
    >>> init = quantization.random_rows(points, 2, seed=tf.constant([0, 1]))
    >>> centroids, codes = quantization.kmeans(points, init, iterations=10, seed=tf.constant([0, 2]))
    >>> same = lambda part, first: int(tf.reduce_sum(tf.cast(part == first, tf.int32)))
    >>> same(codes[:50], codes[0]), same(codes[50:], codes[50])
    (50, 50)
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import tensorflow as tf

from tf_adaptive_softmax._ops import tables
from tf_adaptive_softmax._ops.random import gumbel_max, sub_seed, uniform, uniform_ints
from tf_adaptive_softmax._validation import check_positive_int

__all__ = [
    "default_sample_size",
    "kmeans",
    "kmeans_plus_plus",
    "nearest_centroid",
    "product_split",
    "random_rows",
    "reconstruct",
    "two_codebook_quantize",
]

# Distances of one chunk stay under this many floats (16 MB).
_CHUNK_ELEMENTS = 1 << 22
# Points k-means trains on per centroid by default (see `default_sample_size`).
_SAMPLE_POINTS_PER_CENTROID = 1024
# The sub-stream of a k-means seed that draws its training sample: Lloyd's iterations use the
# sub-streams 0, 1, 2, ... (re-seeding of empty clusters), never this one.
_SAMPLE_STREAM = -1

#: `view(rows [R, d], row_ids [R]) -> [R, d']`: what k-means sees of some rows of the points.
PointView = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def default_sample_size(num_centroids: int) -> int:
    """Points k-means trains on when `sample_size` is None: 1024 per centroid (65,536 for K = 64).

    Lloyd's iterations and the k-means++ seeding run on a uniform sample of this many points, so
    they cost the same at any N; the proposal it gives matches full-data k-means' (benchmarks/
    README.md, "Refresh at scale"; 256·K, faiss's default bound, loses measurably).

    Args:
      num_centroids: K.
    """
    if num_centroids < 1:
        raise ValueError(f"`num_centroids` must be >= 1; got {num_centroids}.")
    return _SAMPLE_POINTS_PER_CENTROID * num_centroids


def random_rows(points: tf.Tensor, num_rows: int, seed: tf.Tensor) -> tf.Tensor:
    """`num_rows` distinct rows of `points`, chosen uniformly (top-k of random keys: XLA-safe).

    Args:
      points: [N, d].
      num_rows: how many rows (at most N).
      seed: int32 [2] stateless seed.
    """
    keys = uniform(tf.shape(points)[:1], seed)
    return tf.gather(points, tf.math.top_k(keys, k=num_rows).indices)


def kmeans_plus_plus(points: tf.Tensor, num_centroids: int, seed: tf.Tensor, sample_size: int = 4096) -> tf.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007) on a random subsample of the points.

    Each round draws 2 + ln K candidates with probability ∝ their squared distance to the nearest
    chosen centroid and keeps the one that lowers the total distance most: the seeds spread over
    the clusters. The subsample keeps the K sequential rounds cheap at any N.

    Args:
      points: [N, d].
      num_centroids: K, the seeds to choose.
      seed: int32 [2] stateless seed.
      sample_size: points the seeding looks at (a uniform subsample when N is larger; default 4096).

    Returns:
      [K, d] initial centroids.
    """
    trials = 2 + int(math.log(max(num_centroids, 1)))
    num_points = points.shape[0]
    sample = (
        random_rows(points, min(sample_size, num_points), sub_seed(seed, 0))
        if (num_points is None or num_points > sample_size)
        else points
    )
    first = sample[:1]
    nearest = tf.reduce_sum(tf.square(sample - first), axis=1)
    centroids = tf.tensor_scatter_nd_update(tf.zeros([num_centroids, points.shape[1]], points.dtype), [[0]], first)

    def step(index, centroids, nearest):
        # A floor keeps the logits finite when every point coincides with a chosen centroid.
        logits = tf.math.log(nearest + 1e-30)[tf.newaxis, :]
        picks = gumbel_max(logits, trials, sub_seed(seed, index))[0]
        candidates = tf.gather(sample, picks)  # [trials, d]
        distances = tf.reduce_sum(tf.square(sample[tf.newaxis] - candidates[:, tf.newaxis]), axis=2)
        updated = tf.minimum(nearest[tf.newaxis], distances)  # [trials, S]
        best = tf.argmin(tf.reduce_sum(updated, axis=1), output_type=tf.int32)
        centroids = tf.tensor_scatter_nd_update(centroids, [[index]], candidates[best][tf.newaxis])
        return index + 1, centroids, updated[best]

    _, centroids, _ = tf.while_loop(
        lambda index, *_: index < num_centroids,
        step,
        (tf.constant(1), centroids, nearest),
        maximum_iterations=max(num_centroids - 1, 1),
    )
    return centroids


def nearest_centroid(points: tf.Tensor, centroids: tf.Tensor, view: Optional[PointView] = None) -> tf.Tensor:
    """int32 [N]: index of the nearest centroid (squared L2) for each point, chunked over N.

    Args:
      points: [N, d]: a tensor, or a variable (sharded or not), read with gathers of one chunk
        of rows at a time (`_ops.tables.row_block`), so never copied whole.
      centroids: [K, d'] (d' = d without a view).
      view: optional `view(rows [R, d], row_ids [R]) -> [R, d']`, what is compared with the
        centroids (a column half, a residual). It is applied to one chunk of rows at a time, so
        the viewed points never exist in full. Default: the rows themselves.
    """
    if tables.is_sharded(points):
        return _nearest_centroid_by_shard(points, centroids, view)
    if not tables.is_table_variable(points):
        points = tf.convert_to_tensor(points)
    half_norms = 0.5 * tf.reduce_sum(tf.square(centroids), axis=1)

    def assign(chunk, row_ids):
        if view is not None:
            chunk = view(chunk, row_ids)
        # argmin ||x - c||² = argmin (½||c||² - x·c)
        scores = half_norms - tf.matmul(chunk, centroids, transpose_b=True)
        return tf.argmin(scores, axis=1, output_type=tf.int32)

    num_points = points.shape[0]
    rows = max(1, _CHUNK_ELEMENTS // max(1, centroids.shape[0]))
    if num_points is None or num_points <= rows:
        return assign(tf.convert_to_tensor(points), tf.range(tf.shape(points)[0]))
    num_chunks = -(-num_points // rows)

    def step(index, codes):
        # Chunks are read in place (no padded copy of the points); the last one is shifted back
        # to end at row N, overlapping its neighbour, so every chunk has the same static shape.
        start = tf.minimum(index * rows, num_points - rows)
        chunk = tables.row_block(points, start, rows)
        return index + 1, codes.write(index, assign(chunk, start + tf.range(rows)))

    _, codes = tf.while_loop(
        lambda index, _: index < num_chunks,
        step,
        (tf.constant(0), tf.TensorArray(tf.int32, size=num_chunks, element_shape=[rows])),
        # One chunk at a time: in a graph, parallel iterations would keep several [R, K] blocks.
        parallel_iterations=1,
    )
    codes = codes.stack()
    overlap = (num_chunks - 1) * rows - (num_points - rows)
    return tf.concat([tf.reshape(codes[:-1], [-1]), codes[-1, overlap:]], axis=0)


def _nearest_centroid_by_shard(points, centroids: tf.Tensor, view: Optional[PointView]) -> tf.Tensor:
    """`nearest_centroid` of a table sharded over parameter servers: each row block is assigned on
    the device that holds it, so only its [N_p] codes travel, never the rows."""
    codes, offset = [], 0
    for block in tables.shards(points):
        shifted = None if view is None else (lambda rows, row_ids, start=offset: view(rows, row_ids + start))
        with tf.device(block.device):
            codes.append(nearest_centroid(block, centroids, shifted))
        offset += int(block.shape[0])
    return tf.concat(codes, axis=0)


def _training_sample(
    points: tf.Tensor, sample_size: int, seed: tf.Tensor, view: Optional[PointView] = None
) -> tf.Tensor:
    """The points k-means iterates on: `sample_size` rows drawn uniformly (with replacement) and
    viewed, or every point (viewed) when N <= `sample_size`.

    One [S] integer draw and a gather: the same cost at any N; only the sampled rows are viewed.

    Args:
      points: [N, d].
      sample_size: S, the most points to keep.
      seed: int32 [2] stateless seed.
      view: optional `view(rows, row_ids)` (see `nearest_centroid`).

    Returns:
      [min(N, S), d'] points (all of them, in order, when N <= S).
    """
    num_points = points.shape[0]
    if num_points is None or num_points <= sample_size:
        points = tf.convert_to_tensor(points)  # a sharded table this small is read whole
        row_ids = tf.range(tf.shape(points)[0])
        return points if view is None else view(points, row_ids)
    row_ids = uniform_ints([sample_size], num_points, seed)
    rows = tables.lookup_rows(points, row_ids)  # only the sampled rows, from a sharded table too
    return rows if view is None else view(rows, row_ids)


def _resolved_sample_size(sample_size: Optional[int], num_centroids: int) -> int:
    """`sample_size`, or the default rule when None; at least one point per centroid."""
    if sample_size is None:
        return default_sample_size(num_centroids)
    sample_size = check_positive_int(sample_size, "sample_size")
    if sample_size < num_centroids:
        raise ValueError(f"`sample_size` ({sample_size}) must be >= the number of centroids ({num_centroids}).")
    return sample_size


def _lloyd(
    points: tf.Tensor, initial_centroids: tf.Tensor, iterations: int, seed: tf.Tensor, tolerance: float = 0.0
) -> Tuple[tf.Tensor, tf.Tensor]:
    """(centroids [K, d], int32 iterations run): at most `iterations` Lloyd iterations on `points`.

    The iterations stop early once an iteration moves at most a fraction `tolerance` of the points
    to another centroid (its means are kept). A cluster left empty is re-seeded with a random point
    (and the iterations go on).

    Args:
      points: [S, d], the points to fit (a training sample: each iteration reads all of them).
      initial_centroids: [K, d], where the iterations start; iterations: the most iterations.
      seed: int32 [2] stateless seed (the re-seeding of empty clusters).
      tolerance: the fraction of reassigned points at which they stop (default 0.0: none moved).
    """
    num_centroids = initial_centroids.shape[0]
    num_points = tf.shape(points)[0]

    def step(iteration, centroids, previous_codes, _):
        codes = nearest_centroid(points, centroids)
        moved = tf.reduce_mean(tf.cast(tf.not_equal(codes, previous_codes), tf.float32))
        sums = tf.math.unsorted_segment_sum(points, codes, num_centroids)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(codes, tf.float32), codes, num_centroids)
        reseed_ids = uniform_ints([num_centroids], num_points, sub_seed(seed, iteration))
        reseeded = tf.gather(points, reseed_ids)
        means = sums / tf.maximum(counts, 1.0)[:, tf.newaxis]
        # An empty cluster is re-seeded: the iterations are not done yet.
        stable = tf.logical_and(moved <= tolerance, tf.reduce_all(counts > 0))
        return iteration + 1, tf.where(counts[:, tf.newaxis] > 0, means, reseeded), codes, stable

    ran, centroids, _, _ = tf.while_loop(
        lambda iteration, _, __, stable: tf.logical_and(iteration < iterations, tf.logical_not(stable)),
        step,
        (tf.constant(0), tf.convert_to_tensor(initial_centroids), tf.fill([num_points], -1), tf.constant(False)),
        maximum_iterations=iterations,
        # Iterations depend on each other anyway; running ahead would only hold more buffers.
        parallel_iterations=1,
    )
    return centroids, ran


def kmeans(
    points: tf.Tensor,
    initial_centroids: tf.Tensor,
    iterations: int,
    seed: tf.Tensor,
    sample_size: Optional[int] = None,
    view: Optional[PointView] = None,
    tolerance: float = 0.0,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """k-means warm-started from `initial_centroids`: Lloyd's iterations on a uniform sample of at
    most `sample_size` points, then every point assigned to its nearest centroid.

    Empty clusters are re-seeded; with N <= `sample_size` it is full-data k-means.

    Args:
      points: [N, d].
      initial_centroids: [K, d'], where Lloyd's iterations start.
      iterations: the most Lloyd iterations.
      seed: int32 [2] stateless seed (the sample, and the re-seeding of empty clusters).
      sample_size: the most points the iterations read. Default None: `default_sample_size(K)`,
        1024 per centroid (the centroids of such a sample are as good as full-data ones, and the
        cost of the iterations stops growing with N).
      view: optional `view(rows [R, d], row_ids [R]) -> [R, d']`: cluster this view of the
        points (a column half, a residual), computed chunk by chunk (see `nearest_centroid`).
      tolerance: stop once an iteration reassigns at most this fraction of the sample (default 0).

    Returns:
      (centroids [K, d'], codes [N] int32), codes the nearest centroid of each point under the
      returned centroids.
    """
    size = _resolved_sample_size(sample_size, initial_centroids.shape[0])
    sample = _training_sample(points, size, sub_seed(seed, _SAMPLE_STREAM), view)
    centroids, _ = _lloyd(sample, initial_centroids, iterations, seed, tolerance)
    return centroids, nearest_centroid(points, centroids, view)


def product_split(dim: int) -> int:
    """Width of the first half in product quantization (the second takes the rest: odd d works).

    Args:
      dim: d, the embedding width (at least 2).
    """
    if dim < 2:
        raise ValueError(f"Product quantization needs an embedding width >= 2; got {dim}.")
    return dim // 2


def _warm_or_random_start(points: tf.Tensor, codebook, warm_start, seed: tf.Tensor) -> tf.Tensor:
    """The previous codebook when `warm_start` (a bool tensor), else k-means++ seeds."""
    codebook = tf.convert_to_tensor(codebook)
    return tf.cond(warm_start, lambda: codebook, lambda: kmeans_plus_plus(points, codebook.shape[0], seed))


def two_codebook_quantize(
    embeddings: tf.Tensor,
    codebook1: tf.Tensor,
    codebook2: tf.Tensor,
    quantizer: str,
    iterations: int,
    seed: tf.Tensor,
    warm_start=True,
    sample_size: Optional[int] = None,
    train=True,
    tolerance: float = 0.0,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Product ("pq") or residual ("rvq") quantization with two codebooks of K codewords.

    pq: codebook 1 clusters the first half of every vector, codebook 2 the second half.
    rvq: codebook 1 clusters the full vectors, codebook 2 the residuals x - c¹[code1] (full width).

    Each codebook is a `kmeans` on a sample, then one chunked assignment of every class; halves
    and residuals are computed chunk by chunk (and for the sampled rows), never as a copy of the
    whole table: peak memory beyond the table is O(N) integers plus O(sample_size·d) floats.

    Args:
      embeddings: [N, d] class embeddings.
      codebook1, codebook2: the current codebooks [K, d1], [K, d2] (pq: d1 + d2 = d; rvq: d each).
      quantizer: "pq" or "rvq".
      iterations: the most Lloyd iterations per codebook.
      seed: int32 [2] stateless seed.
      warm_start: a bool (tensor): start from the given codebooks, else k-means++ (default True).
      sample_size: points each codebook's `kmeans` trains on (default `default_sample_size(K)`).
      train: a bool (tensor): run k-means (default True); False only assigns every class to the
        given codebooks (codebooks learned by gradient, `MIDX(learn_codebooks=True)`).
      tolerance: as `kmeans`', per codebook (default 0.0).

    Returns:
      (codebook1, codebook2, codes1 [N], codes2 [N]).
    """
    warm_start = tf.convert_to_tensor(warm_start, tf.bool)

    def fit(view, codebook, index):
        codebook = tf.convert_to_tensor(codebook)
        size = _resolved_sample_size(sample_size, codebook.shape[0])
        kmeans_seed = sub_seed(seed, index)

        def trained():
            sample = _training_sample(embeddings, size, sub_seed(kmeans_seed, _SAMPLE_STREAM), view)
            initial = _warm_or_random_start(sample, codebook, warm_start, sub_seed(seed, 10 + index))
            return _lloyd(sample, initial, iterations, kmeans_seed, tolerance)[0]

        if isinstance(train, bool):
            centroids = trained() if train else codebook
        else:
            centroids = tf.cond(tf.convert_to_tensor(train, tf.bool), trained, lambda: codebook)
        return centroids, nearest_centroid(embeddings, centroids, view)

    if quantizer == "pq":
        split = product_split(embeddings.shape[1])
        c1, k1 = fit(lambda rows, _: rows[:, :split], codebook1, 1)
        c2, k2 = fit(lambda rows, _: rows[:, split:], codebook2, 2)
    elif quantizer == "rvq":
        c1, k1 = fit(None, codebook1, 1)

        def residual(rows, row_ids):
            return rows - tf.gather(c1, tf.gather(k1, row_ids))

        c2, k2 = fit(residual, codebook2, 2)
    else:
        raise ValueError(f"`quantizer` must be 'pq' or 'rvq'; got {quantizer!r}.")
    return c1, c2, k1, k2


def reconstruct(codebook1, codebook2, codes1, codes2, quantizer: str) -> tf.Tensor:
    """The quantized embeddings q̂ = [c¹; c²] (pq) or c¹ + c² (rvq).

    Args:
      codebook1, codebook2: [K, d1] and [K, d2].
      codes1, codes2: [N] (or any shape) int32 codeword of each class in each codebook.
      quantizer: "pq" or "rvq".
    """
    first, second = tf.gather(codebook1, codes1), tf.gather(codebook2, codes2)
    return tf.concat([first, second], axis=-1) if quantizer == "pq" else first + second

"""Draws from discrete distributions without a categorical over the catalogue: inverse-CDF draws
over small rows, a branch-free bucket search, segmented scans, and Walker's alias tables.

Why not `tf.random.categorical` or `tf.searchsorted`: under XLA (and on GPU) a categorical over N
classes materializes [B, m, N] values, and `searchsorted` over N costs O(N) per draw. Everything
here costs O(log K) or O(1) per draw and keeps static shapes.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from tf_adaptive_softmax._ops.random import sub_seed, uniform, uniform_ints
from tf_adaptive_softmax._ops.xla import in_xla_context


def cumulative_over_last_axis(weights: tf.Tensor) -> tf.Tensor:
    """Inclusive cumulative sum over a small last axis K, as one matmul with a triangular matrix.

    XLA:CPU lowers `tf.cumsum` to a reduce-window that is slow for this shape; a [..., K] x [K, K]
    matmul is fast on every backend.
    """
    size = weights.shape[-1]
    upper = tf.linalg.band_part(tf.ones([size, size], weights.dtype), 0, -1)
    # A 2-D matmul: graph mode's einsum took twice as long on [B·m, 8] rows.
    flat = tf.matmul(tf.reshape(weights, [-1, size]), upper)
    return tf.reshape(flat, tf.shape(weights))


def search_buckets(cumulative: tf.Tensor, start: tf.Tensor, end: tf.Tensor, target: tf.Tensor, steps: int):
    """Smallest position p in [start, end) with cumulative[p] > target (elementwise, fixed steps).

    `cumulative` is flat and non-decreasing inside every [start, end) range. `steps` >=
    log2(longest range) + 1 iterations of a branch-free binary search: XLA-safe and O(log range)
    per draw, where `tf.searchsorted` is O(N) per draw under XLA and `stateless_categorical`
    draws one Gumbel variate per category.
    """
    shape = tf.shape(start)
    # On flat vectors: with a unit axis (one draw per query) XLA:CPU's simplifier spins for
    # minutes on the chain of gathers; flat, it compiles in about a second.
    low, high, target = tf.reshape(start, [-1]), tf.reshape(end - 1, [-1]), tf.reshape(target, [-1])
    for _ in range(steps):
        middle = (low + high) // 2
        go_left = tf.gather(cumulative, middle) > target
        high = tf.where(go_left, middle, high)
        low = tf.where(go_left, low, middle + 1)
    return tf.reshape(low, shape)


# Up to this many categories a row is searched with `tf.searchsorted`: a native binary search in
# graph mode, and under XLA one fused compare-and-count over the row (O(K) per draw, cheaper than
# log K rounds of gathers while K is small). Longer rows use `search_buckets`.
_SHORT_ROW = 128

# Under XLA, rows of several draws longer than this are counted a block of this many at a time
# (`_count_by_blocks`).
_COUNT_BLOCK = 8


def _count_by_blocks(cdf: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """`tf.searchsorted(cdf, target, side="right")` for [R, K] rows and [R, c] targets, counted in
    two levels: the block ends of `_COUNT_BLOCK` entries at or below the target, then the entries
    of the first block that passes it: 2·8 compares a target where XLA's searchsorted makes K.

    Rows are padded to whole blocks with their last entry: a target below it counts none of the
    padding, one at or past it counts the whole row, as searchsorted does.
    """
    size = cdf.shape[-1]
    blocks = -(-size // _COUNT_BLOCK)
    padded = tf.concat([cdf, tf.repeat(cdf[:, -1:], blocks * _COUNT_BLOCK - size, axis=1)], axis=1)
    padded = tf.reshape(padded, [-1, blocks, _COUNT_BLOCK])
    passed = tf.reduce_sum(tf.cast(padded[:, tf.newaxis, :, -1] <= target[..., tf.newaxis], tf.int32), axis=-1)
    block = tf.minimum(passed, blocks - 1)  # all blocks pass only a target at or past the row's total
    inside = tf.gather(padded, block, batch_dims=1)  # [R, c, S]
    found = block * _COUNT_BLOCK + tf.reduce_sum(tf.cast(inside <= target[..., tf.newaxis], tf.int32), axis=-1)
    return tf.minimum(found, size)


def draw_from_cdf_rows(cdf: tf.Tensor, rows: Optional[tf.Tensor], u: tf.Tensor) -> tf.Tensor:
    """Inverse-CDF draws: for each entry, index k in [0, K) of row `rows` of `cdf` [R, K].

    `cdf` holds unnormalized inclusive cumulative masses; u ~ U[0, 1) has the shape of `rows`
    (or, with `rows=None`, u is [R, c]: c draws from every row). The draw is the smallest k with
    cdf[k] > u·total, so categories without mass are never returned.
    """
    size = cdf.shape[-1]
    if size is not None and size <= _SHORT_ROW:
        row_cdf = cdf if rows is None else tf.reshape(tf.gather(cdf, rows), [-1, size])
        values = u if rows is None else tf.reshape(u, [-1, 1])
        row_total = row_cdf[:, -1:]
        # u·total can round up to total. total·(1 − 2^-23) is strictly below it (the product by a
        # power of two is exact, the difference is at least one ulp) and inside the last category
        # with mass unless that one holds under 2^-23 of the row, the 24-bit uniforms' own
        # resolution. A multiply and a subtract: `nextafter` costs far more in graph mode.
        target = tf.minimum(values * row_total, row_total - row_total * (2.0**-23))
        if rows is None and size > _COUNT_BLOCK and in_xla_context():
            found = _count_by_blocks(row_cdf, target)
        else:
            found = tf.searchsorted(row_cdf, target, side="right", out_type=tf.int32)
        # Only a NaN row (a diverged model) passes every entry: draw its category 0, in range
        # (its log q is NaN, so the loss shows it), never an index that crashes a gather.
        found = tf.where(found < size, found, tf.zeros_like(found))
        return found if rows is None else tf.reshape(found, tf.shape(rows))
    if rows is None:
        rows = tf.broadcast_to(tf.range(tf.shape(u)[0])[:, tf.newaxis], tf.shape(u))
    total = cdf[:, -1]
    # Rounding of u·total can reach the end of a row; clamp to the last category with mass.
    last = tf.reduce_sum(tf.cast(cdf < total[:, tf.newaxis], tf.int32), axis=1)
    start = rows * size
    steps = max(1, math.ceil(math.log2(size))) + 1
    position = search_buckets(tf.reshape(cdf, [-1]), start, start + size, u * tf.gather(total, rows), steps)
    return tf.minimum(position - start, tf.gather(last, rows))


def segmented_cumsum(values: tf.Tensor, segments: tf.Tensor) -> tf.Tensor:
    """Inclusive cumulative sum of `values` [N] restarting at every change of `segments` [N]
    (sorted, contiguous), so the sums keep the precision of one segment rather than of the whole
    vector (a global float32 cumsum would not).

    A Hillis-Steele scan: log2(N) shifted adds, each only within a segment, run one at a time in a
    sequential loop. Unrolled, the graph executor ran the comparisons of every step at once and
    held all their masks.
    """
    size = values.shape[0]
    positions = tf.range(size)

    def step(shift, sums):
        # Rolled values wrap around; positions below the shift take nothing from them.
        same = (positions >= shift) & tf.equal(tf.roll(segments, shift, axis=0), segments)
        return shift * 2, sums + tf.where(same, tf.roll(sums, shift, axis=0), tf.zeros_like(sums))

    _, sums = tf.while_loop(lambda shift, _: shift < size, step, (tf.constant(1), values), parallel_iterations=1)
    return sums


def build_alias_table(weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Vose's alias table for non-negative `weights` (not all zero): (probability, alias)."""
    weights = np.asarray(weights, dtype=np.float64)
    n = weights.shape[0]
    scaled = weights * (n / weights.sum())
    probability = np.ones(n, dtype=np.float64)
    alias = np.arange(n, dtype=np.int64)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        probability[s] = scaled[s]
        alias[s] = g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    # Leftovers are 1 up to rounding: they keep themselves with probability 1.
    return probability.astype(np.float32), alias.astype(np.int32)


def alias_draw(probability, alias, shape, seed: tf.Tensor) -> tf.Tensor:
    """int32 draws of the given `shape` from an alias table (tensors or variables)."""
    num_columns = probability.shape[0]  # static: the exact integer draw
    column = uniform_ints(shape, int(num_columns), sub_seed(seed, 0))
    u = uniform(shape, sub_seed(seed, 1))
    keep = u < tf.gather(probability, column)
    return tf.where(keep, column, tf.gather(alias, column))

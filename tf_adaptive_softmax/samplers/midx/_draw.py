"""MIDX's draw up to the buckets, as kernels of tensors and a static layout only.

Each kernel runs as one XLA computation in every mode (`_ops/xla.Compiled`), and one compilation
serves every sampler of the same layout (each sampler compiling its own took a second). They take
tensors, never variables, and leave whatever reads per-class state of size N (the class ids,
weighted buckets' cumulative weights) to TensorFlow in `sampler.py`, which reads only the entries
it needs, also from a parameter server.

Notation (see `MIDX`): s¹ = z¹C¹ᵀ, s² = z²C²ᵀ [B, K] the query's codeword scores, W[k1, k2] the
bucket weights, log Z the normalizer, and the batch mixture's bucket masses M[k1, k2].
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import tensorflow as tf

from tf_adaptive_softmax._ops.discrete import cumulative_over_last_axis, draw_from_cdf_rows
from tf_adaptive_softmax._ops.random import sub_seed, uniform, uniform_ints
from tf_adaptive_softmax._ops.xla import Compiled

#: Codewords per block of the second-stage draw (`draw_buckets`): 8 measured fastest of 4, 8, 16.
BLOCK = 8


class BucketDraw(NamedTuple):
    """`draw_buckets`: every draw's bucket as its range [start, end) of `sorted_ids`, the
    in-bucket variate (an integer offset below end − start, or a uniform for the weighted search),
    log q of the draw's codewords (s¹_k1 + s²_k2 − log Z) and the query's scores and log Z."""

    start: tf.Tensor
    end: tf.Tensor
    in_bucket: tf.Tensor
    codeword_log_q: tf.Tensor
    scores1: tf.Tensor
    scores2: tf.Tensor
    log_normalizer: tf.Tensor


class BlockMasses(NamedTuple):
    """`block_masses`: [B, K, G] block masses, the [B, G, S] query and [K, G, S] bucket
    factors they are made of, the log row masses [B, K], and whether any row underflowed."""

    masses: tf.Tensor
    query: tf.Tensor
    bucket: tf.Tensor
    log_rows: tf.Tensor
    underflow: tf.Tensor


class Layout(NamedTuple):
    """What a draw's shapes and branches depend on, besides its tensors."""

    num_classes: int
    split: Optional[int]  # product quantization's first half width; None for rvq
    weighted: bool


def codeword_scores(queries, codebook1, codebook2, split: Optional[int]):
    """(s¹ [B, K], s² [B, K]): the query's scores against each codebook (its halves under pq)."""
    first, second = (queries, queries) if split is None else (queries[:, :split], queries[:, split:])
    return (
        tf.matmul(first, tf.convert_to_tensor(codebook1), transpose_b=True),
        tf.matmul(second, tf.convert_to_tensor(codebook2), transpose_b=True),
    )


def codeword_log_q(scores1, scores2, log_normalizer, first, second):
    """log P(k1, k2 | z) = s¹_k1 + s²_k2 − log Z; log q of a class adds its log w_i."""
    return (
        tf.gather(scores1, first, batch_dims=1)
        + tf.gather(scores2, second, batch_dims=1)
        - log_normalizer[:, tf.newaxis]
    )


def rows_from_log(log_rows):
    """(exp(rows − their max), log of each row's sum): unnormalized masses over the last axis,
    stable at any scale; an all-empty row stays 0 with log sum −inf."""
    top = tf.reduce_max(log_rows, axis=-1, keepdims=True)
    top = tf.where(tf.math.is_finite(top), top, tf.zeros_like(top))
    masses = tf.exp(log_rows - top)
    return masses, top[..., 0] + tf.math.log(tf.reduce_sum(masses, axis=-1))


def draw_buckets(queries, seed, codebook1, codebook2, log_bucket, offsets, num_samples: int, layout: Layout):
    """Each draw's codewords (k1, k2) and bucket, from tensors only (see `MIDX._draw`).

    The second codeword is drawn in two steps over blocks of `BLOCK` codewords: a block of
    row k1 by its mass, then a codeword inside it. The block masses of every (query, k1) are
    one [B, K, K / S] einsum (B·K² products), and each draw reads 2·S values, where a CDF
    table over whole rows costs a [B, K, K] x [K, K] matmul (B·K³) and K values a draw.
    Rows whose mass underflows in that linear form (codeword scores spanning more than
    ~87 nats) are drawn from the exact log-space table instead.
    """
    num_codewords = log_bucket.shape[0]
    scores1, scores2 = codeword_scores(queries, codebook1, codebook2, layout.split)
    shape = tf.stack([tf.shape(queries)[0], num_samples])
    uniforms = uniform(tf.concat([[4 if layout.weighted else 3], shape], 0), seed)
    blocks = block_masses(scores2, log_bucket)
    first, second, log_normalizer = tf.cond(
        blocks.underflow,
        lambda: codewords_from_log_table(scores1, scores2, log_bucket, shape, uniforms),
        lambda: codewords_from_blocks(scores1, blocks, shape, uniforms),
    )
    bucket = first * num_codewords + second
    start = tf.gather(offsets, bucket)
    end = tf.gather(offsets, bucket + 1)
    # Empty buckets have zero mass; only non-finite queries (NaN scores) can select one. Keep
    # such draws in range (their log q is NaN, so the loss shows it) instead of crashing.
    start = tf.minimum(start, layout.num_classes - 1)
    end = tf.maximum(end, start + 1)
    if layout.weighted:
        in_bucket = uniforms[3]
    else:
        in_bucket = uniform_ints(tf.shape(bucket), end - start, sub_seed(seed, 3))
    log_q = codeword_log_q(scores1, scores2, log_normalizer, first, second)
    return BucketDraw(start, end, in_bucket, log_q, scores1, scores2, log_normalizer)


#: `draw_buckets` as one XLA computation in every mode, shared by all samplers.
DRAW_BUCKETS = Compiled(draw_buckets)


def first_marginal(scores1, scores2, log_bucket):
    """Unnormalized log P(k1 | z) [B, K] and log Z [B].

    The row masses Σ_k2 exp(s²_k2)·W[k1, k2] are the draw's block masses summed
    (`block_masses`: B·K² products, no [B, K, K] tensor). When that underflows a whole row that
    holds classes (its codewords score > 87 nats below the best), the rows are redone exactly in
    log space.
    """
    blocks = block_masses(scores2, log_bucket)
    holds_classes = tf.reduce_max(log_bucket, axis=1) > -np.inf  # [K]

    def exact_rows():
        # Empty rows get −inf outside the logs: log(0) inside would turn the gradient (learned
        # codebooks differentiate this) into 0·inf = NaN.
        filled = tf.where(holds_classes[:, tf.newaxis], log_bucket, tf.zeros_like(log_bucket))
        log_rows = tf.reduce_logsumexp(scores2[:, tf.newaxis, :] + filled[tf.newaxis], axis=2)
        return tf.where(holds_classes[tf.newaxis], log_rows, tf.fill(tf.shape(log_rows), -np.inf))

    log_first = scores1 + tf.cond(blocks.underflow, exact_rows, lambda: blocks.log_rows)
    return log_first, tf.reduce_logsumexp(log_first, axis=1)


def draw_shared_buckets(queries, seed, codebook1, codebook2, log_bucket, offsets, num_samples: int, layout: Layout):
    """m draws from the batch mixture up to their buckets, from tensors only (`MIDX._sample_shared`):
    (start, end, in-bucket variate, log M of each draw's bucket)."""
    k = log_bucket.shape[0]
    scores1, scores2 = codeword_scores(queries, codebook1, codebook2, layout.split)
    _, log_normalizer = first_marginal(scores1, scores2, log_bucket)
    log_mixture = tf.reshape(log_bucket_mixture(scores1, scores2, log_normalizer), [-1])  # [K²]
    table, log_rows = rows_from_log(tf.reshape(log_mixture, [k, k]) + log_bucket)  # bucket masses M·W
    uniforms = uniform([3, num_samples], seed)
    row_mass = tf.exp(log_rows - tf.reduce_max(log_rows))
    first = draw_from_cdf_rows(cumulative_over_last_axis(row_mass[tf.newaxis]), None, uniforms[:1])[0]
    bucket = first * k + draw_from_cdf_rows(cumulative_over_last_axis(table), first, uniforms[1])
    start = tf.minimum(tf.gather(offsets, bucket), layout.num_classes - 1)
    end = tf.maximum(tf.gather(offsets, bucket + 1), start + 1)
    in_bucket = uniforms[2] if layout.weighted else uniform_ints(tf.shape(bucket), end - start, sub_seed(seed, 3))
    return start, end, in_bucket, tf.gather(log_mixture, bucket)


DRAW_SHARED_BUCKETS = Compiled(draw_shared_buckets)


def log_bucket_mixture(scores1, scores2, log_normalizer):
    """log M = log mean_b exp(s¹_b,k1 + s²_b,k2 − log Z_b), [K, K] (see MIDX's batch mixture): the
    [B, K, K] sum in log space, exact at any score range."""
    pairs = (scores1 - log_normalizer[:, tf.newaxis])[:, :, tf.newaxis] + scores2[:, tf.newaxis, :]
    return tf.reduce_logsumexp(pairs, axis=0) - tf.math.log(tf.cast(tf.shape(scores1)[0], tf.float32))


#: One XLA computation in every mode: graph mode would run the [B, K, K] broadcast, exp and sum
#: as separate passes.
LOG_BUCKET_MIXTURE = Compiled(log_bucket_mixture)


def block_masses(scores2, log_bucket) -> BlockMasses:
    """Masses Σ_{k2 in block g} exp(s²_k2)·W[k1, k2] of every (query, k1, block g), scaled per
    query and per row k1 (so no row's largest term underflows on the bucket side), with the
    factors that scale them back; `underflow` tells when some row that holds classes lost its
    mass to exp's range (then `codewords_from_log_table` draws)."""
    k = log_bucket.shape[0]
    size = min(BLOCK, k)
    groups = -(-k // size)
    pad = [[0, 0], [0, groups * size - k]]  # zero-mass codewords up to whole blocks
    top2 = tf.reduce_max(scores2, axis=1, keepdims=True)  # [B, 1]
    row_top = tf.reduce_max(log_bucket, axis=1)  # [K]
    holds_classes = row_top > -np.inf
    row_top = tf.where(holds_classes, row_top, tf.zeros_like(row_top))
    query_blocks = tf.reshape(tf.pad(tf.exp(scores2 - top2), pad), [-1, groups, size])  # [B, G, S]
    bucket_blocks = tf.reshape(tf.pad(tf.exp(log_bucket - row_top[:, tf.newaxis]), pad), [k, groups, size])
    masses = tf.einsum("bgs,kgs->bkg", query_blocks, bucket_blocks)  # [B, K, G]
    row_mass = tf.reduce_sum(masses, axis=-1)  # [B, K]
    underflow = tf.reduce_any((row_mass < 1e-30) & holds_classes[tf.newaxis])
    filled = tf.where(holds_classes[tf.newaxis], row_mass, tf.ones_like(row_mass))
    log_rows = tf.math.log(filled) + top2 + row_top[tf.newaxis]
    log_rows = tf.where(holds_classes[tf.newaxis], log_rows, tf.fill(tf.shape(log_rows), -np.inf))
    return BlockMasses(masses, query_blocks, bucket_blocks, log_rows, underflow)


def first_codewords(scores1, log_rows, u):
    """(k1 [B, m], log Z [B]): the first codewords drawn from P(k1 | z) ∝ exp(s¹_k1 + log_rows_k1)
    by the uniforms u [B, m], and that marginal's log normalizer."""
    log_first = scores1 + log_rows
    first_mass = tf.exp(log_first - tf.reduce_max(log_first, axis=1, keepdims=True))
    first = draw_from_cdf_rows(cumulative_over_last_axis(first_mass), None, u)
    return first, tf.reduce_logsumexp(log_first, axis=1)


def codewords_from_blocks(scores1, blocks, shape, uniforms):
    """(k1, k2, log normalizer): k1 from the first marginal, then a block of row k1, then a
    codeword inside the block (`block_masses`)."""
    k = blocks.bucket.shape[0]
    groups, size = blocks.query.shape[1], blocks.query.shape[2]
    first, log_normalizer = first_codewords(scores1, blocks.log_rows, uniforms[0])
    query_row = tf.broadcast_to(tf.range(shape[0])[:, tf.newaxis], shape)
    block_cdf = tf.reshape(cumulative_over_last_axis(blocks.masses), [-1, groups])  # [B·K, G]
    group = draw_from_cdf_rows(block_cdf, query_row * k + first, uniforms[1])  # [B, m]
    inside = tf.gather(tf.reshape(blocks.query, [-1, size]), query_row * groups + group) * tf.gather(
        tf.reshape(blocks.bucket, [-1, size]), first * groups + group
    )  # [B, m, S]
    inside_cdf = tf.reshape(cumulative_over_last_axis(inside), [-1, size])
    offset = tf.reshape(draw_from_cdf_rows(inside_cdf, None, tf.reshape(uniforms[2], [-1, 1])), shape)
    return first, group * size + offset, log_normalizer


def codewords_from_log_table(scores1, scores2, log_bucket, shape, uniforms):
    """(k1, k2, log normalizer) from every query's [K, K] table built in log space: exact at
    any score range, and B·K³ work (the block draw's fallback)."""
    k = log_bucket.shape[0]
    table, log_rows = rows_from_log(scores2[:, tf.newaxis, :] + log_bucket[tf.newaxis])  # [B, K, K]
    first, log_normalizer = first_codewords(scores1, log_rows, uniforms[0])
    table_cdf = tf.reshape(cumulative_over_last_axis(table), [-1, k])  # [B·K, K]
    query_row = tf.broadcast_to(tf.range(shape[0])[:, tf.newaxis], shape)
    second = draw_from_cdf_rows(table_cdf, query_row * k + first, uniforms[1])
    return first, second, log_normalizer

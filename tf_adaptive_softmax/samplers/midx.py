"""MIDX: the inverted multi-index sampler (Chen et al., 2025).

Two codebooks of K codewords quantize the class embeddings (product quantization: one codebook per
half of the vector; residual quantization: the second codebook clusters what the first leaves).
Class i lands in bucket (k1, k2) and is approximated by q̂_i ([c¹_k1; c²_k2] or c¹_k1 + c²_k2).
The proposal is the softmax over the quantized logits, times an optional per-class weight w_i:

    q(i | z) = exp(<z, q̂_i>) · w_i / Z(z),     Z(z) = Σ_{k1,k2} exp(s¹_k1 + s²_k2) · W[k1, k2]

with s¹ = z¹C¹ᵀ, s² = z²C²ᵀ (z¹ = z² = z for rvq) and W[k1, k2] = Σ_{i in bucket} w_i. It factors
as P(k1 | z) · P(k2 | k1, z) · P(i | k1, k2): two categoricals over K codewords, then a draw inside
the bucket, uniform (w_i = 1, "MIDX-uniform") or proportional to popularity (w_i = count_i^power,
"MIDX-unigram" / MIDX-pop). With `include_bias=True` the model's class bias joins the weight
(w_i ·= exp(b_i)), which makes q closer to the model's softmax when the bias matters.

Cost per query O(K·d + K²) and per draw O(K) for the first codeword's inverse CDF plus 2·8 + K/8
values for the second (drawn a block of 8 codewords at a time; `MIDX._draw`), + O(log bucket size)
for weighted buckets, independent of N. The draw up to the bucket runs as one XLA computation in
every mode, graph mode and eager included (`_ops/xla.py`): about a second to compile once per
layout and shape, then 2.3 ms instead of 5.5 ms per 32,768 draws on 2 CPU cores. State: codebooks,
the bucket of every class and the class ids sorted by bucket (8 bytes per class; weighted buckets
add a log-weight and a cumulative weight, 16 bytes), bucket offsets [K² + 1] and log bucket weights
[K, K]. Before the first `refresh` everything sits in one bucket: q is uniform. A refresh trains
k-means on a sample of the classes (1024 per codeword by default) and assigns every class once:
about two passes over the table.

Learned codebooks (`learn_codebooks=True`, the paper's codeword learning): the codewords become
trainable variables, trained by the model's optimizer on an auxiliary loss that the sampler's
owner (the loss layer, the compile adapter through it, `AdaptiveRetrieval`, or a custom loop via
`auxiliary_loss`) adds in training:

    λ · ( −Σ_j p̂_j log q_j + Σ_j p̂_j log p̂_j  +  ρ · mean_t ‖w_{y_t} − q̂_{y_t}‖² )

over the step's candidates j (positives and drawn negatives), with p̂ = softmax of the loss's own
corrected logits, the self-normalized importance estimate of the model's softmax p there. Its
gradient is an estimate of ∇ KL(p‖q) over all N classes at O(B·(T + m) + B·K²) cost (log q_j is
exact: its normalizer sums the K² buckets), so nothing grows with N. The direction is KL(p‖q),
the forward KL: the sampled-softmax estimator's bias and variance grow where q is small while p
is large (its weights are p/q), and the forward KL penalizes exactly that (mass-covering), while
KL(q‖p) would let q drop modes of p. The reconstruction term (weight ρ) keeps codewords near the
classes they stand for, so that re-assignment stays meaningful. The first refresh initialises the
codebooks by k-means; later refreshes keep them and only re-assign every class to its nearest
codewords (one pass over the table, no Lloyd iterations). The gradient reaches only the
codewords: queries, class embeddings and targets are held constant. Weight decay in the
optimizer (AdamW) also shrinks the codewords.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_adaptive_softmax import _validation, quantization
from tf_adaptive_softmax._keras import register_serializable
from tf_adaptive_softmax._ops.discrete import (
    cumulative_over_last_axis,
    draw_from_cdf_rows,
    search_buckets,
)
from tf_adaptive_softmax._ops.random import sub_seed, uniform, uniform_ints
from tf_adaptive_softmax._ops.xla import Compiled
from tf_adaptive_softmax.samplers.base import Sampler
from tf_adaptive_softmax.samplers.unigram import _check_counts, _unigram_log_probs

__all__ = ["MIDX", "default_num_codewords"]

_QUANTIZERS = ("pq", "rvq")
_RESIDUALS = ("uniform", "unigram")

#: ρ, the reconstruction term's weight in the learned codebooks' loss (see `MIDX`).
_DEFAULT_RECONSTRUCTION_WEIGHT = 0.1

#: Codewords per block of the second-stage draw (`MIDX._draw`): 8 measured fastest of 4, 8, 16.
_BLOCK = 8


class _BucketDraw(NamedTuple):
    """`_draw_buckets`: every draw's bucket as its range [start, end) of `sorted_ids`, the
    in-bucket variate (an integer offset below end − start, or a uniform for the weighted search),
    log q of the draw's codewords (s¹_k1 + s²_k2 − log Z) and the query's scores and log Z."""

    start: tf.Tensor
    end: tf.Tensor
    in_bucket: tf.Tensor
    codeword_log_q: tf.Tensor
    scores1: tf.Tensor
    scores2: tf.Tensor
    log_normalizer: tf.Tensor


class _BlockMasses(NamedTuple):
    """`_block_masses`: [B, K, G] block masses, the [B, G, S] query and [K, G, S] bucket
    factors they are made of, the log row masses [B, K], and whether any row underflowed."""

    masses: tf.Tensor
    query: tf.Tensor
    bucket: tf.Tensor
    log_rows: tf.Tensor
    underflow: tf.Tensor


#: The range of `default_num_codewords` (before its cap at N).
_DEFAULT_CODEWORDS_RANGE = (16, 64)


def _cumulative_within_buckets(weights: tf.Tensor, buckets: tf.Tensor) -> tf.Tensor:
    """Inclusive cumulative sum of `weights` [N] restarting at every change of `buckets` [N]
    (sorted, contiguous), so the sums keep the precision of one bucket rather than of the whole
    catalogue (a global float32 cumsum would not).

    A Hillis-Steele scan: log2(N) shifted adds, each only within a bucket, run one at a time in a
    sequential loop (the same sums as `_ops.discrete.segmented_cumsum`). Unrolled, the graph
    executor runs the bucket comparisons of every step at once: +0.8 GB at N = 10^7.
    """
    size = weights.shape[0]
    positions = tf.range(size)

    def step(shift, sums):
        # Rolled values wrap around; positions below the shift take nothing from them.
        same_bucket = (positions >= shift) & tf.equal(tf.roll(buckets, shift, axis=0), buckets)
        return shift * 2, sums + tf.where(same_bucket, tf.roll(sums, shift, axis=0), tf.zeros_like(sums))

    _, sums = tf.while_loop(lambda shift, _: shift < size, step, (tf.constant(1), weights), parallel_iterations=1)
    return sums


# -- the draw kernel ---------------------------------------------------------------------------
# Functions of tensors and a static `_Layout` only, so that one XLA-compiled kernel serves every
# sampler of the same layout (`_DRAW_BUCKETS`): each sampler compiling its own took a second.


class _Layout(NamedTuple):
    """What a draw's shapes and branches depend on, besides its tensors."""

    num_classes: int
    split: Optional[int]  # product quantization's first half width; None for rvq
    weighted: bool


def _codeword_scores(queries, codebook1, codebook2, split: Optional[int]):
    """(s¹ [B, K], s² [B, K]): the query's scores against each codebook (its halves under pq)."""
    first, second = (queries, queries) if split is None else (queries[:, :split], queries[:, split:])
    return (
        tf.matmul(first, tf.convert_to_tensor(codebook1), transpose_b=True),
        tf.matmul(second, tf.convert_to_tensor(codebook2), transpose_b=True),
    )


def _codeword_log_q(scores1, scores2, log_normalizer, first, second):
    """log P(k1, k2 | z) = s¹_k1 + s²_k2 − log Z; log q of a class adds its log w_i."""
    return (
        tf.gather(scores1, first, batch_dims=1)
        + tf.gather(scores2, second, batch_dims=1)
        - log_normalizer[:, tf.newaxis]
    )


def _rows_from_log(log_rows):
    """(exp(rows − their max), log of each row's sum): unnormalized masses over the last axis,
    stable at any scale; an all-empty row stays 0 with log sum −inf."""
    top = tf.reduce_max(log_rows, axis=-1, keepdims=True)
    top = tf.where(tf.math.is_finite(top), top, tf.zeros_like(top))
    masses = tf.exp(log_rows - top)
    return masses, top[..., 0] + tf.math.log(tf.reduce_sum(masses, axis=-1))


def _draw_buckets(queries, seed, codebook1, codebook2, log_bucket, offsets, num_samples: int, layout: _Layout):
    """Each draw's codewords (k1, k2) and bucket, from tensors only (see `MIDX._draw`).

    The second codeword is drawn in two steps over blocks of `_BLOCK` codewords: a block of
    row k1 by its mass, then a codeword inside it. The block masses of every (query, k1) are
    one [B, K, K / S] einsum (B·K² products), and each draw reads 2·S values, where a CDF
    table over whole rows costs a [B, K, K] x [K, K] matmul (B·K³) and K values a draw.
    Rows whose mass underflows in that linear form (codeword scores spanning more than
    ~87 nats) are drawn from the exact log-space table instead.
    """
    num_codewords = log_bucket.shape[0]
    scores1, scores2 = _codeword_scores(queries, codebook1, codebook2, layout.split)
    shape = tf.stack([tf.shape(queries)[0], num_samples])
    uniforms = uniform(tf.concat([[4 if layout.weighted else 3], shape], 0), seed)
    blocks = _block_masses(scores2, log_bucket)
    first, second, log_normalizer = tf.cond(
        blocks.underflow,
        lambda: _codewords_from_log_table(scores1, scores2, log_bucket, shape, uniforms),
        lambda: _codewords_from_blocks(scores1, blocks, shape, uniforms),
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
    codeword_log_q = _codeword_log_q(scores1, scores2, log_normalizer, first, second)
    return _BucketDraw(start, end, in_bucket, codeword_log_q, scores1, scores2, log_normalizer)


#: `_draw_buckets` as one XLA computation in every mode, shared by all samplers.
_DRAW_BUCKETS = Compiled(_draw_buckets)


def _block_masses(scores2, log_bucket) -> _BlockMasses:
    """Masses Σ_{k2 in block g} exp(s²_k2)·W[k1, k2] of every (query, k1, block g), scaled per
    query and per row k1 (so no row's largest term underflows on the bucket side), with the
    factors that scale them back; `underflow` tells when some row that holds classes lost its
    mass to exp's range (then `_codewords_from_log_table` draws)."""
    k = log_bucket.shape[0]
    size = min(_BLOCK, k)
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
    return _BlockMasses(masses, query_blocks, bucket_blocks, log_rows, underflow)


def _first_codewords(scores1, log_rows, u):
    """(k1 [B, m], log Z [B]): the first codewords drawn from P(k1 | z) ∝ exp(s¹_k1 + log_rows_k1)
    by the uniforms u [B, m], and that marginal's log normalizer."""
    log_first = scores1 + log_rows
    first_mass = tf.exp(log_first - tf.reduce_max(log_first, axis=1, keepdims=True))
    first = draw_from_cdf_rows(cumulative_over_last_axis(first_mass), None, u)
    return first, tf.reduce_logsumexp(log_first, axis=1)


def _codewords_from_blocks(scores1, blocks, shape, uniforms):
    """(k1, k2, log normalizer): k1 from the first marginal, then a block of row k1, then a
    codeword inside the block (`_block_masses`)."""
    k = blocks.bucket.shape[0]
    groups, size = blocks.query.shape[1], blocks.query.shape[2]
    first, log_normalizer = _first_codewords(scores1, blocks.log_rows, uniforms[0])
    query_row = tf.broadcast_to(tf.range(shape[0])[:, tf.newaxis], shape)
    block_cdf = tf.reshape(cumulative_over_last_axis(blocks.masses), [-1, groups])  # [B·K, G]
    group = draw_from_cdf_rows(block_cdf, query_row * k + first, uniforms[1])  # [B, m]
    inside = tf.gather(tf.reshape(blocks.query, [-1, size]), query_row * groups + group) * tf.gather(
        tf.reshape(blocks.bucket, [-1, size]), first * groups + group
    )  # [B, m, S]
    inside_cdf = tf.reshape(cumulative_over_last_axis(inside), [-1, size])
    offset = tf.reshape(draw_from_cdf_rows(inside_cdf, None, tf.reshape(uniforms[2], [-1, 1])), shape)
    return first, group * size + offset, log_normalizer


def _codewords_from_log_table(scores1, scores2, log_bucket, shape, uniforms):
    """(k1, k2, log normalizer) from every query's [K, K] table built in log space: exact at
    any score range, and B·K³ work (the block draw's fallback)."""
    k = log_bucket.shape[0]
    table, log_rows = _rows_from_log(scores2[:, tf.newaxis, :] + log_bucket[tf.newaxis])  # [B, K, K]
    first, log_normalizer = _first_codewords(scores1, log_rows, uniforms[0])
    table_cdf = tf.reshape(cumulative_over_last_axis(table), [-1, k])  # [B·K, K]
    query_row = tf.broadcast_to(tf.range(shape[0])[:, tf.newaxis], shape)
    second = draw_from_cdf_rows(table_cdf, query_row * k + first, uniforms[1])
    return first, second, log_normalizer


def default_num_codewords(num_classes: int, embedding_dim: int | None = None) -> int:
    """The codebook size K that `MIDX` uses when `num_codewords` is None.

    K is the power of two nearest √N / 2 (on a log scale: K² ≈ N / 4 buckets), clipped to
    [16, 64] and to N:

        K = min(N, clip(2^⌊(⌊log2 N⌋ − 1) / 2⌋, 16, 64))

    that is 16 below 2,048 classes, 32 from 2,048 to 8,191 and 64 from 8,192 on (N itself when
    N < 16). Chosen from the sweep in `benchmarks/num_codewords.py` (K = 16…256 at N = 10^4,
    10^5, 10^6 on the synthetic teacher; `benchmarks/results/num_codewords.md`): up to K = 64 a
    larger K cuts KL(p‖q) and the trained model's test cross-entropy at little cost. Above 64 the
    draw cost grows as B·K³ (per query, the second stage's K cumulative sums over K buckets are
    one [K, K] matmul: about 10, 25 and 120 ms per batch of 256 at K = 64, 128, 256, whatever N)
    while the test cross-entropy gained at most 0.015 nats at N = 10^4, and 0.02 (K = 128) to
    0.07 (K = 256) at N = 10^5. The refresh cost grows only slowly with K. Pass
    `num_codewords=128` or 256 for catalogues of 10^5 classes and more when the step time allows
    (KL 2.0, 1.7, 1.2 nats at K = 64, 128, 256 at N = 10^6).

    Args:
      num_classes: N.
      embedding_dim: d (optional, checked, then unused): at N = 10^5 a wider embedding (d = 64
        against 32) raised the KL at K <= 64, but the draw cost that caps K does not depend on d.

    Example:
        >>> from tf_adaptive_softmax.samplers.midx import default_num_codewords
        >>> [default_num_codewords(n) for n in (10, 1_000, 5_000, 10_000, 1_000_000)]
        [10, 16, 32, 64, 64]
    """
    num_classes = _validation.check_positive_int(num_classes, "num_classes")
    if embedding_dim is not None:
        _validation.check_positive_int(embedding_dim, "embedding_dim")
    low, high = _DEFAULT_CODEWORDS_RANGE
    exponent = max(num_classes.bit_length() - 2, 0) // 2  # ⌊(⌊log2 N⌋ − 1) / 2⌋ for N >= 2
    return min(num_classes, max(low, min(high, 1 << exponent)))


@register_serializable
class MIDX(Sampler):
    """Inverted multi-index sampler over two codebooks of `num_codewords` codewords.

    Args:
      num_classes: N.
      num_codewords: K codewords per codebook (K² buckets); must be <= N. Default None:
        `default_num_codewords(N)`, the power of two nearest √N / 2 clipped to [16, 64] and to
        N (16 below 2,048 classes, 32 below 8,192, 64 from 8,192 on), from the sweep in
        `benchmarks/num_codewords.py`. `get_config` records the resolved K, so a saved sampler
        reloads with the same codebook size.
      quantizer: "pq" (product: halves of the vector; odd widths split d//2 + the rest) or "rvq"
        (residual: both codebooks full width).
      residual: "uniform" (uniform inside a bucket) or "unigram" (∝ count^power inside a bucket).
      counts: per-class counts, required for residual="unigram".
      power: exponent on the counts.
      include_bias: fold the model's class bias into the in-bucket weights (exp(b_i)).
      kmeans_iterations: Lloyd iterations per refresh (warm-started from the previous codebooks).
      kmeans_sample_size: classes each codebook's Lloyd iterations read per refresh (a uniform
        sample; every class is then assigned to its nearest codeword once). Default None:
        `quantization.default_sample_size(K)`, 1024 per codeword (65,536 at K = 64): with that
        sample the proposal's KL(p‖q) to the softmax matched full-data k-means on the synthetic
        teacher at N = 10^5 and 10^6 (a quarter of it lost 0.08 nats with rvq at 10^6), and a
        refresh costs about two passes over the classes instead of one per Lloyd iteration (at
        N = 10^7, d = 64: seconds instead of minutes). Catalogues of at most this many classes
        train on all of them, exactly as without sampling.
      learn_codebooks: train the codewords by gradient on the KL loss above (default False:
        k-means at every refresh). The codebooks are then the sampler's only trainable weights.
      codebook_loss_weight: λ, the weight of that loss in the training loss (default 1.0).
      reconstruction_weight: ρ, the reconstruction term's weight inside it (default 0.1).
      seed: seeds the sampler's own stream (draws and k-means initialisation).

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from tf_adaptive_softmax.samplers import MIDX
        >>> sampler = MIDX(1000, num_codewords=8, quantizer="rvq", seed=0)
        >>> _ = sampler.refresh(np.random.default_rng(0).normal(size=(1000, 16)).astype("float32"))
        >>> ids, log_q = sampler.sample(tf.random.normal([4, 16]), num_samples=32)
        >>> ids.shape, sampler.bucket_sizes.shape
        (TensorShape([4, 32]), TensorShape([8, 8]))

    Learned codebooks in a loss layer (the layer adds the auxiliary loss in training):

        >>> import tf_adaptive_softmax as tfas
        >>> learned = MIDX(1000, num_codewords=8, learn_codebooks=True, seed=0)
        >>> output = tfas.AdaptiveSampledSoftmaxLoss(1000, learned, num_samples=16)
        >>> output.build_for_dim(16); _ = output.refresh_sampler()
        >>> with tf.GradientTape() as tape:
        ...     loss = tf.reduce_mean(output((tf.random.normal([4, 16]), tf.constant([1, 2, 3, 4])), training=True))
        >>> [g is not None for g in tape.gradient(loss, learned.trainable_weights)]
        [True, True]
    """

    adaptive = True
    reads_table_in_blocks = True

    def __init__(
        self,
        num_classes: int,
        num_codewords: int | None = None,
        quantizer: str = "rvq",
        residual: str = "uniform",
        counts: Optional[Sequence[float]] = None,
        power: float = 1.0,
        include_bias: bool = False,
        kmeans_iterations: int = 10,
        kmeans_sample_size: Optional[int] = None,
        learn_codebooks: bool = False,
        codebook_loss_weight: float = 1.0,
        reconstruction_weight: float = _DEFAULT_RECONSTRUCTION_WEIGHT,
        seed: Optional[int] = None,
        **kwargs,
    ):
        self.learn_codebooks = bool(learn_codebooks)
        # Only the codebooks are trainable (every other state variable is created non-trainable).
        kwargs["trainable"] = self.learn_codebooks
        super().__init__(num_classes=num_classes, seed=seed, **kwargs)
        self.has_auxiliary_loss = self.learn_codebooks
        self.codebook_loss_weight = _validation.check_nonnegative_float(codebook_loss_weight, "codebook_loss_weight")
        self.reconstruction_weight = _validation.check_nonnegative_float(reconstruction_weight, "reconstruction_weight")
        if num_codewords is None:
            num_codewords = default_num_codewords(self.num_classes)
        self.num_codewords = _validation.check_positive_int(num_codewords, "num_codewords")
        if self.num_codewords > self.num_classes:
            raise ValueError(f"`num_codewords` (K={self.num_codewords}) must be <= num_classes ({self.num_classes}).")
        if quantizer not in _QUANTIZERS:
            raise ValueError(f"`quantizer` must be one of {_QUANTIZERS}; got {quantizer!r}.")
        if residual not in _RESIDUALS:
            raise ValueError(f"`residual` must be one of {_RESIDUALS}; got {residual!r}.")
        self.quantizer = quantizer
        self.residual = residual
        self.power = float(power)
        self.include_bias = bool(include_bias)
        self.kmeans_iterations = _validation.check_positive_int(kmeans_iterations, "kmeans_iterations")
        if kmeans_sample_size is not None:
            kmeans_sample_size = _validation.check_positive_int(kmeans_sample_size, "kmeans_sample_size")
            if kmeans_sample_size < self.num_codewords:
                raise ValueError(
                    f"`kmeans_sample_size` ({kmeans_sample_size}) must be >= num_codewords ({self.num_codewords})."
                )
        self.kmeans_sample_size = kmeans_sample_size
        self._static_log_weight = None
        self._static_log_weight_tensor = None
        self._counts = None
        if residual == "unigram":
            if counts is None:
                raise ValueError("`counts` (per-class counts, length num_classes) is required for residual='unigram'.")
            counts = _check_counts(counts)
            if counts.size != self.num_classes:
                raise ValueError(f"`counts` has {counts.size} entries; expected num_classes={self.num_classes}.")
            self._counts = counts
            self._static_log_weight = _unigram_log_probs(counts, self.power).astype(np.float32)
        self.weighted = residual == "unigram" or self.include_bias
        # Binary-search steps that cover the largest possible bucket (all N classes).
        self._search_steps = math.ceil(math.log2(self.num_classes + 1)) + 1

    # -- state -------------------------------------------------------------------------------
    def build_state(self, embedding_dim: int) -> None:
        if self.embedding_dim is not None:
            return
        super().build_state(embedding_dim)
        n, k = self.num_classes, self.num_codewords
        if self.quantizer == "pq":
            split = quantization.product_split(embedding_dim)
            widths = (split, embedding_dim - split)
        else:
            widths = (embedding_dim, embedding_dim)
        self.split = widths[0] if self.quantizer == "pq" else None
        learned = self.learn_codebooks
        self.codebook1 = self._constant_state("codebook1", np.zeros((k, widths[0]), np.float32), "float32", learned)
        self.codebook2 = self._constant_state("codebook2", np.zeros((k, widths[1]), np.float32), "float32", learned)
        self.class_bucket = self._constant_state("class_bucket", np.zeros(n, np.int32), "int32")
        self.sorted_ids = self._constant_state("sorted_ids", np.arange(n, dtype=np.int32), "int32")
        offsets = np.full(k * k + 1, n, np.int32)
        offsets[0] = 0
        self.bucket_offsets = self._constant_state("bucket_offsets", offsets, "int32")
        initial_weight = np.zeros(n, np.float32) if self._static_log_weight is None else self._static_log_weight
        log_bucket = np.full((k, k), -np.inf, np.float32)
        log_bucket[0, 0] = np.logaddexp.reduce(initial_weight.astype(np.float64))
        self.log_bucket_weights = self._constant_state("log_bucket_weights", log_bucket, "float32")
        self.initialized = self._constant_state("initialized", False, "bool")
        if self.weighted:
            self.class_log_weight = self._constant_state("class_log_weight", initial_weight, "float32")
            cumulative = np.cumsum(np.exp(initial_weight.astype(np.float64) - initial_weight.max()))
            self.cumulative_weight = self._constant_state("cumulative_weight", cumulative.astype(np.float32), "float32")

    # -- read-only views ---------------------------------------------------------------------
    @property
    def codebooks(self):
        """(codebook1 [K, d1], codebook2 [K, d2]) as tensors."""
        return tf.identity(self.codebook1), tf.identity(self.codebook2)

    @property
    def codes(self) -> tf.Tensor:
        """int32 [N, 2]: (k1, k2) of every class."""
        bucket = tf.convert_to_tensor(self.class_bucket)
        return tf.stack([bucket // self.num_codewords, bucket % self.num_codewords], axis=1)

    @property
    def bucket_sizes(self) -> tf.Tensor:
        """int32 [K, K]: number of classes in every bucket (k1, k2)."""
        offsets = tf.convert_to_tensor(self.bucket_offsets)
        k = self.num_codewords
        return tf.reshape(offsets[1:] - offsets[:-1], [k, k])

    # -- the distribution --------------------------------------------------------------------
    def _codeword_scores(self, queries):
        """(s¹ [B, K], s² [B, K]) from the sampler's codebooks."""
        return _codeword_scores(queries, self.codebook1, self.codebook2, self.split)

    def _first_marginal(self, scores1, scores2):
        """Unnormalized log P(k1 | z) [B, K] and log Z [B].

        The row masses Σ_k2 exp(s²_k2)·W[k1, k2] are the draw's block masses summed
        (`_block_masses`: B·K² products, no [B, K, K] tensor). When that underflows a whole row
        that holds classes (its codewords score > 87 nats below the best), the rows are redone
        exactly in log space.
        """
        log_bucket = tf.convert_to_tensor(self.log_bucket_weights)
        blocks = _block_masses(scores2, log_bucket)
        holds_classes = tf.reduce_max(log_bucket, axis=1) > -np.inf  # [K]

        def exact_rows():
            # Empty rows get −inf outside the logs: log(0) inside would turn the gradient (learned
            # codebooks differentiate this) into 0·inf = NaN.
            filled = tf.where(holds_classes[:, tf.newaxis], log_bucket, tf.zeros_like(log_bucket))
            log_rows = tf.reduce_logsumexp(scores2[:, tf.newaxis, :] + filled[tf.newaxis], axis=2)
            return tf.where(holds_classes[tf.newaxis], log_rows, tf.fill(tf.shape(log_rows), -np.inf))

        log_first = scores1 + tf.cond(blocks.underflow, exact_rows, lambda: blocks.log_rows)
        return log_first, tf.reduce_logsumexp(log_first, axis=1)

    def _class_log_weight(self, ids):
        if not self.weighted:
            return 0.0
        return tf.gather(self.class_log_weight, ids)

    def _sample(self, queries, num_samples, seed):
        ids, log_q, _ = self._draw(queries, num_samples, seed)
        return ids, log_q

    def _sample_with_log_prob(self, queries, num_samples, seed, ids):
        # The draw's codeword scores and normalizer serve the given ids too: no second pass.
        sampled, log_q, (scores1, scores2, log_normalizer) = self._draw(queries, num_samples, seed)
        return sampled, log_q, self._log_q_of(scores1, scores2, log_normalizer, ids)

    def _draw(self, queries, num_samples, seed):
        """(ids [B, m], log q [B, m], (codeword scores s¹, s² [B, K], log normalizer [B])).

        The draw up to each sample's bucket (`_draw_buckets`) runs as one XLA computation in
        every mode: in graph mode its few dozen small ops cost 5.5 ms one by one against 2.6 ms
        compiled (B = 256, m = 128, K = 64, 2 CPU cores). What reads per-class state of size N
        (the class ids, weighted buckets' cumulative weights) stays outside it: TensorFlow reads
        only the entries it needs, also from a parameter server.
        """
        state = [
            tf.convert_to_tensor(variable)
            for variable in (self.codebook1, self.codebook2, self.log_bucket_weights, self.bucket_offsets)
        ]
        # The draw is not differentiated (`sample` stops its gradients): no tape records the call.
        drawn = _DRAW_BUCKETS(
            tf.stop_gradient(queries),
            seed,
            *[tf.stop_gradient(tensor) for tensor in state],
            num_samples=num_samples,
            layout=_Layout(self.num_classes, self.split, self.weighted),
        )
        if self.weighted:
            cumulative = tf.convert_to_tensor(self.cumulative_weight)
            target = drawn.in_bucket * tf.gather(cumulative, drawn.end - 1)
            position = search_buckets(cumulative, drawn.start, drawn.end, target, self._search_steps)
        else:
            position = drawn.start + drawn.in_bucket
        ids = tf.gather(self.sorted_ids, position)
        log_q = drawn.codeword_log_q + self._class_log_weight(ids)
        return ids, log_q, (drawn.scores1, drawn.scores2, drawn.log_normalizer)

    def _log_prob(self, queries, ids):
        scores1, scores2 = self._codeword_scores(queries)
        _, log_normalizer = self._first_marginal(scores1, scores2)
        return self._log_q_of(scores1, scores2, log_normalizer, ids)

    def _log_q_of(self, scores1, scores2, log_normalizer, ids):
        bucket = tf.gather(self.class_bucket, ids)
        first, second = bucket // self.num_codewords, bucket % self.num_codewords
        return _codeword_log_q(scores1, scores2, log_normalizer, first, second) + self._class_log_weight(ids)

    # -- learned codebooks -------------------------------------------------------------------
    def _auxiliary_loss(self, queries, candidate_ids, target_logits, positive_embeddings):
        """λ · (KL(p̂‖q) on the candidates + ρ · reconstruction error of the positives), [B].

        p̂ = softmax(target_logits) estimates the model's softmax p on the candidates. Its cross
        entropy against the proposal, −Σ_j p̂_j log q_j, has the gradient −Σ_j p̂_j ∇log q_j, a
        self-normalized importance estimate of ∇KL(p‖q) over all N classes: log q_j is exact
        (its normalizer Z sums the K² buckets), so nothing here grows with N. The value adds
        Σ_j p̂_j log p̂_j (no gradient), so it reads as a KL estimate in nats.
        """
        log_q = self._log_prob(queries, candidate_ids)
        target = tf.nn.softmax(target_logits, axis=-1)
        log_target = tf.nn.log_softmax(target_logits, axis=-1)
        # A masked candidate (p̂ = 0) or a zero-weight class (log q = −inf) contributes nothing.
        kl = tf.reduce_sum(tf.math.multiply_no_nan(log_target - log_q, target), axis=-1)
        loss = kl
        if positive_embeddings is not None and self.reconstruction_weight > 0:
            positives = candidate_ids[:, : positive_embeddings.shape[1]]
            bucket = tf.gather(self.class_bucket, positives)
            quantized = quantization.reconstruct(
                self.codebook1,
                self.codebook2,
                bucket // self.num_codewords,
                bucket % self.num_codewords,
                self.quantizer,
            )
            error = tf.reduce_mean(tf.reduce_sum(tf.square(positive_embeddings - quantized), axis=-1), axis=-1)
            loss += self.reconstruction_weight * error
        return self.codebook_loss_weight * loss

    # -- refresh -----------------------------------------------------------------------------
    def _refresh(self, class_embeddings, class_bias) -> None:
        """Re-quantizes the class embeddings (warm-started k-means) and rebuilds the index.

        Runs as graph ops that compute everything first and then only `assign`, so a NaN/Inf in
        the embeddings raises before any state changes. k-means trains on `kmeans_sample_size`
        classes and then assigns every class once, reading the table chunk by chunk (halves and
        residuals included): beyond the table it holds [N] integer and float vectors and the
        sample, about 0.4 GB at N = 10^7 (`benchmarks/refresh_scale.py`).
        """
        k = self.num_codewords
        seed = sub_seed(self._next_seed(), 7)
        codebook1, codebook2, codes1, codes2 = quantization.two_codebook_quantize(
            class_embeddings,
            self.codebook1,
            self.codebook2,
            self.quantizer,
            self.kmeans_iterations,
            seed,
            warm_start=self.initialized,
            sample_size=self.kmeans_sample_size,
            # Learned codebooks: k-means only initialises them; later refreshes re-assign codes.
            train=tf.logical_not(self.initialized) if self.learn_codebooks else True,
        )
        bucket = codes1 * k + codes2
        sorted_ids = tf.argsort(bucket, stable=True)
        sizes = tf.math.unsorted_segment_sum(tf.ones_like(bucket), bucket, k * k)
        offsets = tf.concat([[0], tf.cumsum(sizes)], axis=0)
        log_weight = self._refreshed_log_weight(class_bias)
        top = tf.reduce_max(log_weight)
        weight = tf.exp(log_weight - top)
        bucket_weight = tf.math.unsorted_segment_sum(weight, bucket, k * k)
        log_bucket = tf.reshape(tf.math.log(bucket_weight) + top, [k, k])
        if self.weighted:
            cumulative = _cumulative_within_buckets(tf.gather(weight, sorted_ids), tf.gather(bucket, sorted_ids))
            self.class_log_weight.assign(log_weight)
            self.cumulative_weight.assign(cumulative)
        self.codebook1.assign(codebook1)
        self.codebook2.assign(codebook2)
        self.class_bucket.assign(bucket)
        self.sorted_ids.assign(sorted_ids)
        self.bucket_offsets.assign(offsets)
        self.log_bucket_weights.assign(log_bucket)
        self.initialized.assign(True)

    def _refreshed_log_weight(self, class_bias) -> tf.Tensor:
        if self._static_log_weight is None:
            log_weight = tf.zeros([self.num_classes])
        else:
            log_weight = self._static_log_weight_constant()
        if self.include_bias and class_bias is not None:
            log_weight += tf.stop_gradient(class_bias)
        return log_weight

    def _static_log_weight_constant(self) -> tf.Tensor:
        """The unigram log-weights [N] as one eager tensor, made once and captured by every graph
        that refreshes. A NumPy constant would be embedded in each traced graph, and tracing
        held about 0.5 GB more at N = 10^7."""
        if self._static_log_weight_tensor is None:
            with tf.init_scope():  # out of any graph being traced
                self._static_log_weight_tensor = tf.constant(self._static_log_weight)
        return self._static_log_weight_tensor

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "num_codewords": self.num_codewords,
                "quantizer": self.quantizer,
                "residual": self.residual,
                "power": self.power,
                "include_bias": self.include_bias,
                "kmeans_iterations": self.kmeans_iterations,
                "kmeans_sample_size": self.kmeans_sample_size,
                "learn_codebooks": self.learn_codebooks,
                "codebook_loss_weight": self.codebook_loss_weight,
                "reconstruction_weight": self.reconstruction_weight,
                "counts": None if self._counts is None else self._counts.tolist(),
            }
        )
        return config

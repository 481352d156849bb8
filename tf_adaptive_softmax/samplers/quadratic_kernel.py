"""Kernel-based sampling with the quadratic kernel (Blanc & Rendle, ICML 2018).

    q(i | h) = (α·<h, w_i>² + 1) / Σ_j (α·<h, w_j>² + 1)

Because α<h, w>² + 1 = <φ(h), φ(w)> for φ(x) = [√α·vec(x xᵀ), 1], the kernel mass of a whole
group g of classes is α·hᵀ S_g h + |g| with S_g = Σ_{i∈g} w_i w_iᵀ. Divide and conquer:

1. every query scores all G groups at once, one matmul of its quadratic features [B, P] against
   the stacked S_g [G, P], and draws a group per sample by inverse CDF over those G masses. S_g is
   symmetric, so only its P = d(d+1)/2 upper-triangle entries are stored and multiplied
   (hᵀSh = Σ_{i<=j} (2 - [i=j])·h_i h_j S_ij), half the work of vec(h hᵀ)·vec(S_g);
2. inside the drawn group (a leaf of `leaf_size` classes) it computes the exact kernel values of
   the members and draws one.

The product of the two stages is exactly q. Leaves hold at least d classes, so the stacked S_g cost
(N / leaf_size)·d(d+1)/2 <= N·d floats: memory stays O(N·d) (a snapshot of W plus the group sums),
never O(N·d²). State is refreshed from the current embeddings (`refresh`), and log q describes the
snapshot actually sampled from.

The quadratic kernel is symmetric in the logit, so it over-samples classes with large negative
logits; Blanc & Rendle pair it with the absolute softmax, exp(|o|): pass `absolute_softmax=True`
to `AdaptiveSampledSoftmaxLoss` when sampling from this kernel.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from tf_adaptive_softmax import _validation
from tf_adaptive_softmax._keras import Untracked, raw_variable, register_serializable
from tf_adaptive_softmax._ops import tables
from tf_adaptive_softmax._ops.discrete import draw_from_cdf_rows
from tf_adaptive_softmax._ops.random import sub_seed, uniform
from tf_adaptive_softmax.samplers._mixture import at_least_one_query
from tf_adaptive_softmax.samplers.base import Sampler

__all__ = ["QuadraticKernel"]

# Leaf members gathered by one chunk of draws stay under this many floats (256 MB).
_CHUNK_ELEMENTS = 1 << 26
# One chunk of the refresh's group moments (member rows and their [d, d] sums) stays under this
# many floats (16 MB).
_MOMENT_CHUNK_ELEMENTS = 1 << 22
# Measured on CPU (XLA and graph): a gathered-and-multiplied leaf float costs about as much as 40
# multiply-adds of the group-scoring matmul.
_GATHER_COST = 40.0


def _default_leaf_size(num_classes: int, embedding_dim: int, num_samples: int = 128) -> int:
    """Balances the per-query group scoring, (N / L)·d(d+1)/2 multiply-adds in one matmul,
    against the per-draw leaf work, L·d gathered floats for each of m draws."""
    packed = embedding_dim * (embedding_dim + 1) / 2
    balanced = math.sqrt(num_classes * packed / (_GATHER_COST * num_samples * embedding_dim))
    return max(embedding_dim, min(512, 2 ** round(math.log2(max(1.0, balanced)))))


def _upper_triangle(dim: int):
    """(rows, cols, multiplicity) of the d(d+1)/2 upper-triangle entries of a symmetric d x d."""
    rows, cols = np.triu_indices(dim)
    return rows.astype(np.int32), cols.astype(np.int32), np.where(rows == cols, 1.0, 2.0).astype(np.float32)


def _upper_entries(symmetric: tf.Tensor) -> tf.Tensor:
    """[..., d, d] symmetric -> its [..., P] upper-triangle entries (the stored layout)."""
    dim = symmetric.shape[-1]
    rows, cols, _ = _upper_triangle(dim)
    flat = tf.reshape(symmetric, tf.concat([tf.shape(symmetric)[:-2], [-1]], 0))
    return tf.gather(flat, rows * dim + cols, axis=-1)


def _moments_of(rows: tf.Tensor, num_groups: int, leaf: int) -> tf.Tensor:
    """[num_groups, P] upper triangles of Σ w wᵀ over consecutive blocks of `leaf` rows."""
    groups = tf.reshape(rows, [num_groups, leaf, rows.shape[-1]])
    return _upper_entries(tf.einsum("gld,gle->gde", groups, groups))


def _write_group_second_moments(variable: tf.Variable, class_embeddings: tf.Tensor, leaf: int) -> tf.Tensor:
    """Writes into `variable` [G, P] the upper triangle of S_g = Σ_{i∈g} w_i w_iᵀ for every group
    g of `leaf` consecutive classes (the last one shorter when L does not divide N), in place;
    returns their sum over groups [P] (the upper triangle of Σ_i w_i w_iᵀ).

    Full groups are read in place, a fixed number at a time, so besides the state only one
    chunk's [c, L, d] rows and [c, d, d] sums exist; the last, partial group is padded alone.
    Meant for XLA (`QuadraticKernel._replica_writers`), which writes each chunk into the
    variable's own buffer and leaves it readable without copies (see `_overwrite_leading_rows`).
    A [G, P] accumulator updated chunk by chunk by TensorFlow's graph executor was copied at
    every chunk (benchmarks/README.md, "Refresh at scale").
    """
    num_classes, dim = class_embeddings.shape
    full_groups = num_classes // leaf
    if full_groups:
        per_chunk = max(1, min(full_groups, _MOMENT_CHUNK_ELEMENTS // (leaf * dim + dim * dim)))
        num_chunks = -(-full_groups // per_chunk)

        def step(index):
            # The last chunk is shifted back to end at the last full group (it rewrites a few
            # groups with the same values): every chunk keeps one static shape.
            first = tf.minimum(index * per_chunk, full_groups - per_chunk)
            rows = tf.slice(class_embeddings, tf.stack([first * leaf, 0]), [per_chunk * leaf, dim])
            groups = (first + tf.range(per_chunk))[:, tf.newaxis]
            variable.scatter_nd_update(groups, _moments_of(rows, per_chunk, leaf))
            return index + 1

        tf.while_loop(lambda index: index < num_chunks, step, [tf.constant(0)])
    tail = num_classes - full_groups * leaf
    if tail:
        rows = tf.pad(class_embeddings[full_groups * leaf :], [[0, leaf - tail], [0, 0]])
        variable.scatter_nd_update([[full_groups]], _moments_of(rows, 1, leaf))
    return tf.reduce_sum(variable, axis=0)


def _overwrite_leading_rows(variable: tf.Variable, rows: tf.Tensor) -> None:
    """variable[:R] = rows and the remaining rows = 0, in place.

    Meant for XLA, which updates the variable's own buffer. Run by TensorFlow's executor, the
    slice (or scatter) assignment would be in place too, but it switches the variable to
    copy-on-read: every later dense read, such as the leaf-block view of each draw, would copy
    it whole. A full `assign` of a padded table would need a copy of the table.
    """
    variable[: rows.shape[0]].assign(rows)
    padding = variable.shape[0] - rows.shape[0]
    if padding:
        variable[rows.shape[0] :].assign(tf.zeros([padding, variable.shape[1]], variable.dtype))


def _replica_variables(variable) -> tuple:
    """The tf.Variable(s) behind a Keras weight: one per replica of a mirrored variable."""
    variable = raw_variable(variable)
    strategy = getattr(variable, "distribute_strategy", None) or tf.distribute.get_strategy()
    return tuple(strategy.experimental_local_results(variable))


def _symmetric_from_upper(dim: int) -> np.ndarray:
    """int32 [d·d]: for entry (i, j) of a symmetric d x d, its position among the upper-triangle
    entries (the stored layout), so that one gather rebuilds the full matrix."""
    position = np.zeros((dim, dim), np.int32)
    rows, cols = np.triu_indices(dim)
    position[rows, cols] = np.arange(rows.size)
    position[cols, rows] = np.arange(rows.size)
    return position.ravel()


@register_serializable
class QuadraticKernel(Sampler):
    """Exact sampling from q_i ∝ α·<h, w_i>² + 1 in time sublinear in N per draw.

    Args:
      num_classes: N.
      alpha: α, the weight of the squared logit (100 in the paper).
      leaf_size: classes per leaf group (>= the embedding width d); the default balances the two
        stages for m = 128 draws on CPU: sqrt(N·(d+1) / 10240) rounded to a power of two, within
        [d, 512] (64 for d = 64 up to N = 10^6).
      seed: seeds the sampler's own stream.
      **kwargs: Keras Layer arguments (`name`, ...).

    Raises:
      ValueError: alpha not above 0, or a leaf size below the embedding width.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from tf_adaptive_softmax.samplers import QuadraticKernel
        >>> sampler = QuadraticKernel(1000, alpha=100.0, seed=0)
        >>> _ = sampler.refresh(np.random.default_rng(0).normal(size=(1000, 8)).astype("float32") / 8)
        >>> ids, log_q = sampler.sample(tf.random.normal([2, 8]), num_samples=16)
        >>> ids.shape
        TensorShape([2, 16])
    """

    adaptive = True
    reads_table_in_blocks = True

    def __init__(
        self,
        num_classes: int,
        alpha: float = 100.0,
        leaf_size: Optional[int] = None,
        seed: Optional[int] = None,
        **kwargs: Any,
    ):
        super().__init__(num_classes=num_classes, seed=seed, **kwargs)
        if not alpha > 0:
            raise ValueError(f"`alpha` must be > 0; got {alpha!r}.")
        self.alpha = float(alpha)
        self.leaf_size = None if leaf_size is None else _validation.check_positive_int(leaf_size, "leaf_size")
        # The refresh's compiled in-place writers (`_replica_writers`): functions, not state.
        self._writers = Untracked(functions=None)

    def build_state(self, embedding_dim: int) -> None:
        """Creates the group sums for embedding width d (once).

        Args:
          embedding_dim: d.

        Raises:
          ValueError: a `leaf_size` below d.
        """
        if self.embedding_dim is not None:
            return
        super().build_state(embedding_dim)
        leaf = self.leaf_size or _default_leaf_size(self.num_classes, embedding_dim)
        if leaf < min(embedding_dim, self.num_classes):
            raise ValueError(
                f"`leaf_size` ({leaf}) must be >= the embedding width ({embedding_dim}) so that the "
                "group sums S_g stay O(N·d) memory."
            )
        self.leaf = leaf
        self.num_groups = -(-self.num_classes // leaf)
        padded = self.num_groups * leaf
        self.snapshot_embeddings = self.add_weight(
            name="snapshot_embeddings", shape=(padded, embedding_dim), initializer="zeros", trainable=False
        )
        rows, cols, multiplicity = _upper_triangle(embedding_dim)
        self._triangle = (rows, cols, multiplicity)
        # One-hot [d, P] matrices that pick each pair's two query entries (see `_group_mass`).
        identity = np.eye(embedding_dim, dtype=np.float32)
        self._pair_selectors = (identity[:, rows], identity[:, cols])
        # S_g restricted to its upper triangle, [G, d(d+1)/2].
        self.group_second_moments = self.add_weight(
            name="group_second_moments",
            shape=(self.num_groups, rows.size),
            initializer="zeros",
            trainable=False,
        )
        # S = Σ_g S_g [d, d], kept from the refresh: every normalizer needs it, and summing the
        # group sums again would read all of them on each call.
        self.second_moment = self.add_weight(
            name="second_moment",
            shape=(embedding_dim, embedding_dim),
            initializer="zeros",
            trainable=False,
        )
        sizes = np.minimum(leaf, self.num_classes - leaf * np.arange(self.num_groups)).astype(np.float32)
        self._group_sizes = sizes  # a NumPy constant: safe to embed in any graph

    # -- the distribution --------------------------------------------------------------------
    def _kernel(self, logits):
        return self.alpha * tf.square(logits) + 1.0

    def _packed(self, symmetric):
        """Upper-triangle entries times their multiplicity, so that <A, S> = Σ packed(A) · (S's
        stored upper triangle)."""
        return _upper_entries(symmetric) * self._triangle[2]

    def _group_mass(self, queries):
        """[B, G] kernel mass of every group: α·hᵀS_g h + |g|, one [B, P] x [P, G] matmul."""
        select_rows, select_cols = self._pair_selectors
        # One-hot matmuls (exact), not column gathers: XLA:CPU fused the gathers into the
        # [B, P] x [P, G] dot below and ran it 5x slower (268 against 51 ms at N = 10^6, d = 64).
        features = tf.matmul(queries, select_rows) * tf.matmul(queries, select_cols) * self._triangle[2]
        quadratic = tf.matmul(features, tf.convert_to_tensor(self.group_second_moments), transpose_b=True)
        # α·hᵀSh >= 0 exactly; rounding must not push a group below its count.
        return self.alpha * tf.maximum(quadratic, 0.0) + tf.constant(self._group_sizes)

    def _log_normalizer(self, queries):
        """[B, 1] log Z_b, Z_b = Σ_i α·<h_b, w_i>² + 1 = α·h_bᵀ S h_b + N."""
        quadratic = tf.einsum("bd,de,be->b", queries, tf.convert_to_tensor(self.second_moment), queries)
        return tf.math.log(self.alpha * tf.maximum(quadratic, 0.0) + self.num_classes)[:, tf.newaxis]

    def _snapshot_rows(self, ids):
        """Rows of the snapshot, gathered from a dense read (a view of the variable, no copy).

        A sparse read (`tf.gather` on a tf_keras weight becomes ResourceGather) would switch the
        variable to copy-on-read, after which every dense read, such as the leaf blocks of each
        draw, copies the whole snapshot.
        """
        return tf.gather(tf.convert_to_tensor(self.snapshot_embeddings), ids)

    def _log_kernel(self, queries, ids):
        rows = self._snapshot_rows(ids)
        return tf.math.log(self._kernel(tf.einsum("bd,bkd->bk", queries, rows)))

    def _pick_in_leaf(self, leaf_mass, group, u):
        """Exact draw inside the drawn leaf: group [R, c], u [R, c] -> class ids [R, c], where
        `leaf_mass(r, rows [R, c, L, d])` gives the unnormalized mass of every member."""
        members = group[:, :, tf.newaxis] * self.leaf + tf.range(self.leaf)  # [R, c, L]
        # Leaves are contiguous blocks of the snapshot: one block copy per draw, not L row gathers.
        blocks = tf.reshape(self.snapshot_embeddings, [self.num_groups, self.leaf, self.embedding_dim])
        mass = leaf_mass(tf.gather(blocks, group))  # [R, c, L]
        mass = tf.where(members < self.num_classes, mass, tf.zeros_like(mass))
        flat = tf.reshape(tf.cumsum(mass, axis=-1), [-1, self.leaf])
        rows_index = tf.reshape(tf.range(tf.size(group)), tf.shape(group))
        return group * self.leaf + draw_from_cdf_rows(flat, rows_index, u)

    def _sample(self, queries, num_samples, seed):
        batch = tf.shape(queries)[0]
        mass = self._group_mass(queries)
        uniforms = uniform(tf.stack([2, batch, num_samples]), sub_seed(seed, 0))
        group = draw_from_cdf_rows(tf.cumsum(mass, axis=1), None, uniforms[0])  # [B, m]

        def leaf_mass(rows):
            return self._kernel(tf.einsum("bd,bcld->bcl", queries, rows))

        ids = self._chunked_leaf_draws(leaf_mass, group, uniforms[1], queries.shape[0] or 256)
        log_normalizer = tf.math.log(tf.reduce_sum(mass, axis=1, keepdims=True))
        return ids, self._log_kernel(queries, ids) - log_normalizer

    def _chunked_leaf_draws(self, leaf_mass, group, u, static_rows):
        num_samples = group.shape[1]
        chunk = max(1, min(num_samples, _CHUNK_ELEMENTS // (static_rows * self.leaf * self.embedding_dim)))
        num_chunks = -(-num_samples // chunk)
        if num_chunks == 1:
            return self._pick_in_leaf(leaf_mass, group, u)
        pad = num_chunks * chunk - num_samples

        # [R, m] -> [chunks, R, chunk]: a fixed-count loop keeps [R, chunk, L, d] bounded.
        def split(x):
            x = tf.pad(x, [[0, 0], [0, pad]])
            return tf.transpose(tf.reshape(x, [-1, num_chunks, chunk]), [1, 0, 2])

        picked = tf.map_fn(
            lambda args: self._pick_in_leaf(leaf_mass, args[0], args[1]),
            (split(group), split(u)),
            fn_output_signature=tf.int32,
        )
        return tf.reshape(tf.transpose(picked, [1, 0, 2]), [-1, num_chunks * chunk])[:, :num_samples]

    def _log_prob(self, queries, ids):
        return self._log_kernel(queries, ids) - self._log_normalizer(queries)

    # -- the batch mixture (shared negatives) ------------------------------------------------
    def _mixture_form(self, queries):
        """(A [d, d], c) with q̄(i) = α·w_iᵀ A w_i + c, exactly normalized.

        The batch mixture of quadratic kernels is again a quadratic form in w:
        (1/B)·Σ_b (α·<h_b, w>² + 1) / Z_b = α·wᵀ A w + c with A = (1/B)·Σ_b h_b h_bᵀ / Z_b and
        c = (1/B)·Σ_b 1 / Z_b. So a shared draw costs one [G, d²] matvec plus m leaf scans, not
        B query-specific group scorings.
        """
        queries = at_least_one_query(queries)
        inverse_z = tf.exp(-self._log_normalizer(queries))[:, 0]
        batch = tf.cast(tf.shape(queries)[0], tf.float32)
        form = tf.einsum("b,bd,be->de", inverse_z, queries, queries) / batch
        return form, tf.reduce_sum(inverse_z) / batch

    def _mixture_mass(self, rows, form, offset):
        return self.alpha * tf.maximum(tf.einsum("...d,de,...e->...", rows, form, rows), 0.0) + offset

    def _sample_shared(self, queries, num_samples, seed):
        form, offset = self._mixture_form(queries)
        quadratic = tf.linalg.matvec(tf.convert_to_tensor(self.group_second_moments), self._packed(form))
        mass = self.alpha * tf.maximum(quadratic, 0.0) + offset * tf.constant(self._group_sizes)
        uniforms = uniform([2, 1, num_samples], sub_seed(seed, 0))
        group = draw_from_cdf_rows(tf.cumsum(mass)[tf.newaxis], None, uniforms[0])
        ids = self._chunked_leaf_draws(lambda rows: self._mixture_mass(rows, form, offset), group, uniforms[1], 1)[0]
        rows = self._snapshot_rows(ids)
        return ids, tf.math.log(self._mixture_mass(rows, form, offset) / tf.reduce_sum(mass))

    def _mixture_log_prob(self, queries, ids):
        form, offset = self._mixture_form(queries)
        rows = self._snapshot_rows(ids)
        quadratic = tf.reduce_sum(form * tf.convert_to_tensor(self.second_moment))
        total = self.alpha * tf.maximum(quadratic, 0.0) + offset * self.num_classes
        return tf.math.log(self._mixture_mass(rows, form, offset) / total)

    # -- refresh -----------------------------------------------------------------------------
    def _refresh(self, class_embeddings, class_bias) -> None:
        """Snapshots W and recomputes every group's Σ w wᵀ (O(N·d²) flops), chunk by chunk over
        groups, both written in place: beyond the state, memory holds one chunk of groups."""
        if tables.is_sharded(class_embeddings) or isinstance(class_embeddings, tf.distribute.DistributedValues):
            # The snapshot needs the table whole: shards are gathered, replicas read once.
            class_embeddings = tf.convert_to_tensor(class_embeddings)
        if not isinstance(class_embeddings, tf.Variable):
            class_embeddings = tf.ensure_shape(class_embeddings, [self.num_classes, self.embedding_dim])
        # A variable goes into the XLA writers as is: XLA reads it in place, where a TensorFlow
        # dense read would copy it whole once training has read it sparsely (copy-on-read).
        for device, write in self._replica_writers():
            with tf.device(device):
                packed_total = write(class_embeddings)
        dim = int(self.embedding_dim or 0)  # built: refresh runs after build_state
        total = tf.gather(packed_total, _symmetric_from_upper(dim))
        self.second_moment.assign(tf.reshape(total, [dim, dim]))

    def _replica_writers(self) -> list:
        """[(device, write)]: for every replica of the state (one unless it is mirrored), an
        XLA-compiled `write(class_embeddings) -> packed Σ_g S_g` that overwrites that replica's
        snapshot and group sums in place. Built once per sampler, so XLA compiles each once."""
        if self._writers.functions is None:
            writers = []
            for snapshot, moments in zip(
                _replica_variables(self.snapshot_embeddings), _replica_variables(self.group_second_moments)
            ):

                def write(class_embeddings, snapshot=snapshot, moments=moments):
                    _overwrite_leading_rows(snapshot, class_embeddings)
                    return _write_group_second_moments(moments, class_embeddings, self.leaf)

                writers.append((snapshot.device, tf.function(write, jit_compile=True, autograph=False)))
            self._writers.functions = writers
        return self._writers.functions

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"alpha": self.alpha, "leaf_size": self.leaf_size})
        return config

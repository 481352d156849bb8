"""The `MIDX` sampler: state, the distribution and its draws, refresh and config (the package
docstring states the math)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from tf_adaptive_softmax import _quantization as quantization
from tf_adaptive_softmax import _validation
from tf_adaptive_softmax._keras import register_serializable
from tf_adaptive_softmax._ops.discrete import search_buckets
from tf_adaptive_softmax._ops.random import sub_seed
from tf_adaptive_softmax.samplers._mixture import at_least_one_query
from tf_adaptive_softmax.samplers.base import Sampler
from tf_adaptive_softmax.samplers.midx import _draw, _learned
from tf_adaptive_softmax.samplers.midx._index import build_bucket_index
from tf_adaptive_softmax.samplers.midx.options import (
    _FLAT_OPTIONS,
    KMeansOptions,
    LearnedCodebooks,
    _default_num_codewords,
    _grouped_options,
    _options_from_config,
)
from tf_adaptive_softmax.samplers.unigram import _check_counts, _unigram_log_probs

__all__ = ["MIDX"]

_QUANTIZERS = ("pq", "rvq")
_RESIDUALS = ("uniform", "unigram")


@register_serializable
class MIDX(Sampler):
    """Inverted multi-index sampler over two codebooks of `num_codewords` codewords.

    q(i | z) = exp(<z, q̂_i>) · w_i / Z(z): a softmax over the quantized class embeddings q̂_i,
    drawn as two categoricals over codewords and a draw inside the bucket (see
    `tf_adaptive_softmax.samplers.midx`). Before the first `refresh` every class sits in one
    bucket: q is uniform (or ∝ w).

    Args:
      num_classes: N.
      num_codewords: K codewords per codebook (K² buckets), at most N. Default None: from N, the
        power of two nearest √N / 2 clipped to [16, 64] (16 below 2,048 classes, 32 below 8,192,
        64 from 8,192 on); `get_config` records the resolved K.
      quantizer: "rvq" (residual: both codebooks full width, default; closer to p) or "pq"
        (product: a codebook per half of the vector).
      residual: "uniform" (uniform inside a bucket, default) or "unigram" (∝ count^power).
      counts: per-class counts [N], required for residual="unigram". Default None.
      power: exponent on the counts. Default 1.0.
      include_bias: fold the model's class bias into the in-bucket weights (w_i ·= exp(b_i)):
        closer to the model when it has a strong class bias (popularity). Default False.
      kmeans: a `KMeansOptions` (Lloyd iterations and sample size of the refresh's k-means).
        Default None: `KMeansOptions()`.
      learn_codebooks: True or a `LearnedCodebooks` to train the codewords by gradient on the
        proposal's KL to the model (the owner adds the loss in training; later refreshes only
        re-assign classes); False (default) runs k-means at every refresh.
      seed: seeds the sampler's own stream (draws and k-means initialisation). Default None.
      **kwargs: Keras Layer arguments (`name`), or the deprecated flat options
        (`kmeans_iterations`, `kmeans_sample_size`, `codebook_loss_weight`,
        `reconstruction_weight`), accepted for one release with a DeprecationWarning.

    Raises:
      ValueError: K above N, an unknown quantizer or residual, missing or ill-sized counts.
      TypeError: `kmeans` or `learn_codebooks` of the wrong type.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from tf_adaptive_softmax.samplers import MIDX
        >>> sampler = MIDX(1000, num_codewords=8, quantizer="rvq", seed=0)
        >>> _ = sampler.refresh(np.random.default_rng(0).normal(size=(1000, 16)).astype("float32"))
        >>> ids, log_q = sampler.sample(tf.random.normal([4, 16]), num_samples=32)
        >>> ids.shape, sampler.bucket_sizes.shape
        (TensorShape([4, 32]), TensorShape([8, 8]))
    """

    adaptive = True
    reads_table_in_blocks = True

    def __init__(
        self,
        num_classes: int,
        num_codewords: Optional[int] = None,
        quantizer: str = "rvq",
        residual: str = "uniform",
        counts: Optional[npt.ArrayLike] = None,
        power: float = 1.0,
        include_bias: bool = False,
        kmeans: Optional[KMeansOptions] = None,
        learn_codebooks: bool | LearnedCodebooks = False,
        seed: Optional[int] = None,
        **kwargs: Any,
    ):
        flat = {key: kwargs.pop(key) for key in _FLAT_OPTIONS if key in kwargs}
        self.kmeans, self.learned = _grouped_options(kmeans, learn_codebooks, flat)
        self.learn_codebooks = self.learned is not None
        # Only the codebooks are trainable (every other state variable is created non-trainable).
        kwargs["trainable"] = self.learn_codebooks
        super().__init__(num_classes=num_classes, seed=seed, **kwargs)
        self.has_auxiliary_loss = self.learn_codebooks
        if num_codewords is None:
            num_codewords = _default_num_codewords(self.num_classes)
        self.num_codewords = _validation.check_positive_int(num_codewords, "num_codewords")
        if self.num_codewords > self.num_classes:
            raise ValueError(f"`num_codewords` (K={self.num_codewords}) must be <= num_classes ({self.num_classes}).")
        if self.kmeans.sample_size is not None and self.kmeans.sample_size < self.num_codewords:
            raise ValueError(
                f"`kmeans.sample_size` ({self.kmeans.sample_size}) must be >= num_codewords ({self.num_codewords})."
            )
        if quantizer not in _QUANTIZERS:
            raise ValueError(f"`quantizer` must be one of {_QUANTIZERS}; got {quantizer!r}.")
        if residual not in _RESIDUALS:
            raise ValueError(f"`residual` must be one of {_RESIDUALS}; got {residual!r}.")
        self.quantizer = quantizer
        self.residual = residual
        self.power = float(power)
        self.include_bias = bool(include_bias)
        self._static_log_weight: Optional[np.ndarray] = None
        self._static_log_weight_tensor: Optional[tf.Tensor] = None
        self._counts: Optional[np.ndarray] = None
        if residual == "unigram":
            if counts is None:
                raise ValueError("`counts` (per-class counts, length num_classes) is required for residual='unigram'.")
            checked = _check_counts(counts)
            if checked.size != self.num_classes:
                raise ValueError(f"`counts` has {checked.size} entries; expected num_classes={self.num_classes}.")
            self._counts = checked
            self._static_log_weight = _unigram_log_probs(checked, self.power).astype(np.float32)
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
    def codebooks(self) -> Tuple[tf.Tensor, tf.Tensor]:
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
        return _draw.codeword_scores(queries, self.codebook1, self.codebook2, self.split)

    def _first_marginal(self, scores1, scores2):
        return _draw.first_marginal(scores1, scores2, tf.convert_to_tensor(self.log_bucket_weights))

    def _class_log_weight(self, ids):
        return tf.gather(self.class_log_weight, ids) if self.weighted else 0.0

    def _kernel_inputs(self, queries) -> list:
        """What the compiled draws read: the queries and the small state, as tensors."""
        state = (self.codebook1, self.codebook2, self.log_bucket_weights, self.bucket_offsets)
        return [tf.stop_gradient(queries)] + [tf.stop_gradient(tf.convert_to_tensor(v)) for v in state]

    def _layout(self) -> _draw.Layout:
        return _draw.Layout(self.num_classes, self.split, self.weighted)

    def _class_ids(self, start, end, in_bucket):
        """The drawn classes: an offset into the bucket, or (weighted) a search of its cumulative
        weights; N-sized reads stay in TensorFlow (also on a parameter server)."""
        if self.weighted:
            cumulative = tf.convert_to_tensor(self.cumulative_weight)
            target = in_bucket * tf.gather(cumulative, end - 1)
            position = search_buckets(cumulative, start, end, target, self._search_steps)
        else:
            position = start + in_bucket
        return tf.gather(self.sorted_ids, position)

    def _sample(self, queries, num_samples, seed):
        ids, log_q, _ = self._draw(queries, num_samples, seed)
        return ids, log_q

    def _sample_with_log_prob(self, queries, num_samples, seed, ids):
        # The draw's codeword scores and normalizer serve the given ids too: no second pass.
        sampled, log_q, (scores1, scores2, log_normalizer) = self._draw(queries, num_samples, seed)
        return sampled, log_q, self._log_q_of(scores1, scores2, log_normalizer, ids)

    def _draw(self, queries, num_samples, seed):
        """(ids [B, m], log q [B, m], (codeword scores s¹, s² [B, K], log normalizer [B])): the draw
        up to each sample's bucket as one XLA computation (`_draw.draw_buckets`), then the class."""
        inputs = self._kernel_inputs(queries)
        drawn = _draw.DRAW_BUCKETS(inputs[0], seed, *inputs[1:], num_samples=num_samples, layout=self._layout())
        ids = self._class_ids(drawn.start, drawn.end, drawn.in_bucket)
        log_q = drawn.codeword_log_q + self._class_log_weight(ids)
        return ids, log_q, (drawn.scores1, drawn.scores2, drawn.log_normalizer)

    def _sample_shared(self, queries, num_samples, seed):
        """m draws from the batch mixture q̄(i) = M[k1(i), k2(i)] · w_i: a bucket from the K² masses
        M·W, then a class inside it (`_draw.draw_shared_buckets`, B·K² work whatever N and m)."""
        inputs = self._kernel_inputs(at_least_one_query(queries))
        start, end, in_bucket, log_mixture = _draw.DRAW_SHARED_BUCKETS(
            inputs[0], seed, *inputs[1:], num_samples=num_samples, layout=self._layout()
        )
        ids = self._class_ids(start, end, in_bucket)
        return ids, log_mixture + self._class_log_weight(ids)

    def _mixture_log_prob(self, queries, ids):
        scores1, scores2 = self._codeword_scores(at_least_one_query(queries))
        _, log_normalizer = self._first_marginal(scores1, scores2)
        log_mixture = tf.reshape(_draw.LOG_BUCKET_MIXTURE(scores1, scores2, log_normalizer), [-1])
        return tf.gather(log_mixture, tf.gather(self.class_bucket, ids)) + self._class_log_weight(ids)

    def _log_prob(self, queries, ids):
        scores1, scores2 = self._codeword_scores(queries)
        _, log_normalizer = self._first_marginal(scores1, scores2)
        return self._log_q_of(scores1, scores2, log_normalizer, ids)

    def _log_q_of(self, scores1, scores2, log_normalizer, ids):
        bucket = tf.gather(self.class_bucket, ids)
        first, second = bucket // self.num_codewords, bucket % self.num_codewords
        return _draw.codeword_log_q(scores1, scores2, log_normalizer, first, second) + self._class_log_weight(ids)

    # -- learned codebooks -------------------------------------------------------------------
    def _auxiliary_loss(self, queries, candidate_ids, target_logits, positive_embeddings):
        """λ · (KL(p̂‖q) on the candidates + ρ · reconstruction error of the positives), [B]
        (`LearnedCodebooks`; `_learned.proposal_kl`)."""
        learned = self.learned
        loss = _learned.proposal_kl(self._log_prob(queries, candidate_ids), target_logits)
        if positive_embeddings is not None and learned.reconstruction_weight > 0:
            bucket = tf.gather(self.class_bucket, candidate_ids[:, : positive_embeddings.shape[1]])
            k = self.num_codewords
            quantized = quantization.reconstruct(
                self.codebook1, self.codebook2, bucket // k, bucket % k, self.quantizer
            )
            loss += learned.reconstruction_weight * _learned.reconstruction_error(positive_embeddings, quantized)
        return learned.loss_weight * loss

    # -- refresh -----------------------------------------------------------------------------
    def _refresh(self, class_embeddings, class_bias) -> None:
        """Re-quantizes the class embeddings (warm-started k-means) and rebuilds the index.

        Graph ops that compute everything first and then only `assign`, so a NaN/Inf in the
        embeddings raises before any state changes. k-means trains on `kmeans.sample_size` classes
        and then assigns every class once, reading the table chunk by chunk (halves and residuals
        included): beyond the table it holds [N] integer and float vectors and the sample.
        """
        codebook1, codebook2, codes1, codes2 = quantization.two_codebook_quantize(
            class_embeddings,
            self.codebook1,
            self.codebook2,
            self.quantizer,
            self.kmeans.iterations,
            sub_seed(self._next_seed(), 7),
            warm_start=self.initialized,
            sample_size=self.kmeans.sample_size,
            # Learned codebooks: k-means only initialises them; later refreshes re-assign codes.
            train=tf.logical_not(self.initialized) if self.learn_codebooks else True,
            tolerance=self.kmeans.tolerance,
        )
        log_weight = self._refreshed_log_weight(class_bias)
        index = build_bucket_index(codes1, codes2, log_weight, self.num_codewords, self.weighted)
        if self.weighted:
            self.class_log_weight.assign(log_weight)
            self.cumulative_weight.assign(index.cumulative)
        self.codebook1.assign(codebook1)
        self.codebook2.assign(codebook2)
        self.class_bucket.assign(index.bucket)
        self.sorted_ids.assign(index.sorted_ids)
        self.bucket_offsets.assign(index.offsets)
        self.log_bucket_weights.assign(index.log_bucket)
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
        that refreshes (a NumPy constant would be embedded in each traced graph)."""
        if self._static_log_weight_tensor is None:
            with tf.init_scope():  # out of any graph being traced
                self._static_log_weight_tensor = tf.constant(self._static_log_weight)
        return self._static_log_weight_tensor

    # -- config ------------------------------------------------------------------------------
    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "num_codewords": self.num_codewords,
                "quantizer": self.quantizer,
                "residual": self.residual,
                "power": self.power,
                "include_bias": self.include_bias,
                "kmeans": dataclasses.asdict(self.kmeans),
                "learn_codebooks": False if self.learned is None else dataclasses.asdict(self.learned),
                "counts": None if self._counts is None else self._counts.tolist(),
            }
        )
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> MIDX:
        """A MIDX from `get_config`'s dict, this release's or an earlier one's (flat options)."""
        return cls(**_options_from_config(config))

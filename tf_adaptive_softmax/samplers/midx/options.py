"""How MIDX builds its codebooks at a refresh: k-means (`KMeansOptions`, the default) or learned by
gradient (`LearnedCodebooks`)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, Optional, Tuple

from tf_adaptive_softmax import _validation

__all__ = ["KMeansOptions", "LearnedCodebooks"]


@dataclasses.dataclass(frozen=True)
class KMeansOptions:
    """The k-means a MIDX refresh runs (warm-started from the previous codebooks).

    Args:
      iterations: the most Lloyd iterations per codebook and refresh. Default 10.
      sample_size: classes each codebook's Lloyd iterations read per refresh (a uniform sample;
        every class is then assigned to its nearest codeword once). Default None: 1024 per
        codeword, with which the proposal matched full-data k-means on the synthetic teacher
        (benchmarks/README.md, "Refresh at scale"); catalogues of at most that many classes train
        on all of them.
      tolerance: the iterations stop once one moves at most this fraction of the sample to another
        codeword. Default 0.1: warm-started refreshes then stop early with the proposal of ten
        iterations (benchmarks/README.md, "Staleness"); 0.0 runs all `iterations` unless no point
        moves. Configs saved before this option existed load with 0.0, as they ran.

    Raises:
      ValueError: `iterations` or `sample_size` below 1, `tolerance` outside [0, 1].

    Example:
        >>> from tf_adaptive_softmax import samplers
        >>> sampler = samplers.MIDX(10_000, kmeans=samplers.KMeansOptions(iterations=5))
        >>> sampler.kmeans.iterations
        5
    """

    iterations: int = 10
    sample_size: Optional[int] = None
    tolerance: float = 0.1

    def __post_init__(self) -> None:
        _validation.check_positive_int(self.iterations, "kmeans.iterations")
        if self.sample_size is not None:
            _validation.check_positive_int(self.sample_size, "kmeans.sample_size")
        if not 0.0 <= self.tolerance <= 1.0:
            raise ValueError(f"`kmeans.tolerance` must be a fraction in [0, 1]; got {self.tolerance!r}.")


@dataclasses.dataclass(frozen=True)
class LearnedCodebooks:
    """Codewords trained by the model's optimizer (MIDX's `learn_codebooks`): the loss

        λ · ( KL(p̂‖q) on the step's candidates  +  ρ · mean ‖w_y − q̂_y‖² over the positives )

    where p̂ is the softmax of the loss's own corrected logits (an estimate of the model's softmax
    p there) and q̂_y the positive's quantized embedding. The first refresh initialises the
    codewords by k-means; later refreshes only re-assign classes.

    Args:
      loss_weight: λ, the weight of the sampler's loss in the training loss. Default 1.0.
      reconstruction_weight: ρ, the reconstruction term's weight inside it. Default 0.1.

    Raises:
      ValueError: a weight that is negative or not finite.

    Example (a loss layer adds the sampler's loss in training; only the codewords get its gradient):
        >>> import tensorflow as tf
        >>> import tf_adaptive_softmax as tfas
        >>> learned = tfas.samplers.MIDX(1000, num_codewords=8, learn_codebooks=LearnedCodebooks(), seed=0)
        >>> output = tfas.AdaptiveSampledSoftmaxLoss(1000, learned, num_samples=16)
        >>> output.build_for_dim(16); _ = output.refresh_sampler()
        >>> with tf.GradientTape() as tape:
        ...     loss = tf.reduce_mean(output((tf.random.normal([4, 16]), tf.constant([1, 2, 3, 4])), training=True))
        >>> [g is not None for g in tape.gradient(loss, learned.trainable_weights)]
        [True, True]
    """

    loss_weight: float = 1.0
    reconstruction_weight: float = 0.1

    def __post_init__(self) -> None:
        _validation.check_nonnegative_float(self.loss_weight, "learn_codebooks.loss_weight")
        _validation.check_nonnegative_float(self.reconstruction_weight, "learn_codebooks.reconstruction_weight")


def _options_from_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """A MIDX config with the grouped options rebuilt: `kmeans` and `learn_codebooks` as saved
    (dicts), or from the flat keys of configs saved before they were grouped
    (`kmeans_iterations`, `kmeans_sample_size`, `codebook_loss_weight`, `reconstruction_weight`)."""
    config = dict(config)
    kmeans = config.pop("kmeans", None)
    flat_kmeans = {
        key: config.pop(f"kmeans_{key}") for key in ("iterations", "sample_size") if f"kmeans_{key}" in config
    }
    if isinstance(kmeans, dict):
        # Saved before `tolerance` existed: every refresh ran all its iterations.
        config["kmeans"] = KMeansOptions(**{"tolerance": 0.0, **kmeans})
    elif flat_kmeans:
        config["kmeans"] = KMeansOptions(**flat_kmeans, tolerance=0.0)
    learned = config.pop("learn_codebooks", False)
    flat_learned = {
        new: config.pop(old)
        for old, new in (("codebook_loss_weight", "loss_weight"), ("reconstruction_weight", "reconstruction_weight"))
        if old in config
    }
    if isinstance(learned, dict):
        config["learn_codebooks"] = LearnedCodebooks(**learned)
    elif learned:
        config["learn_codebooks"] = LearnedCodebooks(**flat_learned)
    return config


#: The range of `_default_num_codewords` (before its cap at N).
_DEFAULT_CODEWORDS_RANGE = (16, 64)
#: Flat constructor arguments of earlier releases, now grouped (deprecated; their configs load).
_FLAT_OPTIONS = ("kmeans_iterations", "kmeans_sample_size", "codebook_loss_weight", "reconstruction_weight")


def _default_num_codewords(num_classes: int) -> int:
    """The codebook size K that `MIDX` uses when `num_codewords` is None: the power of two nearest
    √N / 2 (K² ≈ N / 4 buckets), clipped to [16, 64] and to N,

        K = min(N, clip(2^⌊(⌊log2 N⌋ − 1) / 2⌋, 16, 64)),

    16 below 2,048 classes, 32 up to 8,191 and 64 from 8,192 on. Up to 64 a larger K cut KL(p‖q)
    and the test cross-entropy at little cost; above it the draw costs B·K³ for little gain
    (benchmarks/README.md, "Codebook size").

    Example:
        >>> from tf_adaptive_softmax.samplers.midx.options import _default_num_codewords
        >>> [_default_num_codewords(n) for n in (10, 1_000, 5_000, 10_000, 1_000_000)]
        [10, 16, 32, 64, 64]
    """
    num_classes = _validation.check_positive_int(num_classes, "num_classes")
    low, high = _DEFAULT_CODEWORDS_RANGE
    exponent = max(num_classes.bit_length() - 2, 0) // 2  # ⌊(⌊log2 N⌋ − 1) / 2⌋ for N >= 2
    return min(num_classes, max(low, min(high, 1 << exponent)))


def _grouped_options(kmeans, learn_codebooks, flat: Dict[str, Any]) -> Tuple[KMeansOptions, Optional[LearnedCodebooks]]:
    """(KMeansOptions, LearnedCodebooks or None) from the grouped arguments, or from the
    deprecated flat ones (with a warning)."""
    if flat:
        warnings.warn(
            f"MIDX({', '.join(sorted(flat))}=...) is deprecated: pass kmeans=KMeansOptions(iterations=..., "
            "sample_size=...) and learn_codebooks=LearnedCodebooks(loss_weight=..., reconstruction_weight=...).",
            DeprecationWarning,
            stacklevel=4,
        )
        grouped = _options_from_config({**flat, "learn_codebooks": learn_codebooks})
        kmeans = kmeans if kmeans is not None else grouped.get("kmeans")
        learn_codebooks = grouped["learn_codebooks"]
    kmeans = KMeansOptions() if kmeans is None else kmeans
    if not isinstance(kmeans, KMeansOptions):
        raise TypeError(f"`kmeans` must be a KMeansOptions or None; got {kmeans!r}.")
    if learn_codebooks is True:
        learn_codebooks = LearnedCodebooks()
    if learn_codebooks is not False and not isinstance(learn_codebooks, LearnedCodebooks):
        raise TypeError(f"`learn_codebooks` must be a bool or a LearnedCodebooks; got {learn_codebooks!r}.")
    return kmeans, learn_codebooks or None

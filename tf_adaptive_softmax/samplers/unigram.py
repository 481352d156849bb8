"""Unigram (popularity) proposal: q_i ∝ count_i ** power, drawn in O(1) with an alias table."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from tf_adaptive_softmax._keras import register_serializable
from tf_adaptive_softmax._ops.discrete import alias_draw, build_alias_table
from tf_adaptive_softmax.samplers.base import Sampler

__all__ = ["Unigram"]


def _unigram_log_probs(counts: np.ndarray, power: float) -> np.ndarray:
    """Normalized log(count ** power); zero counts get -inf (never drawn)."""
    weights = np.power(counts.astype(np.float64), power, where=counts > 0, out=np.zeros(len(counts)))
    with np.errstate(divide="ignore"):
        return np.log(weights / weights.sum())


def _check_counts(counts) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"`counts` must be a non-empty 1-D array of per-class counts; got shape {counts.shape}.")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("`counts` must be finite and non-negative.")
    if counts.sum() <= 0:
        raise ValueError("`counts` must have a positive sum.")
    return counts


@register_serializable
class Unigram(Sampler):
    """q_i = count_i^power / Σ_j count_j^power, the same for every query (static).

    `power=0.75` is word2vec's smoothing; `power=1` the raw frequency. Classes with a zero count
    are never drawn (log q = -inf; as positives the estimator floors it, see `estimator._MIN_LOG_Q`).

    Args:
      counts: per-class counts, length N. May be None only together with `num_classes` (used when
        restoring from a config: the tables then come from the saved weights).
      power: exponent applied to the counts.
      seed: seeds the sampler's own stream.
      num_classes: N, only to restore from a config (`counts` None).
      **kwargs: Keras Layer arguments (`name`, ...).

    Raises:
      ValueError: counts that are empty, negative, not finite, all zero, or not N long.

    Example:
        >>> import tensorflow as tf
        >>> from tf_adaptive_softmax.samplers import Unigram
        >>> sampler = Unigram([10, 5, 1, 0], power=1.0)
        >>> [round(float(v), 4) for v in tf.exp(sampler.log_prob(tf.zeros([1, 2]), [[0, 1, 2, 3]]))[0]]
        [0.625, 0.3125, 0.0625, 0.0]
    """

    def __init__(
        self,
        counts: Optional[npt.ArrayLike] = None,
        power: float = 1.0,
        seed: Optional[int] = None,
        num_classes: Optional[int] = None,
        **kwargs: Any,
    ):
        if counts is None:
            if num_classes is None:
                raise ValueError("Unigram needs `counts` (or `num_classes` when restoring from a config).")
            counts = np.ones(num_classes)
        checked = _check_counts(counts)
        if num_classes is not None and num_classes != checked.size:
            raise ValueError(f"`counts` has {checked.size} entries but `num_classes` is {num_classes}.")
        super().__init__(num_classes=checked.size, seed=seed, **kwargs)
        self.power = float(power)
        log_q = _unigram_log_probs(checked, self.power)
        probability, alias = build_alias_table(np.exp(log_q))
        self.log_q_table = self._constant_state("log_q", log_q.astype(np.float32), "float32")
        self.alias_probability = self._constant_state("alias_probability", probability, "float32")
        self.alias_index = self._constant_state("alias_index", alias, "int32")

    def _sample(self, queries, num_samples, seed):
        shape = tf.stack([self._batch_size(queries), num_samples])
        ids = alias_draw(self.alias_probability, self.alias_index, shape, seed)
        return ids, tf.gather(self.log_q_table, ids)

    def _log_prob(self, queries, ids):
        return tf.gather(self.log_q_table, ids)

    def get_config(self) -> dict:
        config = super().get_config()
        # The tables travel as weights; the config stays small even for 10^8 classes.
        config.update({"power": self.power, "counts": None})
        return config

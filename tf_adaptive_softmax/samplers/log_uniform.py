"""Log-uniform (Zipf over id order) proposal, as TF's `log_uniform_candidate_sampler`."""

from __future__ import annotations

import math

import tensorflow as tf

from tf_adaptive_softmax._keras import register_serializable
from tf_adaptive_softmax._ops.random import uniform
from tf_adaptive_softmax.samplers.base import Sampler

__all__ = ["LogUniform"]


@register_serializable
class LogUniform(Sampler):
    """q_k = (log(k + 2) - log(k + 1)) / log(N + 1): Zipf's law over the id order.

    Assumes ids are sorted by decreasing frequency (id 0 the most frequent), as vocabularies
    usually are. Sampled by inverting the CDF, log(k + 2) / log(N + 1), in O(1) per draw:
    k = floor(exp(u · log(N + 1))) - 1 with u ~ U[0, 1). The inversion runs in float32 (TPUs have
    no float64), so it is exact for N up to 2^24; beyond, ids above ~2^24 are resolved to float32
    spacing (their total probability is small: log(N+1) - log(2^24) over log(N+1)).

    Args:
      num_classes: N.
      seed: optional int seeding the sampler's own stream (draws with `seed=None`). Default None.

    Example:
        >>> import tensorflow as tf
        >>> from tf_adaptive_softmax.samplers import LogUniform
        >>> sampler = LogUniform(10_000)
        >>> ids, log_q = sampler.sample(tf.zeros([2, 8]), num_samples=5, seed=0)
        >>> bool(tf.reduce_all(sampler.log_prob(tf.zeros([2, 8]), ids) == log_q))
        True
    """

    def _sample(self, queries, num_samples, seed):
        shape = tf.stack([self._batch_size(queries), num_samples])
        u = uniform(shape, seed)
        ids = tf.cast(tf.floor(tf.exp(u * math.log(self.num_classes + 1.0))), tf.int32) - 1
        # exp() rounding can land exactly on N for u just below 1: an event of float measure zero.
        ids = tf.clip_by_value(ids, 0, self.num_classes - 1)
        return ids, self._log_prob(queries, ids)

    def _log_prob(self, queries, ids):
        k = tf.cast(ids, tf.float32)
        return tf.math.log(tf.math.log1p(1.0 / (k + 1.0))) - math.log(math.log(self.num_classes + 1.0))

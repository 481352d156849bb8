"""Uniform proposal: q_i = 1 / N for every query (static)."""

from __future__ import annotations

import math

import tensorflow as tf

from tf_adaptive_softmax._keras import register_serializable
from tf_adaptive_softmax._ops.random import uniform_ints
from tf_adaptive_softmax.samplers.base import Sampler

__all__ = ["Uniform"]


@register_serializable
class Uniform(Sampler):
    """Draws every class with probability 1/N, whatever the query.

    The cheapest proposal and the most biased one for a peaked softmax: it needs many samples.

    Args:
      num_classes: N.
      seed: optional int seeding the sampler's own stream (draws with `seed=None`). Default None.

    Example:
        >>> import tensorflow as tf
        >>> from tf_adaptive_softmax.samplers import Uniform
        >>> ids, log_q = Uniform(1000).sample(tf.zeros([2, 8]), num_samples=4, seed=1)
        >>> ids.shape, float(log_q[0, 0])  # log(1/1000)
        (TensorShape([2, 4]), -6.907755374908447)
    """

    def _sample(self, queries, num_samples, seed):
        shape = tf.stack([self._batch_size(queries), num_samples])
        ids = uniform_ints(shape, self.num_classes, seed)
        return ids, tf.fill(shape, tf.constant(-math.log(self.num_classes), tf.float32))

    def _log_prob(self, queries, ids):
        return self._constant_log_prob(queries, ids, -math.log(self.num_classes))

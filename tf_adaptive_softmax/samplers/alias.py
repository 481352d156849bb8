"""Walker's alias method (Vose's construction): O(1) draws from a fixed discrete distribution.

A table of N (probability, alias) pairs: draw a column j uniformly and a u ~ U[0, 1); return j if
u < probability[j], else alias[j]. Each draw is two gathers, so it is XLA-safe and its cost does
not depend on N, unlike `tf.random.categorical` or `searchsorted` under XLA (O(N) per draw).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import tensorflow as tf

from tf_adaptive_softmax.samplers.base import sub_seed, uniform_ints


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
    u = tf.random.stateless_uniform(shape, seed=sub_seed(seed, 1), dtype=tf.float32)
    keep = u < tf.gather(probability, column)
    return tf.where(keep, column, tf.gather(alias, column))

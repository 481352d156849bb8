"""Stateless randomness with int32 seeds (XLA cannot compile int64 seeds): seeds, sub-seeds,
per-replica folding, and integer draws exact for any catalogue size."""

from __future__ import annotations

import tensorflow as tf


def seed_pair(seed) -> tf.Tensor:
    """An int32 [2] stateless seed from a Python int or a [2] tensor."""
    if isinstance(seed, int):
        return tf.constant([seed % (2**31 - 1), 0], dtype=tf.int32)
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank != 1 or seed.shape[0] != 2:
        raise ValueError(f"`seed` must be a Python int or a [2] integer tensor; got shape {seed.shape}.")
    if not seed.dtype.is_integer:
        raise TypeError(f"`seed` must be integer; got dtype {seed.dtype.name}.")
    return tf.cast(seed, tf.int32)


def sub_seed(seed: tf.Tensor, index: int) -> tf.Tensor:
    """An independent int32 seed derived from `seed` (one per random quantity of a draw)."""
    return tf.random.experimental.stateless_fold_in(seed, index, alg="philox")


def per_replica(seed: tf.Tensor) -> tf.Tensor:
    """Under a multi-replica strategy every replica reads the same seed state: fold in the replica
    id so that replicas draw independent negatives."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return seed
    return sub_seed(seed, tf.cast(context.replica_id_in_sync_group, tf.int32) + 1)


def uniform_ints(shape, maxval, seed: tf.Tensor) -> tf.Tensor:
    """Stateless uniform int32 in [0, maxval), exact for any catalogue size.

    A Python-int `maxval` uses TF's integer uniform. A tensor `maxval` (per-element ranges, such
    as bucket sizes) reduces 63 random bits modulo the range: the bias is below range / 2^63. A
    float32 uniform scaled by the range would not do: past 2^24 it cannot reach every integer.
    """
    if isinstance(maxval, int):
        return tf.random.stateless_uniform(shape, seed=seed, minval=0, maxval=maxval, dtype=tf.int32)
    bits = tf.random.stateless_uniform(shape, seed=seed, minval=None, maxval=None, dtype=tf.int64)
    non_negative = tf.bitwise.bitwise_and(bits, tf.constant(0x7FFFFFFFFFFFFFFF, tf.int64))
    return tf.cast(tf.math.floormod(non_negative, tf.cast(maxval, tf.int64)), tf.int32)

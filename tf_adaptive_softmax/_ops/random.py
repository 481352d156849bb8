"""Stateless randomness with int32 seeds (XLA cannot compile int64 seeds): seeds, sub-seeds,
per-replica folding, uniform and integer draws exact for any catalogue size, and a Gumbel-max
categorical over short rows.

Every draw names its bit generator: Philox-4x32-10 (`ALGORITHM`). TensorFlow's default,
`alg="auto_select"`, is Philox in graph mode on CPU and GPU but another generator under XLA,
where XLA:CPU makes float uniforms far slower. Named, Philox gives the same integer bits in graph
mode and under XLA; `uniform` builds its floats from those bits itself (the two modes convert bits
to floats differently), so one seed draws the same negatives in both modes. ThreeFry would be a
little faster under XLA (and is what TPUs favour), but graph mode on CPU rejects it.
"""

from __future__ import annotations

import tensorflow as tf

#: The bit generator of every stateless draw in the package (see the module docstring).
ALGORITHM = "philox"


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
    return tf.random.experimental.stateless_fold_in(seed, index, alg=ALGORITHM)


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
        return tf.random.stateless_uniform(shape, seed=seed, minval=0, maxval=maxval, dtype=tf.int32, alg=ALGORITHM)
    bits = tf.random.stateless_uniform(shape, seed=seed, minval=None, maxval=None, dtype=tf.int64, alg=ALGORITHM)
    non_negative = tf.bitwise.bitwise_and(bits, tf.constant(0x7FFFFFFFFFFFFFFF, tf.int64))
    return tf.cast(tf.math.floormod(non_negative, tf.cast(maxval, tf.int64)), tf.int32)


def uniform(shape, seed: tf.Tensor) -> tf.Tensor:
    """Stateless float32 uniforms in [0, 1): 24 random bits each, every value a multiple of 2^-24
    (float32's full precision at 1/2), built from Philox's integer output.

    Graph mode and XLA produce the same Philox bits but convert them to floats differently; taking
    the bits ourselves makes a seed give the same floats in both modes.
    """
    bits = tf.random.stateless_uniform(shape, seed=seed, minval=None, maxval=None, dtype=tf.int32, alg=ALGORITHM)
    low_bits = tf.bitwise.bitwise_and(bits, tf.constant(0xFFFFFF, tf.int32))
    return tf.cast(low_bits, tf.float32) * (1.0 / (1 << 24))


def gumbel_max(logits: tf.Tensor, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
    """`num_samples` categorical draws per row of `logits` [R, S] as int32 [R, num_samples]:
    the argmax of logits plus Gumbel noise, exact in law.

    Costs R·num_samples·S uniforms: for short rows only (k-means++ candidates). It replaces
    `tf.random.stateless_categorical`, whose XLA lowering uses the slow default generator.
    """
    logits = tf.cast(logits, tf.float32)
    shape = tf.concat([tf.shape(logits)[:1], [num_samples], tf.shape(logits)[1:]], 0)
    # u = 0 gives −inf noise: that category is simply not chosen by this draw.
    noise = -tf.math.log(-tf.math.log(uniform(shape, seed)))
    return tf.argmax(logits[:, tf.newaxis, :] + noise, axis=-1, output_type=tf.int32)

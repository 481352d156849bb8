"""Where a sampler's state lives and how a refresh replaces it without ever half-updating it."""

from __future__ import annotations

import tensorflow as tf

from tf_adaptive_softmax._ops import tables
from tf_adaptive_softmax._validation import warn_if_kept

__all__ = ["parameter_server_strategy", "refresh_if_finite"]


def parameter_server_strategy():
    """The active `ParameterServerStrategy` (which may partition new variables), else None."""
    strategy = tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
    return strategy if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy) else None


def refresh_if_finite(sampler, embeddings, class_bias, on_nonfinite: str) -> tf.Tensor:
    """Runs `sampler._refresh` only on finite inputs: with "raise" the check runs before any
    assign; with "keep" the previous state stays and the result is False."""
    finite = tables.all_finite(embeddings)
    if class_bias is not None:
        finite = finite & tf.reduce_all(tf.math.is_finite(class_bias))

    def rebuild():
        sampler._refresh(embeddings, class_bias)
        return tf.constant(True)

    if on_nonfinite == "raise":
        message = ["`class_embeddings` or `class_bias` contains NaN or Inf values."]
        # Every op of the rebuild (seed advance included) waits for the check.
        with tf.control_dependencies([tf.debugging.Assert(finite, message, name="check_class_embeddings_finite")]):
            return rebuild()
    if tf.executing_eagerly():
        return rebuild() if warn_if_kept(finite, sampler) else tf.constant(False)
    return tf.cond(finite, rebuild, lambda: tf.constant(False))

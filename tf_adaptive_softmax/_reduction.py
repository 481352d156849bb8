"""Sample weights and loss reductions, in one place for every entry point.

Both Keras flavours name reductions differently: Keras 3 uses "sum", "sum_over_batch_size",
"mean", "mean_with_sample_weight" and "none"/None; tf_keras uses `Reduction.AUTO`, `SUM`,
`SUM_OVER_BATCH_SIZE` and `NONE` (enum members whose value is the lower-case name). Every name of
both is understood here; anything else is a ValueError naming the accepted ones.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

# name -> how the per-example losses become the reported loss
_REDUCTIONS = {
    "none": "none",
    "sum": "sum",
    "sum_over_batch_size": "mean",
    "auto": "mean",  # tf_keras: SUM_OVER_BATCH_SIZE in a Keras training loop
    "mean": "mean",
    "mean_with_sample_weight": "weighted_mean",  # Keras 3: sum(w·loss) / sum(w)
}
REDUCTIONS = tuple(_REDUCTIONS)


def reduction_name(reduction) -> str:
    """The canonical lower-case name of a reduction of either Keras flavour, or a ValueError."""
    if reduction is None:
        return "none"
    name = str(getattr(reduction, "value", reduction)).lower()
    if name.startswith("reduction."):  # str() of a tf_keras enum member
        name = name[len("reduction.") :]
    if name not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS} (or None); got {reduction!r}.")
    return name


def weighted(per_example: tf.Tensor, sample_weight) -> tf.Tensor:
    """`per_example` times `sample_weight` reshaped to its shape (no-op for None)."""
    if sample_weight is None:
        return per_example
    sample_weight = tf.cast(tf.convert_to_tensor(sample_weight), per_example.dtype)
    return per_example * tf.reshape(sample_weight, tf.shape(per_example))


def reduce(per_example: tf.Tensor, reduction, sample_weight: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Weights then reduces per-example losses: "none" keeps them, "sum" sums, the mean-like names
    divide the weighted sum by the number of examples, "mean_with_sample_weight" by the weights' sum."""
    mode = _REDUCTIONS[reduction_name(reduction)]
    losses = weighted(per_example, sample_weight)
    if mode == "none":
        return losses
    total = tf.reduce_sum(losses)
    if mode == "sum":
        return total
    if mode == "weighted_mean" and sample_weight is not None:
        weights = tf.cast(tf.reshape(sample_weight, tf.shape(per_example)), total.dtype)
        return tf.math.divide_no_nan(total, tf.reduce_sum(weights))
    return tf.math.divide_no_nan(total, tf.cast(tf.size(losses), total.dtype))

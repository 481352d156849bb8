"""`TFSampledSoftmax`: the output layer trained with `tf.nn.sampled_softmax_loss`, the baseline
users have today, for the demo, the examples and the benchmarks."""

from __future__ import annotations

import tensorflow as tf

from tf_adaptive_softmax import _reduction
from tf_adaptive_softmax._ops import tables
from tf_adaptive_softmax.layers import AdaptiveSampledSoftmaxLoss

__all__ = ["TFSampledSoftmax"]


class TFSampledSoftmax(AdaptiveSampledSoftmaxLoss):
    """The output layer trained with `tf.nn.sampled_softmax_loss`, as users call it today.

    TF's default candidate sampler: log-uniform over the ids (Zipf, P(k) = log((k + 2) / (k + 1))
    / log(N + 1)), one set of `num_samples` distinct negatives shared by the batch, every logit
    (the positive too) corrected by −log(expected count), accidental hits removed. Outside
    training it is the full softmax, like `AdaptiveSampledSoftmaxLoss`, so the exact metrics,
    `logits` and `top_k` are the same. TF's sampler op has no XLA kernel: train it without
    `jit_compile=True`.

    Args:
      num_classes: N.
      num_samples: negatives per batch.
      **kwargs: the other `AdaptiveSampledSoftmaxLoss` arguments (`tied_embedding`,
        `add_to_model_loss`, `name`, ...); not `sampler`, `shared_negatives` or
        `logq_correction`, which TF's loss fixes.

    Example:
        >>> import numpy as np
        >>> output = TFSampledSoftmax(1_000, num_samples=20)
        >>> query, labels = np.ones((4, 8), np.float32), np.array([0, 1, 2, 3])
        >>> output.per_example_loss(query, labels, training=True).shape
        TensorShape([4])
    """

    def __init__(self, num_classes: int, num_samples: int, **kwargs):
        fixed = {"sampler", "shared_negatives", "logq_correction", "correct_positive"} & set(kwargs)
        if fixed:
            raise ValueError(f"TFSampledSoftmax fixes {sorted(fixed)} (TF's loss); do not pass them.")
        super().__init__(num_classes, None, num_samples=num_samples, shared_negatives=True, **kwargs)

    def per_example_loss(self, query, labels, sample_weight=None, training: bool = False) -> tf.Tensor:
        query = tf.convert_to_tensor(query)
        if not training or query.shape.rank == 3:
            # Rank 3 flattens and comes back through here with training unchanged.
            return super().per_example_loss(query, labels, sample_weight, training=training)
        if self.embedding_dim is None:
            self.build_for_dim(int(query.shape[-1]))
        labels = tf.reshape(tf.cast(labels, tf.int64), [-1, 1])
        # The raw tf.Variables, so TF's embedding lookups read (and its gradient touches) only the
        # sampled rows; a Keras 3 Variable would be converted whole, making every step dense.
        weights, bias = self._weights()
        bias = tf.zeros([self.num_classes]) if bias is None else bias
        # A table sharded by a parameter-server partitioner goes in as its list of row blocks,
        # the form TF's loss documents for partitioned weights (its lookups then read per shard).
        weights = weights if not tables.is_sharded(weights) else _div_blocks(tables.shards(weights), "class table")
        bias = bias if not tables.is_sharded(bias) else _div_blocks(tables.shards(bias), "class bias")
        loss = tf.nn.sampled_softmax_loss(weights, bias, labels, query, self.num_samples, self.num_classes)
        return _reduction.weighted(loss, sample_weight)


def _div_blocks(blocks: list, what: str) -> list:
    """`blocks` if their sizes are TensorFlow's "div" layout, the one `tf.nn.sampled_softmax_loss`
    assumes for partitioned weights (rows split as evenly as possible, the first blocks one row
    longer; TF's partitioners shard that way); else a ValueError, since other splits would
    silently read the wrong rows."""
    sizes = [int(block.shape[0]) for block in blocks]
    total, count = sum(sizes), len(sizes)
    expected = [total // count + (1 if index < total % count else 0) for index in range(count)]
    if sizes != expected:
        raise ValueError(
            f"tf.nn.sampled_softmax_loss needs the {what}'s shards split evenly with the first ones "
            f"longer ({expected} rows); got {sizes}."
        )
    return blocks

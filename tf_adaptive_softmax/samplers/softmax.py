"""The exact softmax proposal q = p: the unbiased oracle, O(N·d) per query. A reference only."""

from __future__ import annotations

from typing import Any, Optional

import tensorflow as tf

from tf_adaptive_softmax._keras import Untracked, register_serializable
from tf_adaptive_softmax.samplers.base import Sampler

__all__ = ["Softmax"]


@register_serializable
class Softmax(Sampler):
    """q(i | h) = softmax(<h, w_i> + b_i): the model's own distribution.

    With it the sampled-softmax gradient is unbiased (Blanc & Rendle, Thm. 2.1), which makes it
    the reference in tests and bias studies. It computes all N logits and draws with a categorical
    over N, so it costs more than the full softmax it stands in for: never use it for speed (under
    XLA the categorical materializes [B, m, N]).

    Attached to an `AdaptiveSampledSoftmaxLoss` with `live=True` (the default) it reads the layer's
    live weights, exact at every step. With `live=False`, or standalone, it samples from the
    snapshot taken by the last `refresh(class_embeddings, class_bias)`: the softmax of a stale
    model, which isolates the cost of refreshing adaptive state only every so often.

    Args:
      num_classes: N.
      live: read the attached layer's weights directly instead of a refreshed snapshot.
      seed: seeds the sampler's own stream.
      **kwargs: Keras Layer arguments (`name`, ...).

    Raises:
      ValueError: drawing from a snapshot before the first `refresh`.

    Example:
        >>> import tensorflow as tf
        >>> from tf_adaptive_softmax.samplers import Softmax
        >>> sampler = Softmax(5)
        >>> _ = sampler.refresh(tf.eye(5, 3))
        >>> float(tf.reduce_logsumexp(sampler.log_prob(tf.ones([1, 3]), [[0, 1, 2, 3, 4]])))  # doctest: +ELLIPSIS
        0.0...
    """

    adaptive = True

    def __init__(self, num_classes: int, live: bool = True, seed: Optional[int] = None, **kwargs: Any):
        super().__init__(num_classes=num_classes, seed=seed, **kwargs)
        self.live = bool(live)
        self._live: Optional[Untracked] = None
        self.snapshot_embeddings: Any = None
        self.snapshot_bias: Any = None

    def bind(self, class_embeddings: Any, class_bias: Any = None) -> None:
        if self.live:
            self._live = Untracked(class_embeddings=class_embeddings, class_bias=class_bias)

    def build_state(self, embedding_dim: int) -> None:
        super().build_state(embedding_dim)
        if self._live is None and self.snapshot_embeddings is None:
            self.snapshot_embeddings = self.add_weight(
                name="snapshot_embeddings",
                shape=(self.num_classes, embedding_dim),
                initializer="zeros",
                trainable=False,
            )
            self.snapshot_bias = self.add_weight(
                name="snapshot_bias", shape=(self.num_classes,), initializer="zeros", trainable=False
            )

    def _refresh(self, class_embeddings, class_bias) -> None:
        if self._live is not None:
            return
        self.snapshot_embeddings.assign(class_embeddings)
        bias = tf.zeros([self.num_classes]) if class_bias is None else class_bias
        self.snapshot_bias.assign(bias)

    def get_config(self) -> dict:
        config = super().get_config()
        config["live"] = self.live
        return config

    def _logits(self, queries):
        if self._live is not None:
            weights, bias = self._live.class_embeddings, self._live.class_bias
        else:
            if self.snapshot_embeddings is None:
                raise ValueError("Softmax sampler has no state: call `refresh(class_embeddings)` first.")
            weights, bias = self.snapshot_embeddings, self.snapshot_bias
        logits = tf.matmul(queries, tf.convert_to_tensor(weights), transpose_b=True)
        if bias is not None:
            logits += tf.convert_to_tensor(bias)
        return tf.nn.log_softmax(logits, axis=-1)

    def _sample(self, queries, num_samples, seed):
        log_p = self._logits(queries)
        ids = tf.random.stateless_categorical(log_p, num_samples, seed=seed, dtype=tf.int32)
        # A row of NaN logits makes the categorical return N; keep it in range (its log q is NaN).
        ids = tf.minimum(ids, self.num_classes - 1)
        return ids, tf.gather(log_p, ids, batch_dims=1)

    def _log_prob(self, queries, ids):
        return tf.gather(self._logits(queries), ids, batch_dims=1)

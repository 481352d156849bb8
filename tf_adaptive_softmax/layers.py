"""`AdaptiveSampledSoftmaxLoss`: the output layer that owns the class embeddings and the loss."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import tensorflow as tf

from tf_adaptive_softmax import _reduction, _validation, estimator
from tf_adaptive_softmax._keras import (
    ONLY_FIRST_REPLICA,
    K,
    Untracked,
    deserialize,
    raw_variable,
    register_serializable,
    serialize,
)
from tf_adaptive_softmax._ops import tables
from tf_adaptive_softmax._refresh import CompiledRefresh, refresh_on_schedule
from tf_adaptive_softmax._types import TensorLike
from tf_adaptive_softmax.samplers.base import Sampler

__all__ = ["AdaptiveSampledSoftmaxLoss"]


@register_serializable
class AdaptiveSampledSoftmaxLoss(K.layers.Layer):
    """Softmax output layer over `num_classes` classes, trained by sampled softmax.

    Logits are o = h Wᵀ + b for a query h [B, d] and class embeddings W [N, d]. Called on
    `(query, labels)` (optionally `(query, labels, sample_weight)`) it returns the per-example loss
    [B] (for sequence models: query [B, T, d] with labels [B, T] gives a [B, T] loss):

    in training (inside `fit`) the sampled softmax over the positives and `num_samples` negatives
    per query drawn from `sampler`, corrected by -log(m·q) (`tf_adaptive_softmax.estimator`); in
    inference (`evaluate`, `predict`) the exact full-softmax cross-entropy.

    With `sampler=None` training uses the full softmax too. `logits(query)` and `top_k(query, k)`
    serve predictions without the sampler, so serving graphs contain no sampling ops.

    Args:
      num_classes: N.
      sampler: a `tf_adaptive_softmax.samplers.Sampler` built for `num_classes`, or None.
      num_samples: m, negatives per query (a Python int >= 1).
      use_bias: learn a per-class bias b.
      tied_embedding: an existing Embedding layer (input_dim=N) whose table serves as W (weight
        tying); save such a model with `save_weights` / checkpoints (`.keras` cannot express it).
      remove_accidental_hits: mask negatives equal to one of the row's positives.
      add_to_model_loss: also `add_loss` the batch mean (functional models compiled without a loss).
      absolute_softmax: |o| as the logits everywhere (Blanc & Rendle, with `QuadraticKernel`).
      shared_negatives: draw one set of `num_samples` negatives for the whole batch (as
        `tf.nn.sampled_softmax_loss` does) from the batch mixture q̄ = mean_b q(· | h_b): cheaper
        per step, less adapted to each query; use it with a larger `num_samples`.
      embeddings_initializer: initializer of W when the layer owns it.
      refresh_every_n_steps: refresh an adaptive sampler inside the training step, on the
        layer's training calls 0, n, 2n, ... (a checkpointed `training_steps` weight counts them),
        before that step draws. Default None: `CodebookRefresh` or `refresh_sampler()` refresh.
        For `steps_per_execution > 1` (TPUs), `ParameterServerStrategy` and custom loops, where
        batch callbacks cannot keep a step schedule; refused under multi-replica strategies
        (TensorFlow cannot update mirrored variables in a conditional). NaN/Inf in W or b keep the
        previous state (a compiled step cannot raise).
      logq_correction: "standard" (default, as TF and TFRS), "negatives_only" or "corrected"
        (needs `remove_accidental_hits=True`); see `tf_adaptive_softmax.estimator`. Configs saved
        with the deprecated `correct_positive` load with the same estimator.
      **kwargs: Keras Layer arguments (`name`, `dtype`, ...).

    Raises:
      ValueError: for a sampler built for another N, num_samples < 1, an unknown
        `logq_correction` or "corrected" without hit removal.
      TypeError: for a `sampler` that is not a `Sampler`, or a `tied_embedding` that is not a layer.

    Example:
        >>> import tensorflow as tf
        >>> import tf_adaptive_softmax as tfas
        >>> K = tf.keras
        >>> features = K.Input((16,)); labels = K.Input((), dtype="int32")
        >>> query = K.layers.Dense(32)(features)
        >>> output = tfas.AdaptiveSampledSoftmaxLoss(
        ...     1000, tfas.samplers.Uniform(1000), num_samples=20, add_to_model_loss=True)
        >>> per_example_loss = output((query, labels))
        >>> model = K.Model([features, labels], per_example_loss)
        >>> model.compile(optimizer="adam")
        >>> x = tf.random.normal([64, 16]); y = tf.random.uniform([64], 0, 1000, tf.int32)
        >>> _ = model.fit([x, y], epochs=1, verbose=0)
    """

    def __init__(
        self,
        num_classes: int,
        sampler: Optional[Sampler] = None,
        num_samples: int = 64,
        use_bias: bool = True,
        tied_embedding: Optional[Any] = None,
        remove_accidental_hits: bool = True,
        add_to_model_loss: bool = False,
        absolute_softmax: bool = False,
        shared_negatives: bool = False,
        embeddings_initializer: Any = "uniform",
        refresh_every_n_steps: Optional[int] = None,
        logq_correction: str = "standard",
        **kwargs: Any,
    ):
        logq_correction = _validation.resolve_logq_correction(logq_correction, kwargs.pop("correct_positive", None))
        # The softmax and log q are computed in float32 even under mixed precision.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = _validation.check_positive_int(num_classes, "num_classes")
        self.num_samples = _validation.check_num_samples(num_samples)
        sampler = deserialize(sampler)
        if sampler is not None:
            if not isinstance(sampler, Sampler):
                raise TypeError(f"`sampler` must be a tf_adaptive_softmax Sampler or None; got {sampler!r}.")
            if sampler.num_classes != self.num_classes:
                raise ValueError(
                    f"`sampler` was built for num_classes={sampler.num_classes} but this layer has "
                    f"num_classes={self.num_classes}."
                )
        self.sampler = sampler
        self.use_bias = bool(use_bias)
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.add_to_model_loss = bool(add_to_model_loss)
        self.absolute_softmax = bool(absolute_softmax)
        self.shared_negatives = bool(shared_negatives)
        self.logq_correction = estimator._check_logq_correction(logq_correction, self.remove_accidental_hits)
        self.embeddings_initializer = K.initializers.get(embeddings_initializer)
        self.refresh_every_n_steps = (
            None
            if refresh_every_n_steps is None
            else _validation.check_positive_int(refresh_every_n_steps, "refresh_every_n_steps")
        )
        self._training_steps = None
        if tied_embedding is not None and not hasattr(tied_embedding, "build"):
            raise TypeError("`tied_embedding` must be an Embedding layer (it provides the class table).")
        self._tied = Untracked(layer=tied_embedding, embeddings=None)
        self.embedding_dim: Optional[int] = None
        self._refresh: Optional[CompiledRefresh] = None

    def build(self, input_shape):
        nested = isinstance(input_shape, (list, tuple)) and not isinstance(input_shape[0], (int, type(None)))
        dim = (input_shape[0] if nested else input_shape)[-1]
        if dim is None:
            raise ValueError("The query's last dimension (the embedding width) must be known.")
        self.build_for_dim(int(dim))

    def build_for_dim(self, dim: int) -> None:
        """Creates W (or ties it), b and the sampler state for query width `dim` (once).

        Args:
          dim: d, the query width.

        Raises:
          ValueError: a tied Embedding whose table is not [N, dim].
        """
        if self.embedding_dim is not None:
            return
        self.embedding_dim = dim
        tied = self._tied.layer
        if tied is not None:
            if not tied.built:
                tied.build((None,))
            _validation.check_embedding_shape(
                tf.convert_to_tensor(tied.embeddings), self.num_classes, dim, "tied_embedding"
            )
            self._tied.embeddings = tied.embeddings
            self._class_embeddings = None
        else:
            self._class_embeddings = self.add_weight(
                name="class_embeddings",
                shape=(self.num_classes, dim),
                initializer=self.embeddings_initializer,
                trainable=True,
            )
        self.bias = (
            self.add_weight(name="class_bias", shape=(self.num_classes,), initializer="zeros", trainable=True)
            if self.use_bias
            else None
        )
        if self.sampler is not None:
            self.sampler.bind(self.class_embeddings, self.bias)
            self.sampler.build_state(dim)
        if self.refresh_every_n_steps is not None and self.sampler is not None and self.sampler.adaptive:
            # Only with an in-step schedule: layers saved without one keep their variable list.
            self._training_steps = self.add_weight(
                name="training_steps",
                shape=(),
                dtype="int64",
                initializer="zeros",
                trainable=False,
                aggregation=ONLY_FIRST_REPLICA,
            )
        self.built = True

    @property
    def class_embeddings(self):
        """The class embedding variable W [N, d] (the tied Embedding's table when tied)."""
        return self._tied.embeddings if self._tied.layer is not None else self._class_embeddings

    @property
    def class_bias(self):
        """The class bias variable [N], or None."""
        return self.bias

    def _weights(self):
        bias = None if self.bias is None else raw_variable(self.bias)
        return raw_variable(self.class_embeddings), bias

    def _logit_transform(self):
        return tf.abs if self.absolute_softmax else None

    def call(self, inputs, training=None):
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
            raise ValueError("Call the layer on `(query, labels)` or `(query, labels, sample_weight)`.")
        query, labels = inputs[0], inputs[1]
        sample_weight = inputs[2] if len(inputs) == 3 else None
        loss = self.per_example_loss(query, labels, sample_weight, training=bool(training))
        if self.add_to_model_loss:
            self.add_loss(tf.reduce_mean(loss))
        return loss

    def per_example_loss(
        self, query: TensorLike, labels: TensorLike, sample_weight: Optional[TensorLike] = None, training: bool = False
    ) -> tf.Tensor:
        """The per-example loss: sampled when `training` and a sampler is set, else exact.

        Args:
          query: [B, d] queries, or [B, T, d] for sequence models (every position is one example).
          labels: [B] or [B, num_true] class ids ([B, T] or [B, T, num_true] with a [B, T, d] query).
          sample_weight: optional [B] (or [B, T]) weights. Default None.
          training: the sampled loss when True and a sampler is set. Default False.

        Returns:
          float32 [B] ([B, T] for a [B, T, d] query); NaN rows for labels outside [0, N) under XLA.

        Raises:
          ValueError, TypeError: queries not [B, d] with the layer's d, labels of the wrong rank
            or dtype; tf.errors.InvalidArgumentError: a label outside [0, N) (outside XLA).
        """
        query = tf.convert_to_tensor(query)
        if query.shape.rank == 3:
            return self._per_position_loss(query, labels, sample_weight, training)
        query = _validation.as_queries(query, "query", width=self.embedding_dim)
        if self.embedding_dim is None:
            self.build_for_dim(int(query.shape[-1]))
        labels = _validation.as_label_matrix(labels)
        valid = _validation.label_validity(labels, self.num_classes)
        labels = _validation.checked_ids(labels, self.num_classes)
        weights, bias = self._weights()
        if training and self.sampler is not None:
            # Only "standard" corrects the positive: the others need no log q of it.
            positive_corrected = self.logq_correction == "standard"
            with tf.control_dependencies(self._refresh_if_due()):
                true_log_q = None
                if self.shared_negatives:
                    sampled_ids, sampled_log_q = self.sampler.sample_shared(query, self.num_samples)
                    if positive_corrected:
                        true_log_q = self.sampler.mixture_log_prob(query, labels)
                elif positive_corrected:  # one pass gives the draws and the positives' log q
                    sampled_ids, sampled_log_q, true_log_q = self.sampler.sample_with_log_prob(
                        query, self.num_samples, labels
                    )
                else:
                    sampled_ids, sampled_log_q = self.sampler.sample(query, self.num_samples)
            logits = estimator.sampled_softmax_logits(
                query,
                labels,
                sampled_ids,
                sampled_log_q,
                weights,
                bias,
                true_log_q=true_log_q,
                logq_correction=self.logq_correction,
                remove_accidental_hits=self.remove_accidental_hits,
                logit_transform=self._logit_transform(),
            )
            loss = estimator._sampled_cross_entropy(logits, labels.shape[-1], self.logq_correction)
            if self.sampler.has_auxiliary_loss:
                loss += self._sampler_loss(query, labels, sampled_ids, logits, weights)
        else:
            loss = estimator.full_softmax_loss(query, labels, weights, bias, logit_transform=self._logit_transform())
        return _reduction.weighted(_validation.poison_invalid_rows(loss, valid), sample_weight)

    def _sampler_loss(self, query, labels, sampled_ids, logits, weights) -> tf.Tensor:
        """The sampler's own loss [B] (learned codebooks) on this step's logits; trains only it."""
        if sampled_ids.shape.rank == 1:  # shared by the batch
            sampled_ids = tf.broadcast_to(sampled_ids, tf.stack([tf.shape(labels)[0], sampled_ids.shape[0]]))
        candidates = tf.concat([labels, sampled_ids], axis=1)
        positive_embeddings = tables.lookup_rows(weights, labels)
        assert self.sampler is not None  # only called with a sampler
        return self.sampler.auxiliary_loss(query, candidates, logits, positive_embeddings)

    def _per_position_loss(self, query, labels, sample_weight, training):
        labels = tf.convert_to_tensor(labels)
        if labels.shape.rank not in (2, 3):
            raise ValueError(
                f"With a [batch, time, dim] query, `labels` must be [batch, time(, num_true)]; got {labels.shape}."
            )
        leading = tf.shape(query)[:2]
        flat_labels = tf.reshape(labels, [-1] if labels.shape.rank == 2 else [-1, labels.shape[-1]])
        flat_weight = None if sample_weight is None else tf.reshape(sample_weight, [-1])
        loss = self.per_example_loss(
            tf.reshape(query, [-1, query.shape[-1]]), flat_labels, flat_weight, training=training
        )
        return tf.reshape(loss, leading)

    def logits(self, query: TensorLike) -> tf.Tensor:
        """All N logits, whose softmax is the prediction distribution (no sampler involved).

        Args:
          query: [B, d] (or [B, T, d]) queries.

        Returns:
          float32 [B, N] ([B, T, N]).

        Raises:
          ValueError, TypeError: a query not [B, d] with the layer's d, or integer queries.
        """
        query = tf.convert_to_tensor(query)
        if query.shape.rank == 3:
            flat = self.logits(tf.reshape(query, [-1, query.shape[-1]]))
            return tf.reshape(flat, tf.concat([tf.shape(query)[:2], [self.num_classes]], 0))
        query = _validation.as_queries(query, "query", width=self.embedding_dim)
        if self.embedding_dim is None:
            self.build_for_dim(int(query.shape[-1]))
        weights, bias = self._weights()
        return estimator._full_logits(query, weights, bias, self._logit_transform())

    def top_k(self, query: TensorLike, k: int = 10) -> Tuple[tf.Tensor, tf.Tensor]:
        """The k highest logits of each query over all N classes, best first (serving).

        Args:
          query: [B, d] queries.
          k: how many classes. Default 10.

        Returns:
          (scores [B, k] float32, ids [B, k] int32).

        Raises:
          ValueError: k below 1 or above N.
        """
        k = _validation.check_positive_int(k, "k")
        if k > self.num_classes:
            raise ValueError(f"`k` must be <= num_classes={self.num_classes}; got {k}.")
        scores, ids = tf.math.top_k(self.logits(query), k=k)
        return scores, ids

    def _refresh_if_due(self) -> list:
        """With `refresh_every_n_steps`: refreshes the sampler when this training call's index is
        a multiple of it, then counts the call; returns the ops the step's draws must follow."""
        if self._training_steps is None:
            return []
        assert self.sampler is not None and self.refresh_every_n_steps is not None  # set in build
        return refresh_on_schedule(
            self.sampler, self._weights, raw_variable(self._training_steps), self.refresh_every_n_steps
        )

    def refresh_sampler(self, on_nonfinite: str = "raise") -> bool:
        """Rebuilds the sampler's adaptive state from W and b (what `CodebookRefresh` calls).

        Args:
          on_nonfinite: NaN/Inf in W or b raise ("raise", default) or keep the previous state with
            a warning ("keep").

        Returns:
          False when "keep" kept the previous state, else True.

        Raises:
          ValueError: an unknown `on_nonfinite`.
          tf.errors.InvalidArgumentError: NaN or Inf in W or b with "raise".
        """
        _validation.check_nonfinite_policy(on_nonfinite)
        if self.sampler is None or self.embedding_dim is None:
            return True
        if self._refresh is None:
            self._refresh = CompiledRefresh(self.sampler, self._weights, owner=self)
        return self._refresh(on_nonfinite)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "sampler": None if self.sampler is None else serialize(self.sampler),
                "num_samples": self.num_samples,
                "use_bias": self.use_bias,
                "remove_accidental_hits": self.remove_accidental_hits,
                "add_to_model_loss": self.add_to_model_loss,
                "absolute_softmax": self.absolute_softmax,
                "shared_negatives": self.shared_negatives,
                "embeddings_initializer": K.initializers.serialize(self.embeddings_initializer),
                "refresh_every_n_steps": self.refresh_every_n_steps,
                "logq_correction": self.logq_correction,
            }
        )
        return config

    def compute_output_shape(self, input_shape):
        query_shape = input_shape[0]
        return tuple(query_shape[:-1])

"""The contract every proposal distribution keeps (DESIGN §3.2).

A sampler is a Keras layer (its state travels with `.keras` files and checkpoints) with `sample`,
`log_prob` (normalized over all N classes), their shared-negatives forms and `refresh`, which
assigns to fixed-shape variables: a compiled step sees the new state without retracing. Seeds are
stateless int32 (XLA); `seed=None` draws from the sampler's own seed stream, a variable.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

from tf_adaptive_softmax import _validation
from tf_adaptive_softmax._keras import ONLY_FIRST_REPLICA, K, Untracked
from tf_adaptive_softmax._ops import tables
from tf_adaptive_softmax._ops.random import per_replica, seed_pair
from tf_adaptive_softmax._types import TensorLike
from tf_adaptive_softmax._validation import check_nonfinite_policy
from tf_adaptive_softmax.samplers import _mixture, _state

__all__ = ["Sampler"]


class Sampler(K.layers.Layer):
    """Base of all proposal distributions: subclasses implement `_sample`, `_log_prob`, `_refresh`.

    Args:
      num_classes: size N of the output space.
      seed: optional int; seeds the sampler's own stream used when `sample(seed=None)`.
      **kwargs: Keras Layer arguments (`name`, ...).

    Raises:
      ValueError: num_classes below 1.
    """

    #: True for samplers whose distribution depends on the model (refresh changes it).
    adaptive: bool = False
    #: True for samplers whose `_refresh` reads the table in row blocks (a dense read copies it whole).
    reads_table_in_blocks: bool = False
    #: True for samplers with state that `auxiliary_loss` trains; owners add that loss in training.
    has_auxiliary_loss: bool = False

    def __init__(self, num_classes: int, seed: Optional[int] = None, **kwargs: Any):
        kwargs.setdefault("dtype", "float32")
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.num_classes = _validation.check_positive_int(num_classes, "num_classes")
        self.seed = seed
        self._placement = Untracked(anchor=None)
        initial = [0 if seed is None else int(seed) % (2**31 - 1), 0]
        self._seed_state = self.add_weight(
            name="seed_state",
            shape=(2,),
            dtype="int32",
            trainable=False,
            aggregation=ONLY_FIRST_REPLICA,
            initializer=lambda shape, dtype=None: tf.constant(initial, dtype=tf.int32),
        )
        self.embedding_dim: Optional[int] = None

    def add_weight(self, *args: Any, **kwargs: Any) -> Any:
        """Keras' `add_weight`, with every state variable whole on one parameter server.

        A `ParameterServerStrategy` partitioner would split [2] seeds and [N] indices into shards
        that the draw's gathers and the refresh's assigns cannot use; TensorFlow never partitions
        a variable created beside a scalar anchor. The anchor is not a weight, so checkpoints and
        `.keras` files keep the same variables under every strategy.

        Args:
          *args, **kwargs: Keras' `Layer.add_weight` arguments.

        Returns:
          The new variable.
        """
        strategy = _state.parameter_server_strategy()
        if strategy is None:
            return super().add_weight(*args, **kwargs)
        if self._placement.anchor is None:
            self._placement.anchor = tf.Variable(0, trainable=False, name=f"{self.name}_placement")
        with strategy.extended.colocate_vars_with(self._placement.anchor):
            return super().add_weight(*args, **kwargs)

    def build_state(self, embedding_dim: int) -> None:
        """Creates the d-dependent state variables. Called by the loss layer's `build`.

        Args:
          embedding_dim: d, the width of the queries and class embeddings.
        """
        self.embedding_dim = int(embedding_dim)
        self.built = True

    def build(self, input_shape=None):
        if input_shape is not None and self.embedding_dim is None:
            self.build_state(int(input_shape[-1]))
        self.built = True

    def _constant_state(self, name: str, value, dtype: str, trainable: bool = False):
        """A state variable initialised to a NumPy constant (tables, indices); non-trainable
        unless the sampler learns it by gradient (`auxiliary_loss`)."""
        value = np.asarray(value)
        return self.add_weight(
            name=name,
            shape=value.shape,
            dtype=dtype,
            trainable=trainable,
            initializer=lambda shape, dtype=None: tf.constant(value),
        )

    def state_bytes(self) -> int:
        """Bytes held by the sampler's state variables (the seed stream excluded).

        Returns:
          The total size in bytes.
        """
        return sum(int(np.prod(w.shape)) * tf.as_dtype(w.dtype).size for w in self.weights if "seed" not in w.name)

    def compiled_refresh(self, read_weights: Callable[[], Tuple[Any, Any]]) -> Callable[[str], tf.Tensor]:
        """A graph function that refreshes the sampler from the current weights.

        Keep it and call it at every refresh (it only assigns) as `fn(on_nonfinite)`: the policy
        is a Python string, so each one is traced once.

        Args:
          read_weights: () -> (class_embeddings [N, d], class_bias [N] or None).

        Returns:
          `fn(on_nonfinite) -> ` `refresh`'s scalar bool.
        """
        return tf.function(
            lambda on_nonfinite: self.refresh(*read_weights(), on_nonfinite=check_nonfinite_policy(on_nonfinite)),
            autograph=False,
        )

    def bind(self, class_embeddings: Any, class_bias: Any = None) -> None:
        """Gives samplers that read the model's live weights (the `Softmax` oracle) a handle.

        Args:
          class_embeddings: the model's class table variable [N, d].
          class_bias: its bias variable [N], or None.
        """

    def sample(
        self, queries: TensorLike, num_samples: int, seed: Optional[TensorLike] = None
    ) -> Tuple[tf.Tensor, tf.Tensor]:
        """Draws `num_samples` class ids per query with replacement.

        Args:
          queries: [B, d] float queries.
          num_samples: m, draws per query (a Python int: it fixes the static shape).
          seed: optional int32 [2] (or int) seed; default: the sampler's own stream.

        Returns:
          ids: int32 [B, num_samples].
          log_q: float32 [B, num_samples], the normalized log-probability of each draw.

        Raises:
          ValueError: queries not [B, d] with the sampler's d, or num_samples below 1.
          TypeError: a tensor num_samples or integer queries.
        """
        num_samples = _validation.check_num_samples(num_samples)
        queries = _validation.as_queries(queries, width=self.embedding_dim)
        seed = self._next_seed() if seed is None else seed_pair(seed)
        ids, log_q = self._sample(queries, num_samples, per_replica(seed))
        # The sample axis is static (XLA and the estimator rely on it), whatever the sampler did.
        ids = tf.ensure_shape(ids, [queries.shape[0], num_samples])
        log_q = tf.ensure_shape(log_q, [queries.shape[0], num_samples])
        return tf.stop_gradient(ids), tf.stop_gradient(log_q)

    def sample_with_log_prob(
        self, queries: TensorLike, num_samples: int, ids: TensorLike, seed: Optional[TensorLike] = None
    ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """`sample(queries, num_samples, seed)` and `log_prob(queries, ids)` in one call.

        The draws are those `sample` makes from the same seed; samplers that share work between
        the two (MIDX's codeword scores and normalizer) override `_sample_with_log_prob`.

        Args:
          queries: [B, d].
          num_samples: m, draws per query.
          ids: [B, k] (or [B]) class ids whose log q is wanted, e.g. the positives.
          seed: optional int32 [2] seed (default: the sampler's stream, as `sample`).

        Returns:
          (ids [B, m] int32, log_q [B, m], log q of `ids` [B, k]).

        Raises:
          ValueError, TypeError: as `sample`, or ids of the wrong rank or dtype.
        """
        num_samples = _validation.check_num_samples(num_samples)
        queries = _validation.as_queries(queries, width=self.embedding_dim)
        ids = _validation.checked_ids(_validation.as_label_matrix(ids, name="ids"), self.num_classes, name="ids")
        seed = self._next_seed() if seed is None else seed_pair(seed)
        sampled, log_q, ids_log_q = self._sample_with_log_prob(queries, num_samples, per_replica(seed), ids)
        sampled = tf.ensure_shape(sampled, [queries.shape[0], num_samples])
        log_q = tf.ensure_shape(log_q, [queries.shape[0], num_samples])
        return tf.stop_gradient(sampled), tf.stop_gradient(log_q), tf.stop_gradient(ids_log_q)

    def sample_shared(
        self, queries: TensorLike, num_samples: int, seed: Optional[TensorLike] = None
    ) -> Tuple[tf.Tensor, tf.Tensor]:
        """Draws `num_samples` ids shared by the whole batch (TF's `sampled_softmax_loss` layout).

        The draws come from the batch mixture q̄(i) = (1/B)·Σ_b q(i | h_b), which for a static
        sampler is q itself. One [B, d] x [d, m] matmul then scores every query against every
        draw, and only m rows of W get a gradient, so a step costs far less than m draws per
        query; the price is a proposal less matched to each query.

        Args:
          queries: [B, d] float queries (an empty batch draws from one zero query).
          num_samples: m, draws for the whole batch.
          seed: optional int32 [2] (or int) seed; default: the sampler's own stream.

        Returns:
          ids: int32 [num_samples].
          log_q: float32 [num_samples], log q̄ of each draw (normalized).

        Raises:
          ValueError, TypeError: as `sample`.
        """
        num_samples = _validation.check_num_samples(num_samples)
        queries = _validation.as_queries(queries, width=self.embedding_dim)
        seed = self._next_seed() if seed is None else seed_pair(seed)
        ids, log_q = self._sample_shared(queries, num_samples, per_replica(seed))
        ids = tf.ensure_shape(ids, [num_samples])
        log_q = tf.ensure_shape(log_q, [num_samples])
        return tf.stop_gradient(ids), tf.stop_gradient(log_q)

    def mixture_log_prob(self, queries: TensorLike, ids: TensorLike) -> tf.Tensor:
        """log q̄ of `ids` under the batch mixture of `queries`, the distribution `sample_shared`
        draws from.

        Args:
          queries: [B, d] float queries.
          ids: integer class ids of any shape.

        Returns:
          float32, the shape of `ids`.

        Raises:
          ValueError, TypeError: queries not [B, d], or float ids.
        """
        queries = _validation.as_queries(queries, width=self.embedding_dim)
        ids = _validation.checked_ids(_validation.as_ids(ids, "ids"), self.num_classes, name="ids")
        flat = tf.reshape(ids, [-1])
        return tf.stop_gradient(tf.reshape(self._mixture_log_prob(queries, flat), tf.shape(ids)))

    def log_prob(self, queries: TensorLike, ids: TensorLike) -> tf.Tensor:
        """Normalized log q of `ids` under each query's proposal.

        Args:
          queries: [B, d] float queries.
          ids: [B, k] (or [B]) integer class ids.

        Returns:
          float32 [B, k] ([B, 1] for [B] ids); `logsumexp` over all N classes is 0.

        Raises:
          ValueError, TypeError: queries not [B, d], ids not [B] or [B, k], or float ids.
        """
        queries = _validation.as_queries(queries, width=self.embedding_dim)
        ids = _validation.as_label_matrix(ids, name="ids")
        ids = _validation.checked_ids(ids, self.num_classes, name="ids")
        return tf.stop_gradient(self._log_prob(queries, ids))

    def auxiliary_loss(
        self,
        queries: TensorLike,
        candidate_ids: TensorLike,
        target_logits: TensorLike,
        positive_embeddings: Optional[TensorLike] = None,
    ) -> tf.Tensor:
        """Per-query loss [B] that trains the sampler's own trainable state; zeros for samplers
        without any (`has_auxiliary_loss` False).

        The owners of a sampler add it to the training loss (the loss layer per example,
        `AdaptiveRetrieval` per query); call it yourself in a custom loop that uses a bare sampler.
        Its gradient reaches only the sampler's variables: the queries, targets and embeddings
        are held constant (`stop_gradient`).

        Args:
          queries: [B, d] the queries the proposal is conditioned on.
          candidate_ids: [B, S] classes the model scored for each query: the positives first,
            then the sampled negatives (the estimator's column order).
          target_logits: [B, S] the model's logits over the candidates as the sampled loss sees
            them (each corrected by -log of its expected count, accidental hits masked): their
            softmax is the self-normalized importance estimate of the model's softmax p there.
          positive_embeddings: optional [B, T, d] (or [B, d]) class embeddings of the first T
            candidates (the positives), for a sampler's reconstruction term.

        Returns:
          float32 [B].

        Raises:
          ValueError: `target_logits` not shaped like `candidate_ids`, or `positive_embeddings` of
            the wrong shape.
        """
        queries = _validation.as_queries(queries, width=self.embedding_dim)
        if not self.has_auxiliary_loss:
            return tf.zeros(tf.shape(queries)[:1])
        ids, target_logits, positive_embeddings = _validation.auxiliary_loss_inputs(
            candidate_ids, target_logits, positive_embeddings, self.num_classes, self.embedding_dim
        )
        return self._auxiliary_loss(tf.stop_gradient(queries), ids, target_logits, positive_embeddings)

    def _auxiliary_loss(self, queries, candidate_ids, target_logits, positive_embeddings):
        raise NotImplementedError

    def refresh(
        self, class_embeddings: TensorLike, class_bias: Optional[TensorLike] = None, on_nonfinite: str = "raise"
    ) -> tf.Tensor:
        """Rebuilds adaptive state from the current class embeddings [N, d] and optional bias [N].

        Checks the shapes, then (adaptive samplers) that the values are finite, then calls
        `_refresh`. NaN or Inf never reaches the state: with `on_nonfinite="raise"` (default) an
        `InvalidArgumentError` is raised before anything is assigned; with `"keep"` the previous
        state stays and the call returns False (eagerly it also warns). The index is never left
        half-updated. A no-op for static samplers.

        Args:
          class_embeddings: [N, d] class table (a variable, a tensor, or a sharded table).
          class_bias: optional [N] bias (MIDX's `include_bias` folds it in). Default None.
          on_nonfinite: "raise" (default) or "keep".

        Returns:
          A scalar bool tensor: True when the inputs were accepted.

        Raises:
          ValueError: embeddings not [N, d], a bias not [N], or an unknown `on_nonfinite`.
          tf.errors.InvalidArgumentError: NaN or Inf in the inputs with "raise".
        """
        check_nonfinite_policy(on_nonfinite)
        # A float32 variable (sharded or not) stays a variable for samplers that read it a block
        # of rows at a time; anything else becomes one tensor.
        in_blocks = self.reads_table_in_blocks and tables.is_table_variable(class_embeddings)
        in_blocks = in_blocks and class_embeddings.dtype == tf.float32
        if not in_blocks:
            class_embeddings = tf.convert_to_tensor(class_embeddings)
        shape = class_embeddings.shape
        if self.embedding_dim is None and shape.rank == 2 and shape[-1] is not None:
            self.build_state(int(shape[-1]))
        _validation.check_embedding_shape(class_embeddings, self.num_classes, self.embedding_dim, "class_embeddings")
        class_bias = _validation.as_class_bias(class_bias, self.num_classes)
        if not self.adaptive:
            return tf.constant(True)
        embeddings = class_embeddings if in_blocks else tf.cast(class_embeddings, tf.float32)
        return _state.refresh_if_finite(self, embeddings, class_bias, on_nonfinite)

    def _refresh(self, class_embeddings: tf.Tensor, class_bias) -> None:
        """Assigns new adaptive state; `class_embeddings` is validated, float32 and finite."""

    def _sample(self, queries, num_samples, seed):
        raise NotImplementedError

    def _sample_with_log_prob(self, queries, num_samples, seed, ids):
        """Draws and the log q of `ids`; override to share work between the two."""
        sampled, log_q = self._sample(queries, num_samples, seed)
        return sampled, log_q, self._log_prob(queries, ids)

    def _log_prob(self, queries, ids):
        raise NotImplementedError

    def _sample_shared(self, queries, num_samples, seed):
        return _mixture.shared_draw(self, queries, num_samples, seed)

    def _mixture_log_prob(self, queries, ids):
        return _mixture.mixture_log_prob(self, queries, ids)

    def _next_seed(self) -> tf.Tensor:
        seed = tf.identity(self._seed_state)
        self._seed_state.assign_add(tf.constant([0, 1], dtype=tf.int32))
        return seed

    @staticmethod
    def _batch_size(queries: tf.Tensor) -> tf.Tensor:
        return tf.shape(queries)[0]

    def _constant_log_prob(self, queries, ids, log_q) -> tf.Tensor:
        return tf.fill(tf.shape(ids), tf.constant(log_q, tf.float32))

    def call(self, queries, ids=None):
        """`sampler(queries, ids)` is `log_prob`; provided so the layer can be called in a model."""
        return self.log_prob(queries, ids)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "seed": self.seed})
        for key in ("trainable", "dtype"):
            config.pop(key, None)
        return config

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes})"


# No Python control flow on tensors: not transpiled by AutoGraph (1.5 s of a draw's first trace).
for _method in ("sample", "sample_with_log_prob", "sample_shared", "mixture_log_prob", "log_prob", "refresh"):
    setattr(Sampler, _method, tf.autograph.experimental.do_not_convert(getattr(Sampler, _method)))

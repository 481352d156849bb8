"""Catalogue negatives for keras-rs retrieval models (Keras 3).

A keras-rs two-tower model scores each query against the batch's candidates and corrects those
logits with keras-rs's own layers (`SamplingProbabilityCorrection`, `RemoveAccidentalHits`).
`CatalogueNegatives` appends `num_samples` negatives per query drawn by one of our samplers from
the whole catalogue, with their exact logQ correction, so the softmax cross-entropy over the
result is `retrieval.mixed_negatives_loss` (the loss `tfrs.AdaptiveRetrieval` trains with):

    [ in-batch logits − log C (when they were logQ-corrected) | <h, e(s_j)> / τ − log(m·q(s_j | h / τ)) ]

Its `refresh_sampler` (what `CodebookRefresh` calls) refreshes the sampler from the catalogue's
embeddings and re-indexes a `keras_rs.layers.BruteForceRetrieval` with them, so evaluation and
serving read the same vectors the model scores.

keras-rs 0.4.0's `RemoveAccidentalHits` adds ~1e-40 to the logits it should mask, which leaves
them unchanged (keras-team/keras-rs#206): this layer masks the in-batch accidental hits itself
(other columns with the row's positive id), as `tfrs.tasks.Retrieval` does; with a fixed keras-rs
layer before it, the masking is the same.

Needs Keras 3 and keras-rs (`pip install "tf_adaptive_softmax[keras-rs]"`).

Example:
    >>> import keras, keras_rs, tensorflow as tf
    >>> import tf_adaptive_softmax as tfas
    >>> from tf_adaptive_softmax.keras_rs import CatalogueNegatives
    >>> items = keras.layers.Embedding(100, 8)
    >>> negatives = CatalogueNegatives(tfas.samplers.MIDX(100, num_codewords=4, seed=0), items, num_samples=16)
    >>> ids = tf.constant([3, 7, 3, 9])
    >>> queries, positives = tf.random.normal([4, 8]), items(ids)
    >>> logits = keras.ops.matmul(queries, keras.ops.transpose(positives))
    >>> logits, labels = negatives(logits, keras.ops.eye(4), queries, ids, training=True)
    >>> logits.shape, negatives.refresh_sampler()
    (TensorShape([4, 20]), True)
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import tensorflow as tf

from tf_adaptive_softmax import _validation
from tf_adaptive_softmax._keras import IS_KERAS_3, K, Untracked, raw_variable
from tf_adaptive_softmax._refresh import CompiledRefresh
from tf_adaptive_softmax._types import TensorLike
from tf_adaptive_softmax._validation import check_nonfinite_policy
from tf_adaptive_softmax.retrieval import _catalogue_draws, _mask_accidental_hits
from tf_adaptive_softmax.samplers.base import Sampler

if not IS_KERAS_3:
    raise ImportError(
        "tf_adaptive_softmax.keras_rs needs Keras 3 (keras-rs is built on it): unset TF_USE_LEGACY_KERAS. "
        "Under tf_keras, use tf_adaptive_softmax.tfrs.AdaptiveRetrieval."
    )
try:
    import keras_rs  # noqa: F401  (its layers produce the in-batch logits this layer extends)
except ImportError as error:  # pragma: no cover - exercised without the extra
    raise ImportError(
        'tf_adaptive_softmax.keras_rs needs keras-rs: pip install "tf_adaptive_softmax[keras-rs]".'
    ) from error

__all__ = ["CatalogueNegatives"]


class CatalogueNegatives(K.layers.Layer):
    """Appends adaptive catalogue negatives to keras-rs in-batch retrieval logits.

    Args:
      sampler: a `Sampler` over the item ids (MIDX for an adaptive proposal).
      item_tower: how item ids become candidate embeddings: a `keras.layers.Embedding` (its table
        refreshes the sampler and `index`), or a callable `ids -> [..., d]` (a candidate tower, e.g.
        the table L2-normalized), run over all `sampler.num_classes` ids at every refresh.
      num_samples: m catalogue negatives per query (or shared by the batch). Default 64.
      temperature: the τ the in-batch logits were divided by, or None. Catalogue logits are
        divided by it too, and the proposal sees h / τ, the model's own scale. Default None.
      shared_negatives: one set of m negatives for the whole batch, drawn from the batch mixture
        of the proposal. Default False.
      index: an optional `keras_rs.layers.BruteForceRetrieval`, given the item table at every
        `refresh_sampler`. Default None.
      name: the layer's name. Default None.

    Raises:
      TypeError: a `sampler` that is not a `Sampler`, or an `item_tower` that is not callable.
      ValueError: num_samples < 1, a non-positive temperature, or a sampler with an auxiliary
        loss (learned codebooks: use `retrieval.mixed_negatives_loss`).
    """

    def __init__(
        self,
        sampler: Sampler,
        item_tower: Any,
        num_samples: int = 64,
        *,
        temperature: Optional[float] = None,
        shared_negatives: bool = False,
        index: Any = None,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        if not isinstance(sampler, Sampler):
            raise TypeError(f"`sampler` must be a tf_adaptive_softmax Sampler; got {sampler!r}.")
        if not callable(item_tower):
            raise TypeError(
                f"`item_tower` must be an Embedding layer or a callable ids -> embeddings; got {item_tower!r}."
            )
        if sampler.has_auxiliary_loss:
            raise ValueError(
                "A sampler with an auxiliary loss (learned codebooks) needs the loss itself: "
                "call tf_adaptive_softmax.retrieval.mixed_negatives_loss from compute_loss."
            )
        if temperature is not None and not temperature > 0:
            raise ValueError(f"`temperature` must be positive or None; got {temperature!r}.")
        self.sampler = sampler  # tracked: its state travels with the model's checkpoints
        self.num_samples = _validation.check_num_samples(num_samples)
        self.temperature = temperature
        self.shared_negatives = bool(shared_negatives)
        # The table and index belong to the user's model: tracking them here would list them twice.
        self._items = Untracked(tower=item_tower, index=index)
        self._refresh: Optional[CompiledRefresh] = None

    def build(
        self,
        logits_shape: Any,
        labels_shape: Any = None,
        query_embeddings_shape: Any = None,
        candidate_ids_shape: Any = None,
    ) -> None:
        # The sampler's state is sized by the embedding width: created with the layer, not mid-trace.
        if self.sampler.adaptive and self.sampler.embedding_dim is None and query_embeddings_shape is not None:
            self.sampler.build_state(int(query_embeddings_shape[-1]))
        self.built = True

    def _catalogue(self) -> tf.Tensor:
        """[N, d] float32: the Embedding's table, or the tower over every item id."""
        tower = self._items.tower
        if isinstance(tower, K.layers.Embedding):
            if not tower.built:
                tower.build((None,))
            return tf.cast(tf.convert_to_tensor(raw_variable(tower.embeddings)), tf.float32)
        return tf.cast(tower(tf.range(self.sampler.num_classes)), tf.float32)

    def call(
        self,
        logits: TensorLike,
        labels: TensorLike,
        query_embeddings: TensorLike,
        candidate_ids: TensorLike,
        *,
        sampling_probability_corrected: bool = False,
        training: Optional[bool] = None,
    ) -> Tuple[tf.Tensor, tf.Tensor]:
        """Masks the in-batch accidental hits and, in training, appends the catalogue columns.

        Args:
          logits: [B, C] in-batch logits, query i's positive in column i (keras-rs's scores,
            divided by `temperature` if any, after `SamplingProbabilityCorrection` if used).
          labels: [B, C] one-hot labels (the identity in the first B columns).
          query_embeddings: [B, d] the queries h.
          candidate_ids: [C] item ids of the in-batch candidates.
          sampling_probability_corrected: whether `logits` subtract log p (keras-rs's
            `SamplingProbabilityCorrection`); they then also subtract log C, their expected count,
            as the catalogue columns subtract log m·q. Default False.
          training: append catalogue negatives only when True (evaluation scores the in-batch
            columns alone, as `tfrs.tasks.Retrieval`). Default None (False).

        Returns:
          (logits [B, C + m], labels [B, C + m]) in training, else ([B, C], [B, C]).

        Raises:
          tf.errors.InvalidArgumentError: negative `candidate_ids`.
        """
        logits = tf.convert_to_tensor(logits)
        query = tf.convert_to_tensor(query_embeddings)
        ids = _validation.as_ids(tf.reshape(candidate_ids, [-1]), "candidate_ids")
        logits = _mask_accidental_hits(logits, ids)
        labels = tf.cast(labels, logits.dtype)
        if not training:
            return logits, labels
        if sampling_probability_corrected:
            logits = logits - tf.math.log(tf.cast(tf.shape(logits)[1], logits.dtype))
        catalogue, _ = _catalogue_draws(
            query,
            ids,
            self.sampler,
            self.num_samples,
            self._items.tower,
            self.temperature,
            self.shared_negatives,
        )
        logits = tf.concat([logits, tf.cast(catalogue, logits.dtype)], axis=1)
        return logits, tf.concat([labels, tf.zeros_like(catalogue, labels.dtype)], axis=1)

    def refresh_sampler(self, on_nonfinite: str = "raise") -> bool:
        """Refreshes the sampler from the catalogue's embeddings, then re-indexes `index` with them.

        What `CodebookRefresh(layer)` calls. The catalogue is embedded once for both; the index is
        updated only after an accepted refresh.

        Args:
          on_nonfinite: NaN/Inf embeddings raise ("raise", default) or keep the previous sampler
            state and index with a warning ("keep").

        Returns:
          False when "keep" kept the previous state, else True.

        Raises:
          ValueError: an unknown `on_nonfinite`.
          tf.errors.InvalidArgumentError: NaN or Inf embeddings with "raise".
        """
        check_nonfinite_policy(on_nonfinite)
        table = self._catalogue()
        if self.sampler.adaptive and self.sampler.embedding_dim is None:
            self.sampler.build_state(int(table.shape[-1]))
        if self._refresh is None:
            self._refresh = CompiledRefresh(self.sampler, lambda: (self._catalogue(), None), owner=self)
        if not self._refresh(on_nonfinite, class_embeddings=table):
            return False
        if self._items.index is not None:
            self._items.index.update_candidates(table)
        return True

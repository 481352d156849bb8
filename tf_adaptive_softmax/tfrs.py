"""`AdaptiveRetrieval`: `tfrs.tasks.Retrieval` with catalogue negatives from an adaptive sampler.

TensorFlow Recommenders lives under tf_keras only: set `TF_USE_LEGACY_KERAS=1` before importing
TensorFlow. In Keras 3 mode importing this module raises an ImportError that says so.

The task wraps a `tfrs.tasks.Retrieval` (`retrieval=`, its loss, metrics and temperature) and
keeps its `call` signature, so swapping it in is a one-line change in `compute_loss`. Per query it
scores the in-batch candidates (as Retrieval does) plus `num_samples` negatives drawn from the
whole catalogue by `sampler` (mixed negatives):

    scores = [ q cᵀ / τ − log(C·p_in-batch)   |   <q, e(s_j)> / τ − log(m · q(s_j | q / τ)) ]
               in-batch columns (TFRS)             catalogue columns (exact, unclipped log q)

In-batch columns keep TFRS's `candidate_sampling_probability` semantics; catalogue columns subtract
the log expected count of each draw, never clipped (TFRS clips p at 1e-6, wrong past ~1M items).
Catalogue draws equal to the row's positive are masked; factorized metrics see only the B true
pairs, which sidesteps tensorflow/recommenders#642.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Tuple

import tensorflow as tf

from tf_adaptive_softmax import _reduction, _validation
from tf_adaptive_softmax import retrieval as mixed_negatives
from tf_adaptive_softmax._keras import IS_KERAS_3, K, Untracked, raw_variable

if IS_KERAS_3:
    raise ImportError(
        "tf_adaptive_softmax.tfrs needs TensorFlow Recommenders, which requires tf_keras: set "
        "TF_USE_LEGACY_KERAS=1 before TensorFlow is imported (and pip install tf_keras "
        "tensorflow-recommenders, the package's `tfrs` extra)."
    )

import tensorflow_recommenders as tfrs  # after the flavour check

from tf_adaptive_softmax._refresh import CompiledRefresh
from tf_adaptive_softmax._validation import check_nonfinite_policy
from tf_adaptive_softmax.samplers.base import Sampler

__all__ = ["AdaptiveRetrieval"]


#: `tfrs.tasks.Retrieval`'s own arguments, once taken directly (deprecated: pass `retrieval=`).
_RETRIEVAL_ARGUMENTS: Tuple[str, ...] = ("loss", "metrics", "batch_metrics", "loss_metrics", "temperature")
_RETRIEVAL_ARGUMENTS += ("num_hard_negatives", "remove_accidental_hits")


def _retrieval_task(retrieval, deprecated: dict) -> tfrs.tasks.Retrieval:
    """`retrieval`, or one built from the deprecated direct arguments (with a warning)."""
    unknown = set(deprecated) - set(_RETRIEVAL_ARGUMENTS)
    if unknown:
        raise TypeError(f"AdaptiveRetrieval got unexpected keyword arguments {sorted(unknown)}.")
    if deprecated:
        if retrieval is not None:
            raise ValueError(f"Pass {sorted(deprecated)} to the `retrieval` task, not beside it.")
        warnings.warn(
            f"AdaptiveRetrieval({', '.join(f'{key}=...' for key in sorted(deprecated))}) is deprecated: pass "
            "`retrieval=tfrs.tasks.Retrieval(...)` with them instead.",
            DeprecationWarning,
            stacklevel=3,
        )
        return tfrs.tasks.Retrieval(**deprecated)
    if retrieval is None:
        return tfrs.tasks.Retrieval()
    if not isinstance(retrieval, tfrs.tasks.Retrieval):
        raise TypeError(f"`retrieval` must be a tfrs.tasks.Retrieval or None; got {retrieval!r}.")
    return retrieval


class AdaptiveRetrieval(K.layers.Layer, tfrs.tasks.base.Task):
    """A retrieval task with in-batch plus adaptive catalogue negatives.

    Args:
      sampler: a `Sampler` over the catalogue ids, or None (then exactly `retrieval`).
      num_samples: catalogue negatives per query (or shared by the batch). Default 64.
      candidate_embeddings: how sampled ids become embeddings: an Embedding layer over item ids
        (its table also refreshes the sampler) or a callable `ids -> embeddings` (a candidate tower
        over an item-feature lookup, or the table L2-normalized; pass `catalogue_ids` so the
        sampler can be refreshed on what the tower returns). Required with a sampler.
      catalogue_ids: int ids [N] of the whole catalogue, used to embed it for `refresh_sampler`
        when `candidate_embeddings` is a callable. Default None.
      index: an optional `tfrs.layers.factorized_top_k.BruteForce` re-indexed with the catalogue
        embeddings after every refresh, so evaluation is not stale. Default None.
      retrieval: the `tfrs.tasks.Retrieval` whose loss, metrics, temperature, hard-negative mining
        and accidental-hit removal this task keeps (its in-batch columns are that task's scores).
        Default None: `tfrs.tasks.Retrieval()`. With a temperature τ the catalogue proposal sees
        h / τ, the model's own scale.
      shared_negatives: draw the `num_samples` catalogue negatives once for the whole batch from
        the batch mixture (the tower embeds m ids instead of B·m). Default False.
      logq_correction: "standard" (default: the positive keeps Retrieval's in-batch -log p),
        "negatives_only" (the positive raw) or "corrected" (Khrylchenko et al., RecSys 2025;
        training only, needs `candidate_sampling_probability` and `candidate_ids`, no hard-negative
        mining); see `tf_adaptive_softmax.retrieval`. No effect without sampling probabilities.
      cross_replica_candidates: under a multi-replica strategy (MirroredStrategy, TPUStrategy), use
        every replica's positives as extra in-batch negatives (equal per-replica batch sizes:
        batch with `drop_remainder=True`). Default False.
      refresh_batch_size: ids per tower call when embedding the catalogue. Default 4096.
      name: the layer's name. Default None.
      **deprecated: `Retrieval`'s own arguments and `correct_positive`, accepted for one release
        with a DeprecationWarning.

    Raises:
      TypeError: a `sampler` that is not a `Sampler`, or a `retrieval` that is not a Retrieval.
      ValueError: a sampler without `candidate_embeddings`, num_samples < 1, an unknown
        `logq_correction`, or "corrected" with hard-negative mining.

    Example (tf_keras mode):
        task = AdaptiveRetrieval(
            tfas.samplers.MIDX(num_items, seed=0), num_samples=64, candidate_embeddings=item_embedding_layer,
            retrieval=tfrs.tasks.Retrieval(temperature=0.2))
        # in tfrs.Model.compute_loss, exactly as with tfrs.tasks.Retrieval:
        loss = task(user_embeddings, item_embeddings, candidate_ids=item_ids,
                    compute_metrics=not training, training=training)
        # and keep the sampler in step: model.fit(..., callbacks=[CodebookRefresh(task)])
    """

    def __init__(
        self,
        sampler: Optional[Sampler] = None,
        num_samples: int = 64,
        candidate_embeddings: K.layers.Embedding | Callable[[tf.Tensor], tf.Tensor] | None = None,
        *,
        catalogue_ids: Any = None,
        index: Any = None,
        retrieval: Optional[tfrs.tasks.Retrieval] = None,
        shared_negatives: bool = False,
        logq_correction: str = "standard",
        cross_replica_candidates: bool = False,
        refresh_batch_size: int = 4096,
        name: Optional[str] = None,
        **deprecated: Any,
    ):
        super().__init__(name=name)
        logq_correction = _validation.resolve_logq_correction(
            logq_correction, deprecated.pop("correct_positive", None), stacklevel=4
        )
        self.retrieval = _retrieval_task(retrieval, deprecated)
        self._temperature = self.retrieval._temperature  # pylint: disable=protected-access
        self._num_hard_negatives = self.retrieval._num_hard_negatives  # pylint: disable=protected-access
        self._remove_accidental_hits = self.retrieval._remove_accidental_hits  # pylint: disable=protected-access
        if logq_correction == "corrected" and self._num_hard_negatives is not None:
            raise ValueError("`logq_correction='corrected'` cannot be combined with `num_hard_negatives`.")
        self.logq_correction = logq_correction
        if sampler is not None:
            if not isinstance(sampler, Sampler):
                raise TypeError(f"`sampler` must be a tf_adaptive_softmax Sampler or None; got {sampler!r}.")
            if candidate_embeddings is None:
                raise ValueError(
                    "`candidate_embeddings` (an Embedding layer or ids -> embeddings callable) "
                    "is required with a sampler."
                )
        self.sampler = sampler
        self.num_samples = _validation.check_num_samples(num_samples)
        self.refresh_batch_size = _validation.check_positive_int(refresh_batch_size, "refresh_batch_size")
        # The tower belongs to the user's model; tracking it here would list its weights twice.
        self._candidates = Untracked(tower=candidate_embeddings, index=index)
        self._catalogue_ids = None if catalogue_ids is None else tf.constant(catalogue_ids)
        self._cross_replica_candidates = bool(cross_replica_candidates)
        self.shared_negatives = bool(shared_negatives)
        # Graph functions built on first use (the tower may only be built by then), then reused.
        self._embed_catalogue: Optional[Callable] = None
        self._refresh: Optional[CompiledRefresh] = None
        self._catalogue_width: Optional[int] = None

    @property
    def factorized_metrics(self):
        return self.retrieval.factorized_metrics

    @factorized_metrics.setter
    def factorized_metrics(self, value):
        self.retrieval.factorized_metrics = value

    # -- catalogue ---------------------------------------------------------------------------
    def _embed_ids(self, ids: tf.Tensor) -> tf.Tensor:
        tower = self._candidates.tower
        return tf.cast(tower(ids), tf.float32)

    def _read_catalogue(self) -> tf.Tensor:
        """[N, d] float32 catalogue embeddings, as graph ops: the table's variable, or the tower
        run over `catalogue_ids` in fixed-size chunks inside one `tf.while_loop`."""
        tower = self._candidates.tower
        if isinstance(tower, K.layers.Embedding):
            return tf.cast(tf.convert_to_tensor(raw_variable(tower.embeddings)), tf.float32)
        ids = self._catalogue_ids
        assert ids is not None  # checked by _prepare_catalogue
        total, size = int(ids.shape[0]), min(self.refresh_batch_size, int(ids.shape[0]))
        num_chunks = -(-total // size)
        # Pad with the last id (a valid one) so that every chunk has the same static shape.
        padded = tf.concat([ids, tf.fill([num_chunks * size - total], ids[-1])], axis=0)
        chunks = tf.reshape(padded, [num_chunks, size])
        # One chunk in flight at a time: the loop exists to bound memory.
        _, parts = tf.while_loop(
            lambda index, _: index < num_chunks,
            lambda index, parts: (index + 1, parts.write(index, self._embed_ids(chunks[index]))),
            (tf.constant(0), tf.TensorArray(tf.float32, size=num_chunks)),
            parallel_iterations=1,
        )
        return tf.ensure_shape(parts.concat()[:total], [total, self._catalogue_width])

    def _prepare_catalogue(self) -> None:
        """Eager set-up before the first trace: build the tower (a tower's variables cannot be
        created inside the graph's loop) and the sampler's d-sized state. Runs once."""
        if self._embed_catalogue is not None:
            return
        tower = self._candidates.tower
        if isinstance(tower, K.layers.Embedding):
            if not tower.built:
                tower.build((None,))
            width = int(tower.embeddings.shape[-1])
        else:
            if self._catalogue_ids is None:
                raise ValueError("Refreshing through a candidate tower needs `catalogue_ids` (all item ids).")
            width = int(self._embed_ids(self._catalogue_ids[:1]).shape[-1])
        self._catalogue_width = width  # static d: quantizers split the embedding axis
        if self.sampler is not None and self.sampler.embedding_dim is None:
            self.sampler.build_state(width)
        # AutoGraph on (unlike the sampler's refresh): a tower's `call` may branch on tensors.
        self._embed_catalogue = tf.function(self._read_catalogue)

    def _catalogue(self) -> tf.Tensor:
        assert self._embed_catalogue is not None  # built by _prepare_catalogue
        return self._embed_catalogue()

    def catalogue_embeddings(self) -> tf.Tensor:
        """The embeddings of the whole catalogue, as the sampler is refreshed on them.

        Returns:
          [N, d] float32: the Embedding table, or the tower run over `catalogue_ids` in chunks of
          `refresh_batch_size` (one compiled graph function).

        Raises:
          ValueError: a callable `candidate_embeddings` without `catalogue_ids`.
        """
        self._prepare_catalogue()
        return self._catalogue()

    def refresh_sampler(self, on_nonfinite: str = "raise") -> bool:
        """Refreshes the sampler from the current catalogue embeddings (and re-indexes `index`).

        Reading the catalogue (the table, or the tower over `catalogue_ids` chunk by chunk) and
        the sampler's refresh (MIDX's k-means) run as one graph function, traced at the first
        call and reused. With an `index`, the catalogue is embedded once and serves both; the
        index is re-indexed only after an accepted refresh. What `CodebookRefresh(task)` calls.

        Args:
          on_nonfinite: NaN/Inf embeddings raise ("raise", default) or keep the previous sampler
            state and index with a warning ("keep").

        Returns:
          False when "keep" kept the previous state, else True.

        Raises:
          ValueError: an unknown `on_nonfinite`, or a tower without `catalogue_ids`.
          tf.errors.InvalidArgumentError: NaN or Inf embeddings with "raise".
        """
        check_nonfinite_policy(on_nonfinite)
        if self.sampler is None:
            return True
        index = self._candidates.index
        if self.sampler.adaptive or index is not None:
            self._prepare_catalogue()
        if self._refresh is None:
            # Called inside the refresh's graph, the catalogue function becomes part of it.
            self._refresh = CompiledRefresh(self.sampler, lambda: (self._catalogue(), None), owner=self)
        if index is None:
            return self._refresh(on_nonfinite)  # a no-op for static samplers
        # The sampler and the index share one pass of the tower over the catalogue.
        embeddings = self._catalogue()
        if not self._refresh(on_nonfinite, class_embeddings=embeddings):
            return False
        ids = self._catalogue_ids if self._catalogue_ids is not None else tf.range(tf.shape(embeddings)[0])
        index.index(embeddings, ids)
        return True

    def build(self, input_shape):
        # Sampler state is sized by the embedding width: create it with the task, not mid-trace.
        if self.sampler is not None and self.sampler.embedding_dim is None and input_shape[-1] is not None:
            self.sampler.build_state(int(input_shape[-1]))
        super().build(input_shape)

    # -- loss --------------------------------------------------------------------------------
    def call(
        self,
        query_embeddings: tf.Tensor,
        candidate_embeddings: tf.Tensor,
        sample_weight: Optional[tf.Tensor] = None,
        candidate_sampling_probability: Optional[tf.Tensor] = None,
        candidate_ids: Optional[tf.Tensor] = None,
        compute_metrics: bool = True,
        compute_batch_metrics: bool = True,
        score_mask: Optional[tf.Tensor] = None,
        training: Optional[bool] = None,
    ) -> tf.Tensor:
        """Same arguments and return value as `tfrs.tasks.Retrieval.call`.

        Catalogue negatives are added only in training (`training=True`, which `fit` passes);
        evaluation scores the in-batch candidates exactly as `Retrieval` does.
        """
        use_sampler = self.sampler is not None and bool(training)
        # The corrected logQ is a training loss: evaluation reports Retrieval's in-batch loss.
        logq_correction = self.logq_correction
        if logq_correction == "corrected" and not training:
            logq_correction = "standard"
        corrected = logq_correction == "corrected"
        if query_embeddings.shape.rank == 3:
            if use_sampler:
                raise ValueError("Multi-head (3-D) query embeddings are not supported with catalogue negatives.")
            return self.retrieval(
                query_embeddings,
                candidate_embeddings,
                sample_weight=sample_weight,
                candidate_sampling_probability=candidate_sampling_probability,
                candidate_ids=candidate_ids,
                compute_metrics=compute_metrics,
                compute_batch_metrics=compute_batch_metrics,
                score_mask=score_mask,
            )
        scores, labels, column_ids = mixed_negatives._mixed_negatives_scores_with_ids(
            query_embeddings,
            candidate_embeddings,
            candidate_ids,
            sampler=self.sampler if use_sampler else None,
            num_samples=self.num_samples,
            embed_ids=self._embed_ids,
            candidate_sampling_probability=candidate_sampling_probability,
            temperature=self._temperature,
            remove_accidental_hits=self._remove_accidental_hits,
            score_mask=score_mask,
            cross_replica_candidates=self._cross_replica_candidates,
            shared_negatives=self.shared_negatives,
            logq_correction=logq_correction,
        )
        sampler_loss = None
        if use_sampler and self.sampler is not None and self.sampler.has_auxiliary_loss:
            positives = tf.convert_to_tensor(candidate_embeddings)[: tf.shape(query_embeddings)[0]]
            queries = mixed_negatives._proposal_queries(query_embeddings, self._temperature)
            sampler_loss = mixed_negatives._sampler_loss(self.sampler, queries, scores, column_ids, positives)
        if self._num_hard_negatives is not None:
            scores, labels = tfrs.layers.loss.HardNegativeMining(self._num_hard_negatives)(scores, labels)
        per_query_loss = None
        if corrected:
            per_query_loss = mixed_negatives._corrected_logq_loss(scores, catalogue_negatives=use_sampler)
        return self._loss_and_metrics(
            labels,
            scores,
            sampler_loss=sampler_loss,
            per_query_loss=per_query_loss,
            query_embeddings=query_embeddings,
            candidate_embeddings=candidate_embeddings,
            sample_weight=sample_weight,
            candidate_ids=candidate_ids,
            compute_metrics=compute_metrics,
            compute_batch_metrics=compute_batch_metrics,
        )

    def _loss_and_metrics(
        self,
        labels,
        scores,
        *,
        query_embeddings,
        candidate_embeddings,
        sample_weight,
        candidate_ids,
        compute_metrics,
        compute_batch_metrics,
        sampler_loss=None,
        per_query_loss=None,
    ):
        task = self.retrieval
        # Our per-query terms are reduced as the task's loss reduces (TFRS's default: a sum).
        reduction = getattr(task._loss, "reduction", "sum")  # pylint: disable=protected-access
        if per_query_loss is None:
            loss = task._loss(y_true=labels, y_pred=scores, sample_weight=sample_weight)  # pylint: disable=protected-access
        else:
            loss = _reduction.reduce(per_query_loss, reduction, sample_weight)
        if sampler_loss is not None:
            loss += _reduction.reduce(sampler_loss, reduction, sample_weight)
        update_ops = [metric.update_state(loss) for metric in task._loss_metrics]  # pylint: disable=protected-access
        num_queries = tf.shape(query_embeddings)[0]
        if compute_metrics and query_embeddings.shape.rank == 2:
            true_ids = None if candidate_ids is None else candidate_ids[:num_queries]
            for metric in task.factorized_metrics:
                update_ops.append(
                    metric.update_state(
                        query_embeddings,
                        candidate_embeddings[:num_queries],
                        true_candidate_ids=true_ids,
                        sample_weight=sample_weight,
                    )
                )
        if compute_batch_metrics:
            for metric in task._batch_metrics:  # pylint: disable=protected-access
                update_ops.append(metric.update_state(labels, scores, sample_weight=sample_weight))
        with tf.control_dependencies([op for op in update_ops if op is not None]):
            return tf.identity(loss)

"""Mixed-negatives retrieval scores and loss, for any Keras flavour (no TFRS needed).

Two-tower retrieval scores each query against the batch's candidates (in-batch negatives) and,
here, against `num_samples` negatives per query drawn from the whole catalogue by a sampler:

    scores = [ q cᵀ / τ − log(C·p)   |   <q, e(s_j)> / τ − log(m · q(s_j | q / τ)) ]     labels = eye(B, C + m)

In-batch columns follow TFRS's conventions (temperature first, p clipped at 1e-6, accidental hits
masked) but subtract log(C·p), their expected count: log p alone would weigh the catalogue columns
C times too little. Catalogue columns subtract the exact log(m·q) and mask the row's positive. The
proposal sees q / τ, since the model's softmax over the catalogue is exp(<q, e> / τ).

The positive (query i's in-batch column i) is an in-batch draw, never a catalogue one:
`logq_correction` decides whether it keeps TFRS's in-batch correction ("standard", the default),
stays raw ("negatives_only") or follows Khrylchenko et al. 2025 ("corrected"; it needs
`candidate_sampling_probability`). Without a sampler, the scores are exactly `tfrs.tasks.Retrieval`'s.
`tfrs.AdaptiveRetrieval` and `keras_rs.CatalogueNegatives` build on these functions.

References:
  Yi et al., "Sampling-bias-corrected neural modeling for large corpus item recommendations", RecSys
  2019. Yang et al., "Mixed negative sampling for learning two-tower neural networks", WWW 2020.

Example:
    >>> import tensorflow as tf
    >>> from tf_adaptive_softmax import retrieval, samplers
    >>> items = tf.random.normal([100, 8])
    >>> loss = retrieval.mixed_negatives_loss(
    ...     tf.random.normal([4, 8]), tf.gather(items, [1, 2, 3, 4]), candidate_ids=[1, 2, 3, 4],
    ...     sampler=samplers.Uniform(100, seed=0), num_samples=16,
    ...     embed_ids=lambda ids: tf.gather(items, ids))
    >>> loss.shape
    TensorShape([])
"""

from __future__ import annotations

from typing import Optional, Tuple

import tensorflow as tf

from tf_adaptive_softmax import _reduction, _validation, estimator
from tf_adaptive_softmax._types import Embed, TensorLike
from tf_adaptive_softmax.samplers.base import Sampler

__all__ = ["mixed_negatives_loss", "mixed_negatives_scores"]

# TFRS's masking value, so masked in-batch columns match tfrs.tasks.Retrieval exactly.
_MIN_FLOAT = tf.float32.min / 100.0
# TFRS clips candidate_sampling_probability here before taking its log.
_PROBABILITY_FLOOR = 1e-6


def _gather_across_replicas(tensor):
    """All replicas' rows, this replica's first (all_gather, then roll), or `tensor` itself
    outside a multi-replica strategy (or when None). Shapes must match across replicas."""
    if tensor is None:
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor
    tensor = tf.convert_to_tensor(tensor)
    gathered = context.all_gather(tensor, axis=0)
    shift = tf.cast(context.replica_id_in_sync_group, tf.int32) * tf.shape(tensor)[0]
    return tf.roll(gathered, -shift, axis=0)


def _in_batch_scores(
    query_embeddings,
    candidate_embeddings,
    candidate_ids=None,
    candidate_sampling_probability=None,
    *,
    temperature: Optional[float] = None,
    remove_accidental_hits: bool = False,
    score_mask=None,
) -> tf.Tensor:
    """[B, C] in-batch scores with TFRS's corrections, exactly `tfrs.tasks.Retrieval`'s: q cᵀ / τ
    minus log(clip(p, 1e-6, 1)), other columns carrying the row's positive id masked when asked,
    `score_mask`'s False entries masked."""
    scores = tf.linalg.matmul(query_embeddings, candidate_embeddings, transpose_b=True)
    if temperature is not None:
        scores = scores / temperature
    if candidate_sampling_probability is not None:
        probability = tf.cast(candidate_sampling_probability, scores.dtype)
        scores = scores - tf.math.log(tf.clip_by_value(probability, _PROBABILITY_FLOOR, 1.0))
    if remove_accidental_hits:
        if candidate_ids is None:
            raise ValueError("`candidate_ids` are required to remove accidental hits.")
        scores = _mask_accidental_hits(scores, candidate_ids)
    if score_mask is not None:
        scores = tf.where(score_mask, scores, tf.cast(_MIN_FLOAT, scores.dtype))
    return scores


def _mask_accidental_hits(scores: tf.Tensor, candidate_ids) -> tf.Tensor:
    """[B, C] `scores`, TFRS's masking value where column j != i carries row i's positive id."""
    ids, num_queries = tf.reshape(candidate_ids, [-1]), tf.shape(scores)[0]
    hits = tf.equal(ids[:num_queries, tf.newaxis], ids) & ~tf.cast(tf.eye(num_queries, tf.shape(scores)[1]), tf.bool)
    return tf.where(hits, tf.cast(_MIN_FLOAT, scores.dtype), scores)


def _proposal_queries(query_embeddings, temperature: Optional[float] = None) -> tf.Tensor:
    """The queries a catalogue proposal sees, float32: h / τ (h without a temperature)."""
    query = tf.cast(query_embeddings, tf.float32)
    return query if temperature is None else query / temperature


def _catalogue_draws(query_embeddings, positive_ids, sampler, num_samples, embed_ids, temperature, shared_negatives):
    """(scores [B, m] = <h, e(s_j)> / τ − log(m·q(s_j | h / τ)) with draws of the row's positive
    masked, the drawn ids [B, m], or [m] when shared by the batch)."""
    if positive_ids is None:
        raise ValueError(
            "`candidate_ids` (the positive candidates' catalogue ids) are required with catalogue "
            "negatives: they mask accidental hits."
        )
    query = tf.cast(query_embeddings, tf.float32)
    num_queries = tf.shape(query)[0]
    positives = _validation.as_ids(tf.reshape(positive_ids, [-1]), "candidate_ids")[:num_queries, tf.newaxis]
    proposal_query = _proposal_queries(query, temperature)
    if shared_negatives:
        sampled_ids, sampled_log_q = sampler.sample_shared(proposal_query, num_samples)
        logits = tf.matmul(query, tf.cast(embed_ids(sampled_ids), tf.float32), transpose_b=True)
    else:
        sampled_ids, sampled_log_q = sampler.sample(proposal_query, num_samples)
        logits = tf.einsum("bd,bmd->bm", query, tf.cast(embed_ids(sampled_ids), tf.float32))
    if temperature is not None:
        logits = logits / temperature
    # The estimator's correction with no positive block: the positives sit in the in-batch columns.
    scores = estimator._corrected_logits(
        tf.zeros([num_queries, 0]),
        logits,
        sampled_log_q,
        hit_mask=estimator._accidental_hit_mask(positives, sampled_ids),
    )
    return scores, sampled_ids


def _logq_choice(logq_correction: str, candidate_sampling_probability) -> str:
    """The validated choice; "corrected" needs the in-batch probabilities."""
    logq_correction = _validation.resolve_logq_correction(logq_correction)
    if logq_correction == "corrected" and candidate_sampling_probability is None:
        raise ValueError(
            "`logq_correction='corrected'` needs `candidate_sampling_probability` (the in-batch "
            "proposal's probabilities): it corrects the in-batch negatives by them."
        )
    return logq_correction


@_validation.accepts_correct_positive
def mixed_negatives_scores(
    query_embeddings: TensorLike,
    candidate_embeddings: TensorLike,
    candidate_ids: Optional[TensorLike] = None,
    *,
    sampler: Optional[Sampler] = None,
    num_samples: int = 64,
    embed_ids: Optional[Embed] = None,
    candidate_sampling_probability: Optional[TensorLike] = None,
    temperature: Optional[float] = None,
    remove_accidental_hits: bool = False,
    shared_negatives: bool = False,
    logq_correction: str = "standard",
    cross_replica_candidates: bool = False,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """The mixed-negatives scores and labels of the module docstring: in-batch, then catalogue.

    Args:
      query_embeddings: [B, d] queries.
      candidate_embeddings: [C, d] in-batch candidates (C >= B; row i is query i's positive, rows
        B..C-1 extra negatives shared by the batch).
      candidate_ids: [C] candidate ids; required with a sampler (they mask catalogue draws of the
        positive) and by `remove_accidental_hits`. Default None.
      sampler: the catalogue proposal, or None for the in-batch columns alone (exactly
        `tfrs.tasks.Retrieval`'s scores). Default None.
      num_samples: m catalogue negatives per query (or shared by the batch). Default 64.
      embed_ids: ids -> candidate embeddings (an Embedding layer or a candidate tower); required
        with a sampler. Default None.
      candidate_sampling_probability: optional [C] probability of each candidate being in the
        batch (TFRS's logQ); log(clip(p, 1e-6, 1)) is subtracted from its column. Default None.
      temperature: optional divisor τ of the raw scores (before the corrections, as TFRS). The
        catalogue proposal then sees h / τ. Default None.
      remove_accidental_hits: mask other in-batch columns carrying the row's positive id ("corrected"
        always removes them). Default False.
      shared_negatives: one set of m catalogue negatives for the whole batch, drawn from the batch
        mixture q̄ = mean_b q(· | h_b) (the tower embeds m ids instead of B·m). Default False.
      logq_correction: "standard" (default), "negatives_only" or "corrected": how the positive
        column is treated (module docstring). Default "standard".
      cross_replica_candidates: under a multi-replica strategy, every replica's candidates (and
        their ids and probabilities) join the in-batch columns, this replica's first, so each query
        sees R·C in-batch negatives (tensorflow/tensorflow#47344; equal per-replica batches).
        Default False.

    Returns:
      (scores [B, C + m], labels [B, C + m], the identity in the first B columns).

    Raises:
      ValueError: a sampler without `embed_ids` or `candidate_ids`, num_samples < 1, an unknown
        `logq_correction`, or "corrected" without `candidate_sampling_probability`.
    """
    scores, labels, _ = _mixed_negatives_scores_with_ids(
        query_embeddings,
        candidate_embeddings,
        candidate_ids,
        sampler=sampler,
        num_samples=num_samples,
        embed_ids=embed_ids,
        candidate_sampling_probability=candidate_sampling_probability,
        temperature=temperature,
        remove_accidental_hits=remove_accidental_hits,
        shared_negatives=shared_negatives,
        logq_correction=logq_correction,
        cross_replica_candidates=cross_replica_candidates,
    )
    return scores, labels


def _mixed_negatives_scores_with_ids(
    query_embeddings,
    candidate_embeddings,
    candidate_ids,
    *,
    sampler=None,
    num_samples: int = 64,
    embed_ids=None,
    candidate_sampling_probability=None,
    temperature: Optional[float] = None,
    remove_accidental_hits: bool = False,
    score_mask=None,
    cross_replica_candidates: bool = False,
    shared_negatives: bool = False,
    logq_correction: str = "standard",
) -> Tuple[tf.Tensor, tf.Tensor, Optional[tf.Tensor]]:
    """`mixed_negatives_scores`' (scores, labels) and the catalogue id of every column, int32
    [B, C + m] (None without a sampler): what `_sampler_loss` fits a learned proposal to. Also
    takes TFRS's `score_mask` and `cross_replica_candidates` (every replica's candidates join the
    in-batch columns, this replica's first: tensorflow/tensorflow#47344)."""
    logq_correction = _logq_choice(logq_correction, candidate_sampling_probability)
    remove_accidental_hits = remove_accidental_hits or logq_correction == "corrected"
    positive_ids = candidate_ids
    if cross_replica_candidates:
        if score_mask is not None:
            raise ValueError("`score_mask` cannot be combined with `cross_replica_candidates`.")
        candidate_embeddings = _gather_across_replicas(candidate_embeddings)
        candidate_ids = _gather_across_replicas(candidate_ids)
        candidate_sampling_probability = _gather_across_replicas(candidate_sampling_probability)
    scores = _in_batch_scores(
        query_embeddings,
        candidate_embeddings,
        candidate_ids,
        candidate_sampling_probability,
        temperature=temperature,
        remove_accidental_hits=remove_accidental_hits,
        score_mask=score_mask,
    )
    has_probability = candidate_sampling_probability is not None
    # Every column subtracts the log of its expected count: C·p in-batch, m·q in the catalogue.
    in_batch_shift = (
        tf.math.log(tf.cast(tf.shape(scores)[1], scores.dtype)) if sampler is not None and has_probability else None
    )
    if in_batch_shift is not None:
        scores = scores - in_batch_shift
    if logq_correction != "standard" and has_probability:
        # The positive keeps its raw score: add its in-batch correction back, diagonal only.
        # tf.where, not set_diag: its gradient does not compile under XLA with a dynamic batch.
        probability = tf.cast(tf.reshape(candidate_sampling_probability, [-1]), scores.dtype)
        log_count = tf.math.log(tf.clip_by_value(probability, _PROBABILITY_FLOOR, 1.0))[: tf.shape(scores)[0]]
        if in_batch_shift is not None:
            log_count += in_batch_shift
        diagonal = tf.eye(tf.shape(scores)[0], tf.shape(scores)[1], dtype=tf.bool)
        scores = tf.where(diagonal, scores + log_count[:, tf.newaxis], scores)
    column_ids = None
    if sampler is not None:
        if embed_ids is None:
            raise ValueError("`embed_ids` (ids -> candidate embeddings) is required with a sampler.")
        _validation.check_num_samples(num_samples)
        sampled, sampled_ids = _catalogue_draws(
            query_embeddings, positive_ids, sampler, num_samples, embed_ids, temperature, shared_negatives
        )
        scores = tf.concat([scores, tf.cast(sampled, scores.dtype)], axis=1)
        num_queries = tf.shape(scores)[:1]
        in_batch_ids = _validation.as_ids(tf.reshape(candidate_ids, [-1]), "candidate_ids")
        if sampled_ids.shape.rank == 1:
            sampled_ids = tf.broadcast_to(sampled_ids, tf.concat([num_queries, tf.shape(sampled_ids)], 0))
        column_ids = tf.concat(
            [tf.broadcast_to(in_batch_ids, tf.concat([num_queries, tf.shape(in_batch_ids)], 0)), sampled_ids], 1
        )
    labels = tf.eye(tf.shape(scores)[0], tf.shape(scores)[1], dtype=scores.dtype)
    return scores, labels, column_ids


def _diagonal(values: tf.Tensor) -> tf.Tensor:
    """[B, 1]: entry (i, i) of every row of [B, C + m] values (query i's positive column)."""
    diagonal = tf.eye(tf.shape(values)[0], tf.shape(values)[1], dtype=tf.bool)
    return tf.reduce_sum(tf.where(diagonal, values, tf.zeros_like(values)), axis=1, keepdims=True)


def _positive_first(scores) -> Tuple[tf.Tensor, tf.Tensor]:
    """(the positives' scores [B, 1], the scores [B, C + m] with each positive's own column masked):
    float32 mixed-negatives scores split so that the positive counts once, in front."""
    scores = tf.cast(scores, tf.float32)
    diagonal = tf.eye(tf.shape(scores)[0], tf.shape(scores)[1], dtype=tf.bool)
    return _diagonal(scores), tf.where(diagonal, tf.cast(estimator._MASKED_LOGIT, scores.dtype), scores)


def _sampler_loss(sampler, proposal_queries, scores, column_ids, positive_embeddings=None) -> tf.Tensor:
    """The sampler's own training loss [B] (`Sampler.auxiliary_loss`; zeros for samplers without
    one), fitted to the mixed-negatives scores: query i's positive is its column i, then every
    other column (the positive's own column masked, so it counts once). `proposal_queries` are
    the queries the proposal sees (h / τ)."""
    if not sampler.has_auxiliary_loss:
        return tf.zeros(tf.shape(proposal_queries)[:1])
    positive_scores, others = _positive_first(scores)
    ids, scores = tf.concat([_diagonal(column_ids), column_ids], 1), tf.concat([positive_scores, others], 1)
    return sampler.auxiliary_loss(tf.cast(proposal_queries, tf.float32), ids, scores, positive_embeddings)


def _corrected_logq_loss(scores, catalogue_negatives: bool = False) -> tf.Tensor:
    """[B]: Khrylchenko et al.'s corrected logQ over mixed-negatives scores whose positive column
    (the diagonal) is raw. In-batch columns subtract log(C·p) (log p without catalogue columns),
    so their exp-sum counts Z₋y about once (C times); catalogue columns subtract log(m·q), one
    more estimate: the miss probability divides by that count."""
    positive, negatives = _positive_first(scores)
    if catalogue_negatives:
        estimates = tf.math.log(2.0)
    else:
        estimates = tf.math.log(tf.cast(tf.shape(scores)[1], tf.float32))
    return estimator._corrected_logq_cross_entropy(tf.concat([positive, negatives], 1), 1, estimates)


def _mixed_negatives_per_query_loss(scores, labels, column_ids, sampler, logq_correction, proposal_queries, positives):
    """[B]: the loss `logq_correction` names over mixed-negatives scores, plus the sampler's own
    auxiliary loss when it has one (what `mixed_negatives_loss` and `AdaptiveRetrieval` reduce)."""
    if logq_correction == "corrected":
        per_query = _corrected_logq_loss(scores, catalogue_negatives=sampler is not None)
    else:
        per_query = tf.nn.softmax_cross_entropy_with_logits(labels, scores)
    if column_ids is not None and sampler.has_auxiliary_loss:
        per_query += _sampler_loss(sampler, proposal_queries, scores, column_ids, positives)
    return per_query


@_validation.accepts_correct_positive
def mixed_negatives_loss(
    query_embeddings: TensorLike,
    candidate_embeddings: TensorLike,
    candidate_ids: Optional[TensorLike] = None,
    *,
    sampler: Optional[Sampler] = None,
    num_samples: int = 64,
    embed_ids: Optional[Embed] = None,
    candidate_sampling_probability: Optional[TensorLike] = None,
    temperature: Optional[float] = None,
    shared_negatives: bool = False,
    logq_correction: str = "standard",
    sample_weight: Optional[TensorLike] = None,
    reduction: str = "sum",
) -> tf.Tensor:
    """Softmax cross-entropy over the mixed-negatives scores (`mixed_negatives_scores`).

    With `candidate_ids`, accidental hits among the in-batch columns are masked (other candidates
    carrying the row's positive id); catalogue draws of the positive always are. A sampler with an auxiliary loss
    (MIDX with learned codebooks) adds it per query.

    Args:
      query_embeddings, candidate_embeddings, candidate_ids, sampler, num_samples, embed_ids,
      candidate_sampling_probability, temperature, shared_negatives, logq_correction: as
        `mixed_negatives_scores`.
      sample_weight: optional [B] weights of the per-query losses. Default None.
      reduction: "sum" over the batch (default, TFRS's), "mean", or "none" for per-query losses [B].

    Returns:
      The reduced loss (a scalar), or [B] per-query losses with `reduction="none"`.

    Raises:
      ValueError: as `mixed_negatives_scores`, or an unknown `reduction`.
    """
    _reduction.reduction_name(reduction)  # a clear error before any work
    logq_correction = _logq_choice(logq_correction, candidate_sampling_probability)
    scores, labels, column_ids = _mixed_negatives_scores_with_ids(
        query_embeddings,
        candidate_embeddings,
        candidate_ids,
        sampler=sampler,
        num_samples=num_samples,
        embed_ids=embed_ids,
        candidate_sampling_probability=candidate_sampling_probability,
        temperature=temperature,
        remove_accidental_hits=candidate_ids is not None,
        shared_negatives=shared_negatives,
        logq_correction=logq_correction,
    )
    positives = tf.convert_to_tensor(candidate_embeddings)[: tf.shape(scores)[0]]
    proposal_queries = _proposal_queries(query_embeddings, temperature)
    per_query = _mixed_negatives_per_query_loss(
        scores, labels, column_ids, sampler, logq_correction, proposal_queries, positives
    )
    return _reduction.reduce(per_query, reduction, sample_weight)

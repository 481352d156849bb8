"""Mixed-negatives retrieval scores and loss, for any Keras flavour (no TFRS needed).

Two-tower retrieval scores each query against the batch's candidates (in-batch negatives) and,
here, against `num_samples` negatives per query drawn from the whole catalogue by a sampler:

    scores = [ q cᵀ / τ - log p   |   <q, e(s_j)> / τ - log(m · q(s_j | q)) ]      labels = eye(B, C + m)

In-batch columns follow TFRS's conventions exactly (temperature before the correction, p clipped at
1e-6, accidental hits = other columns carrying the row's positive id); catalogue columns subtract
the exact, unclipped log expected count and mask draws equal to the row's positive id. With both a
sampler and `candidate_sampling_probability`, the in-batch columns also subtract log C (C in-batch
candidates), so that every column subtracts the log of its expected count (C·p in-batch, m·q in the
catalogue): TFRS's -log p alone is the same only up to that constant, which within TFRS's own
softmax does not matter but would make the catalogue negatives weigh C times too little.

The positive (query i's in-batch column i) is corrected by its own proposal, like every column of
its block: TFRS's in-batch -log p(y) when `candidate_sampling_probability` is given
(`correct_positive=True`, the default: the convention of TF, TFRS and the MIDX authors, as in
`estimator`). It is not a catalogue draw, so the catalogue proposal does not correct it:
subtracting log(m·q(y | h)) as well counts the positive twice, and measured worse (100,000-item
synthetic catalogue, Recall@10 0.087 with MIDX against 0.094 without; benchmarks/README.md).
`correct_positive=False` leaves the positive's score uncorrected (Blanc & Rendle's eq. 3: the
diagonal keeps q cᵀ / τ while the other columns are corrected). Without a sampler and with the
default, the scores are exactly `tfrs.tasks.Retrieval`'s.
`tf_adaptive_softmax.tfrs.AdaptiveRetrieval` builds on these functions; in Keras 3 call
`mixed_negatives_loss` from `Model.compute_loss`, as keras-rs retrieval examples do.

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

from typing import Callable, Optional, Tuple

import tensorflow as tf

from tf_adaptive_softmax import _reduction, _validation, estimator

__all__ = [
    "catalogue_scores",
    "check_logq_correction_inputs",
    "corrected_logq_loss",
    "gather_across_replicas",
    "in_batch_scores",
    "mixed_negatives_loss",
    "mixed_negatives_scores",
    "mixed_negatives_scores_with_ids",
    "sampler_loss",
]

# TFRS's masking value, so masked in-batch columns match tfrs.tasks.Retrieval exactly.
_MIN_FLOAT = tf.float32.min / 100.0
# TFRS clips candidate_sampling_probability here before taking its log.
_PROBABILITY_FLOOR = 1e-6


def gather_across_replicas(tensor):
    """All replicas' rows, this replica's first (all_gather, then roll), or `tensor` itself
    outside a multi-replica strategy. Shapes must match across replicas (use drop_remainder).

    Args:
      tensor: a per-replica tensor with the batch on axis 0, or None (returned as is).
    """
    if tensor is None:
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor
    tensor = tf.convert_to_tensor(tensor)
    gathered = context.all_gather(tensor, axis=0)
    shift = tf.cast(context.replica_id_in_sync_group, tf.int32) * tf.shape(tensor)[0]
    return tf.roll(gathered, -shift, axis=0)


def in_batch_scores(
    query_embeddings,
    candidate_embeddings,
    candidate_ids=None,
    candidate_sampling_probability=None,
    *,
    temperature: Optional[float] = None,
    remove_accidental_hits: bool = False,
    score_mask=None,
) -> tf.Tensor:
    """[B, C] in-batch scores with TFRS's corrections, exactly `tfrs.tasks.Retrieval`'s.

    Args:
      query_embeddings: [B, d] queries.
      candidate_embeddings: [C, d] candidates, C >= B: row i is query i's positive, rows B..C-1
        extra negatives shared by the batch.
      candidate_ids: optional [C] candidate ids (needed by `remove_accidental_hits`). Default None.
      candidate_sampling_probability: optional [C] (or [B, C]) probability of each candidate
        being in the batch; log(clip(p, 1e-6, 1)) is subtracted from its column. Default None.
      temperature: optional divisor of the raw scores, applied before the correction. Default None.
      remove_accidental_hits: mask other columns carrying the row's positive id. Default False.
      score_mask: optional bool [B, C]; False entries are masked. Default None.
    """
    scores = tf.linalg.matmul(query_embeddings, candidate_embeddings, transpose_b=True)
    if temperature is not None:
        scores = scores / temperature
    if candidate_sampling_probability is not None:
        probability = tf.cast(candidate_sampling_probability, scores.dtype)
        scores = scores - tf.math.log(tf.clip_by_value(probability, _PROBABILITY_FLOOR, 1.0))
    if remove_accidental_hits:
        if candidate_ids is None:
            raise ValueError("When accidental hit removal is enabled, candidate ids must be supplied.")
        ids = tf.reshape(candidate_ids, [-1])
        num_queries = tf.shape(scores)[0]
        same_id = tf.equal(ids[:num_queries, tf.newaxis], ids[tf.newaxis, :])
        hits = same_id & ~tf.cast(tf.eye(num_queries, tf.shape(scores)[1]), tf.bool)
        scores = tf.where(hits, tf.cast(_MIN_FLOAT, scores.dtype), scores)
    if score_mask is not None:
        scores = tf.where(score_mask, scores, tf.cast(_MIN_FLOAT, scores.dtype))
    return scores


def catalogue_scores(
    query_embeddings,
    positive_ids,
    sampler,
    num_samples: int,
    embed_ids: Callable[[tf.Tensor], tf.Tensor],
    *,
    temperature: Optional[float] = None,
    shared_negatives: bool = False,
) -> tf.Tensor:
    """[B, m]: m catalogue negatives per query, <h, e(s_j)> / τ - log(m·q(s_j | h)).

    Draws equal to the row's positive id are masked with the estimator's `MASKED_LOGIT`; the
    correction is `estimator.corrected_logits`' (log q floored at its `MIN_LOG_Q`, never clipped
    at 1e-6 as TFRS clips p).

    Args:
      query_embeddings: [B, d] queries h.
      positive_ids: [B] (or longer: the first B are used) catalogue ids of the positives.
      sampler: the catalogue proposal (a `Sampler`).
      num_samples: m, catalogue negatives per query (or shared by the batch).
      embed_ids: ids -> candidate embeddings (an Embedding layer or a candidate tower).
      temperature: optional divisor of the raw catalogue scores (before the correction, as TFRS
        does). Default None.
      shared_negatives: draw one set of m negatives for the whole batch from the batch mixture
        q̄ = mean_b q(· | h_b) (the tower embeds m ids instead of B·m). Default False.
    """
    return _catalogue_draws(
        query_embeddings, positive_ids, sampler, num_samples, embed_ids, temperature, shared_negatives
    )[0]


def _catalogue_draws(query_embeddings, positive_ids, sampler, num_samples, embed_ids, temperature, shared_negatives):
    """(`catalogue_scores`' scores [B, m], the drawn ids [B, m] or [m] when shared)."""
    if positive_ids is None:
        raise ValueError(
            "`candidate_ids` (the positive candidates' catalogue ids) are required with catalogue "
            "negatives: they mask accidental hits."
        )
    query = tf.cast(query_embeddings, tf.float32)
    num_queries = tf.shape(query)[0]
    positives = _validation.as_ids(tf.reshape(positive_ids, [-1]), "candidate_ids")[:num_queries, tf.newaxis]
    if shared_negatives:
        sampled_ids, sampled_log_q = sampler.sample_shared(query, num_samples)
        logits = tf.matmul(query, tf.cast(embed_ids(sampled_ids), tf.float32), transpose_b=True)
    else:
        sampled_ids, sampled_log_q = sampler.sample(query, num_samples)
        logits = tf.einsum("bd,bmd->bm", query, tf.cast(embed_ids(sampled_ids), tf.float32))
    if temperature is not None:
        logits = logits / temperature
    # The estimator's correction with no positive block: the positives sit in the in-batch columns.
    scores = estimator.corrected_logits(
        tf.zeros([num_queries, 0]),
        logits,
        sampled_log_q,
        hit_mask=estimator.accidental_hit_mask(positives, sampled_ids),
    )
    return scores, sampled_ids


def mixed_negatives_scores(
    query_embeddings,
    candidate_embeddings,
    candidate_ids=None,
    *,
    sampler=None,
    num_samples: int = 64,
    embed_ids: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
    candidate_sampling_probability=None,
    temperature: Optional[float] = None,
    remove_accidental_hits: bool = False,
    score_mask=None,
    cross_replica_candidates: bool = False,
    shared_negatives: bool = False,
    correct_positive: bool = True,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """(scores [B, C + m], labels [B, C + m]): in-batch columns, then catalogue columns.

    The positive of query i is in-batch column i, corrected like its block (TFRS's -log p when
    `candidate_sampling_probability` is given; `correct_positive=True`, the default) or left
    uncorrected (`correct_positive=False`); see the module docstring.

    Args:
      query_embeddings: [B, d] queries.
      candidate_embeddings: [C, d] in-batch candidates (C >= B; row i is query i's positive).
      candidate_ids: [C] candidate ids; required with a sampler (they mask catalogue draws of the
        positive). Default None.
      sampler: optional catalogue proposal. Default None: only the in-batch columns, exactly
        `tfrs.tasks.Retrieval`'s scores.
      num_samples: m catalogue negatives per query. Default 64.
      embed_ids: ids -> candidate embeddings; required with a sampler. Default None.
      candidate_sampling_probability, temperature, remove_accidental_hits, score_mask: as
        `tfrs.tasks.Retrieval` (see `in_batch_scores`). Defaults None, None, False, None.
      cross_replica_candidates: under a multi-replica strategy, every replica's candidates (and
        their ids and probabilities) join the in-batch columns, this replica's first, so each
        query sees R·C in-batch negatives (tensorflow/tensorflow#47344). Default False.
      shared_negatives: the m catalogue negatives are shared by the batch (`catalogue_scores`).
        Default False.
      correct_positive: the positive keeps TFRS's in-batch correction (default True), or is left
        uncorrected (False: the diagonal's -log p is added back).
    """
    scores, labels, _ = mixed_negatives_scores_with_ids(
        query_embeddings,
        candidate_embeddings,
        candidate_ids,
        sampler=sampler,
        num_samples=num_samples,
        embed_ids=embed_ids,
        candidate_sampling_probability=candidate_sampling_probability,
        temperature=temperature,
        remove_accidental_hits=remove_accidental_hits,
        score_mask=score_mask,
        cross_replica_candidates=cross_replica_candidates,
        shared_negatives=shared_negatives,
        correct_positive=correct_positive,
    )
    return scores, labels


def mixed_negatives_scores_with_ids(
    query_embeddings,
    candidate_embeddings,
    candidate_ids,
    *,
    sampler=None,
    num_samples: int = 64,
    embed_ids: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
    candidate_sampling_probability=None,
    temperature: Optional[float] = None,
    remove_accidental_hits: bool = False,
    score_mask=None,
    cross_replica_candidates: bool = False,
    shared_negatives: bool = False,
    correct_positive: bool = True,
) -> Tuple[tf.Tensor, tf.Tensor, Optional[tf.Tensor]]:
    """`mixed_negatives_scores`' (scores, labels) and the catalogue id of every column, int32
    [B, C + m] (None without a sampler): what `sampler_loss` fits a learned proposal to.

    Args: as `mixed_negatives_scores` (every one keyword-only after `candidate_ids`).
    """
    positive_ids = candidate_ids
    if cross_replica_candidates:
        if score_mask is not None:
            raise ValueError("`score_mask` cannot be combined with `cross_replica_candidates`.")
        candidate_embeddings = gather_across_replicas(candidate_embeddings)
        candidate_ids = gather_across_replicas(candidate_ids)
        candidate_sampling_probability = gather_across_replicas(candidate_sampling_probability)
    scores = in_batch_scores(
        query_embeddings,
        candidate_embeddings,
        candidate_ids,
        candidate_sampling_probability,
        temperature=temperature,
        remove_accidental_hits=remove_accidental_hits,
        score_mask=score_mask,
    )
    has_probability = candidate_sampling_probability is not None
    # With catalogue columns, every column subtracts the log of its expected count: C·p for the C
    # in-batch candidates (TFRS subtracts log p alone, the same up to a constant within its own
    # softmax), m·q for the catalogue draws. Without the log C the catalogue columns would weigh
    # C times too little against the in-batch ones.
    in_batch_shift = (
        tf.math.log(tf.cast(tf.shape(scores)[1], scores.dtype)) if sampler is not None and has_probability else None
    )
    if in_batch_shift is not None:
        scores = scores - in_batch_shift
    if not correct_positive and has_probability:
        # Eq. 3: the positive keeps its raw score; add its in-batch correction back, diagonal only.
        # tf.where, not set_diag: its gradient does not compile under XLA with a dynamic batch.
        probability = tf.cast(tf.reshape(candidate_sampling_probability, [-1]), scores.dtype)
        log_count = tf.math.log(tf.clip_by_value(probability, _PROBABILITY_FLOOR, 1.0))[: tf.shape(scores)[0]]
        if in_batch_shift is not None:
            log_count += in_batch_shift
        diagonal = tf.eye(tf.shape(scores)[0], tf.shape(scores)[1], dtype=tf.bool)
        scores = tf.where(diagonal, scores + log_count[:, tf.newaxis], scores)
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
    else:
        column_ids = None
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
    return _diagonal(scores), tf.where(diagonal, tf.cast(estimator.MASKED_LOGIT, scores.dtype), scores)


def sampler_loss(sampler, query_embeddings, scores, column_ids, positive_embeddings=None) -> tf.Tensor:
    """The sampler's own training loss [B] (`Sampler.auxiliary_loss`; zeros for samplers without
    one), fitted to the model's mixed-negatives scores: query i's positive is its column i, then
    every other column (the positive's own column masked, so it counts once).

    Args:
      sampler: the catalogue proposal.
      query_embeddings: [B, d] queries.
      scores: [B, C + m] mixed-negatives scores (`mixed_negatives_scores`).
      column_ids: [B, C + m] the catalogue id of every column.
      positive_embeddings: optional [B, d] positive candidates' embeddings (the reconstruction
        term of learned codebooks).
    """
    if not sampler.has_auxiliary_loss:
        return tf.zeros(tf.shape(query_embeddings)[:1])
    positive_scores, others = _positive_first(scores)
    positive_ids = _diagonal(column_ids)
    return sampler.auxiliary_loss(
        tf.cast(query_embeddings, tf.float32),
        tf.concat([positive_ids, column_ids], axis=1),
        tf.concat([positive_scores, others], axis=1),
        positive_embeddings,
    )


def mixed_negatives_loss(
    query_embeddings,
    candidate_embeddings,
    candidate_ids=None,
    *,
    sampler=None,
    num_samples: int = 64,
    embed_ids: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
    candidate_sampling_probability=None,
    temperature: Optional[float] = None,
    remove_accidental_hits: bool = False,
    sample_weight=None,
    reduction: str = "sum",
    cross_replica_candidates: bool = False,
    shared_negatives: bool = False,
    correct_positive: bool = True,
    logq_correction: str = "standard",
) -> tf.Tensor:
    """Softmax cross-entropy over the mixed-negatives scores (`mixed_negatives_scores`).

    Args:
      query_embeddings, candidate_embeddings, candidate_ids, sampler, num_samples, embed_ids,
      candidate_sampling_probability, temperature, remove_accidental_hits,
      cross_replica_candidates, shared_negatives, correct_positive: as `mixed_negatives_scores`
        (sampler None, m = 64, correct_positive True by default).
      sample_weight: optional [B] weights of the per-query losses. Default None.
      reduction: "sum" over the batch (default, TFRS's), "mean", or "none" for per-query losses [B].
      logq_correction: "standard" (default: the softmax cross-entropy, TFRS's logQ) or "corrected"
        (Khrylchenko et al. 2025, `corrected_logq_loss`): needs `candidate_sampling_probability`
        and `candidate_ids`; accidental hits are then always removed and `correct_positive` is not
        used.
    """
    _reduction.reduction_name(reduction)  # a clear error before any work
    corrected = check_logq_correction_inputs(logq_correction, candidate_sampling_probability)
    scores, labels, column_ids = mixed_negatives_scores_with_ids(
        query_embeddings,
        candidate_embeddings,
        candidate_ids,
        sampler=sampler,
        num_samples=num_samples,
        embed_ids=embed_ids,
        candidate_sampling_probability=candidate_sampling_probability,
        temperature=temperature,
        remove_accidental_hits=remove_accidental_hits or corrected,
        cross_replica_candidates=cross_replica_candidates,
        score_mask=None,
        shared_negatives=shared_negatives,
        correct_positive=correct_positive and not corrected,
    )
    if corrected:
        per_query = corrected_logq_loss(scores, catalogue_negatives=sampler is not None)
    else:
        per_query = tf.nn.softmax_cross_entropy_with_logits(labels, scores)
    if column_ids is not None and sampler.has_auxiliary_loss:
        positives = tf.convert_to_tensor(candidate_embeddings)[: tf.shape(scores)[0]]
        per_query += sampler_loss(sampler, query_embeddings, scores, column_ids, positives)
    return _reduction.reduce(per_query, reduction, sample_weight)


def check_logq_correction_inputs(logq_correction: str, candidate_sampling_probability) -> bool:
    """Whether `logq_correction` is "corrected" (a ValueError for unknown names, or when the
    in-batch probabilities it needs are missing)."""
    corrected = estimator.check_logq_correction(logq_correction) == "corrected"
    if corrected and candidate_sampling_probability is None:
        raise ValueError(
            "`logq_correction='corrected'` needs `candidate_sampling_probability` (the in-batch "
            "proposal's probabilities): it corrects the in-batch negatives by them."
        )
    return corrected


def corrected_logq_loss(scores, catalogue_negatives: bool = False) -> tf.Tensor:
    """[B]: Khrylchenko et al.'s corrected logQ (`estimator.corrected_logq_cross_entropy`) over
    mixed-negatives scores whose positive column (the diagonal) is uncorrected.

    The other columns estimate the partition function without the positive. In-batch columns
    subtract log p (TFRS's correction; log(C·p) when catalogue negatives join them), so their
    exp-sum counts Z₋y about C times (once); catalogue columns subtract log(m·q), one more estimate:
    the miss probability divides by that count.

    Args:
      scores: [B, C + m] from `mixed_negatives_scores(..., correct_positive=False,
        remove_accidental_hits=True)` with `candidate_sampling_probability`.
      catalogue_negatives: whether the last columns are catalogue draws (the scores were built
        with a sampler). Default False.
    """
    positive, negatives = _positive_first(scores)
    if catalogue_negatives:
        estimates = tf.math.log(2.0)
    else:
        estimates = tf.math.log(tf.cast(tf.shape(scores)[1], tf.float32))
    return estimator.corrected_logq_cross_entropy(tf.concat([positive, negatives], 1), 1, estimates)

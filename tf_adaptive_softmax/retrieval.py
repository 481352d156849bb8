"""Mixed-negatives retrieval scores and loss, for any Keras flavour (no TFRS needed).

Two-tower retrieval scores each query against the batch's candidates (in-batch negatives) and,
here, against `num_samples` negatives per query drawn from the whole catalogue by a sampler:

    scores = [ q cᵀ / τ - log p   |   <q, e(s_j)> / τ - log(m · q(s_j | q)) ]      labels = eye(B, C + m)

In-batch columns follow TFRS's conventions exactly (temperature before the correction, p clipped at
1e-6, accidental hits = other columns carrying the row's positive id); catalogue columns subtract
the exact, unclipped log expected count and mask draws equal to the row's positive id.
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

from tf_adaptive_softmax import _validation, estimator

# TFRS's masking value, so masked in-batch columns match tfrs.tasks.Retrieval exactly.
MIN_FLOAT = tf.float32.min / 100.0
# TFRS clips candidate_sampling_probability here before taking its log.
_PROBABILITY_FLOOR = 1e-6


def gather_across_replicas(tensor):
    """All replicas' rows, this replica's first (all_gather, then roll), or `tensor` itself
    outside a multi-replica strategy. Shapes must match across replicas (use drop_remainder)."""
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
    temperature: Optional[float] = None,
    remove_accidental_hits: bool = False,
    score_mask=None,
) -> tf.Tensor:
    """[B, C] in-batch scores with TFRS's corrections (C >= B: extra shared negatives)."""
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
        scores = tf.where(hits, tf.cast(MIN_FLOAT, scores.dtype), scores)
    if score_mask is not None:
        scores = tf.where(score_mask, scores, tf.cast(MIN_FLOAT, scores.dtype))
    return scores


def catalogue_scores(
    query_embeddings,
    positive_ids,
    sampler,
    num_samples: int,
    embed_ids: Callable[[tf.Tensor], tf.Tensor],
    temperature: Optional[float] = None,
    shared_negatives: bool = False,
) -> tf.Tensor:
    """[B, m] scores of m catalogue negatives per query, minus log(m·q), positives' ids masked
    (with the estimator's `MASKED_LOGIT`). With `shared_negatives` the m negatives are one set for
    the whole batch, drawn from the batch mixture (the tower embeds m ids instead of B·m)."""
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
    hits = estimator.accidental_hit_mask(positives, sampled_ids)
    # The estimator's correction with no positive block: the positives sit in the in-batch columns.
    return estimator.corrected_logits(tf.zeros([num_queries, 0]), logits, sampled_log_q, hit_mask=hits)


def mixed_negatives_scores(
    query_embeddings,
    candidate_embeddings,
    candidate_ids=None,
    sampler=None,
    num_samples: int = 64,
    embed_ids: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
    candidate_sampling_probability=None,
    temperature: Optional[float] = None,
    remove_accidental_hits: bool = False,
    score_mask=None,
    cross_replica_candidates: bool = False,
    shared_negatives: bool = False,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """(scores [B, C + m], labels [B, C + m]): in-batch columns, then catalogue columns.

    With `sampler=None` only the in-batch columns (exactly `tfrs.tasks.Retrieval`'s scores). With
    `cross_replica_candidates=True` under a multi-replica strategy, every replica's candidates
    (and their ids and probabilities) join the in-batch columns, this replica's first, so each
    query sees R·C in-batch negatives instead of C (tensorflow/tensorflow#47344). With
    `shared_negatives=True` the m catalogue negatives are shared by the batch (`catalogue_scores`).
    """
    positive_ids = candidate_ids
    if cross_replica_candidates:
        if score_mask is not None:
            raise ValueError("`score_mask` cannot be combined with `cross_replica_candidates`.")
        candidate_embeddings = gather_across_replicas(candidate_embeddings)
        candidate_ids = gather_across_replicas(candidate_ids)
        candidate_sampling_probability = gather_across_replicas(candidate_sampling_probability)
    scores = in_batch_scores(
        query_embeddings, candidate_embeddings, candidate_ids, candidate_sampling_probability,
        temperature, remove_accidental_hits, score_mask,
    )
    if sampler is not None:
        if embed_ids is None:
            raise ValueError("`embed_ids` (ids -> candidate embeddings) is required with a sampler.")
        _validation.check_num_samples(num_samples)
        sampled = catalogue_scores(query_embeddings, positive_ids, sampler, num_samples, embed_ids, temperature,
                                   shared_negatives)
        scores = tf.concat([scores, tf.cast(sampled, scores.dtype)], axis=1)
    labels = tf.eye(tf.shape(scores)[0], tf.shape(scores)[1], dtype=scores.dtype)
    return scores, labels


def mixed_negatives_loss(
    query_embeddings,
    candidate_embeddings,
    candidate_ids=None,
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
) -> tf.Tensor:
    """Softmax cross-entropy over the mixed-negatives scores: "sum" over the batch (TFRS's
    default), "mean", or "none" for per-query losses [B]."""
    scores, labels = mixed_negatives_scores(
        query_embeddings, candidate_embeddings, candidate_ids, sampler, num_samples, embed_ids,
        candidate_sampling_probability, temperature, remove_accidental_hits,
        cross_replica_candidates=cross_replica_candidates, shared_negatives=shared_negatives,
    )
    per_query = tf.nn.softmax_cross_entropy_with_logits(labels, scores)
    if sample_weight is not None:
        per_query *= tf.cast(tf.reshape(sample_weight, [-1]), per_query.dtype)
    if reduction == "none":
        return per_query
    if reduction == "sum":
        return tf.reduce_sum(per_query)
    if reduction == "mean":
        return tf.reduce_mean(per_query)
    raise ValueError(f"`reduction` must be 'sum', 'mean' or 'none'; got {reduction!r}.")

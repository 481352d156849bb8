"""Pure-TensorFlow math of sampled softmax: corrected logits and the sampled and full losses.

For a query h with positives y_1..y_T and m negatives s_1..s_m drawn with replacement from q,
the logits are o_c = <h, w_c> + b_c and the estimator scores

    negatives:  o'_j = o_{s_j} − log(m · q_{s_j})     (minus the log of the expected count)
    positives:  o'_t = o_{y_t} − log(m · q_{y_t})     logq_correction="standard" (the default)
                o'_t = o_{y_t}                        logq_correction="negatives_only"

then takes the cross-entropy over the T + m columns with target 1/T on each positive (TF's
`sampled_softmax_loss` convention for num_true > 1). A negative equal to any of its row's
positives is an "accidental hit"; it is masked out with an XLA-safe equality mask.

`logq_correction` names one of three estimators:

* "standard": the positive corrected like the negatives: the convention of
  `tf.nn.sampled_softmax_loss`, TFRS and the MIDX authors' code, and far better at small m in every
  measurement (benchmarks/README.md, "The logQ choice"): with an uncorrected positive, a proposal
  far from the model (any static sampler, or an adaptive one early in training) scores the
  negatives' corrected logits o − log(m·q) far above o_y wherever q is small, and the model
  over-penalises the rare classes. Corrected, the positive is "one more draw" of the
  importance-sampling estimate of the partition function.
* "negatives_only": Blanc & Rendle's eq. 3, the positive raw. With q the model's own softmax over
  the non-positive classes its expected gradient w.r.t. the logits is exactly p − y (tested with
  the `Softmax` oracle): keep it for such bias studies.
* "corrected": Khrylchenko et al., "Correcting the LogQ Correction" (RecSys 2025,
  arXiv:2507.09331). The positive is always in the softmax's denominator (it is not a Monte Carlo
  draw), so the negatives estimate only the rest of the partition function,
  Z₋y = Σ_{i≠y} exp(o_i), and the loss is

      loss = sg(1 − P̂(y)) · (log Σ_j exp(o'_j) − o_y),     P̂(y) = sigmoid(o_y − log Σ_j exp(o'_j))

  over the corrected negatives o'_j (accidental hits masked, which it requires), the positive raw
  and outside the log-sum; sg is stop-gradient and 1 − P̂(y) the estimated probability of getting
  the example wrong. Σ_j exp(o'_j) over the unmasked draws estimates Z₋y without bias.

References:
  Bengio & Senécal, "Adaptive importance sampling to accelerate training of a neural
  probabilistic language model", IEEE TNN 2008. Blanc & Rendle, "Adaptive Sampled Softmax with
  Kernel Based Sampling", ICML 2018. Khrylchenko et al., RecSys 2025 (above).

Example:
    >>> import tensorflow as tf
    >>> from tf_adaptive_softmax import estimator
    >>> h = tf.random.normal([4, 8]); w = tf.random.normal([100, 8])
    >>> labels = tf.constant([1, 2, 3, 4]); sampled = tf.random.uniform([4, 16], 0, 100, tf.int32)
    >>> log_q = tf.fill([4, 16], -tf.math.log(100.0))     # uniform q over N = 100 classes
    >>> true_log_q = tf.fill([4, 1], -tf.math.log(100.0))
    >>> estimator.sampled_softmax_loss(h, labels, sampled, log_q, w, true_log_q=true_log_q).shape
    TensorShape([4])
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import tensorflow as tf

from tf_adaptive_softmax import _reduction, _validation
from tf_adaptive_softmax._ops import tables
from tf_adaptive_softmax._types import TensorLike

__all__ = ["full_softmax_loss", "sampled_softmax_logits", "sampled_softmax_loss"]

# Finite stand-in for -inf: exp underflows to exactly 0, and gradients stay finite.
_MASKED_LOGIT = -1e30
# log q is floored here so that q = 0 (a zero-count class as a positive) cannot produce inf - inf.
_MIN_LOG_Q = math.log(1e-37)

_LogitTransform = Optional[Callable[[tf.Tensor], tf.Tensor]]


def _transform(logits: tf.Tensor, logit_transform: _LogitTransform) -> tf.Tensor:
    return logits if logit_transform is None else logit_transform(logits)


def _full_logits(
    query: tf.Tensor,
    class_embeddings: tf.Tensor,
    class_bias: Optional[tf.Tensor] = None,
    logit_transform: _LogitTransform = None,
) -> tf.Tensor:
    """All N logits, [B, N] = query @ class_embeddingsᵀ + bias.

    Args:
      query: [B, d] queries.
      class_embeddings: [N, d] class table W.
      class_bias: optional [N] bias. Default None.
      logit_transform: optional elementwise map on the logits (e.g. `tf.abs`). Default None.
    """
    # A sharded table is multiplied block by block (each [B, N_p] on its own), never concatenated.
    blocks = [tf.matmul(query, block, transpose_b=True) for block in tables.shards(class_embeddings)]
    logits = blocks[0] if len(blocks) == 1 else tf.concat(blocks, axis=1)
    if class_bias is not None:
        bias = tables.shards(class_bias)
        logits += bias[0] if len(bias) == 1 else tf.concat([tf.convert_to_tensor(b) for b in bias], axis=0)
    return _transform(logits, logit_transform)


def _gathered_logits(
    query: tf.Tensor,
    ids: tf.Tensor,
    class_embeddings: tf.Tensor,
    class_bias: Optional[tf.Tensor] = None,
    logit_transform: _LogitTransform = None,
) -> tf.Tensor:
    """Logits of the given ids only, [B, k]: ids [B, k] per query, or [k] shared by the batch
    (then one [B, d] x [d, k] matmul).

    Args:
      query: [B, d] queries.
      ids: [B, k] or [k] int class ids.
      class_embeddings: [N, d] class table W (only the rows of `ids` are read).
      class_bias: optional [N] bias. Default None.
      logit_transform: optional elementwise map on the logits. Default None.
    """
    rows = tables.lookup_rows(class_embeddings, ids)
    if ids.shape.rank == 1:
        logits = tf.matmul(query, rows, transpose_b=True)
    else:
        logits = tf.einsum("bd,bkd->bk", query, rows)
    if class_bias is not None:
        logits += tables.lookup_rows(class_bias, ids)
    return _transform(logits, logit_transform)


def _accidental_hit_mask(true_ids: tf.Tensor, sampled_ids: tf.Tensor) -> tf.Tensor:
    """bool [B, m]: sampled id equals any of its row's true ids. XLA-safe, static shape.

    Args:
      true_ids: [B, T] positives of each row.
      sampled_ids: [B, m] per query, or [m] shared by the batch.
    """
    if sampled_ids.shape.rank == 1:
        sampled_ids = sampled_ids[tf.newaxis]
    equal = tf.equal(sampled_ids[:, :, tf.newaxis], true_ids[:, tf.newaxis, :])
    return tf.reduce_any(equal, axis=-1)


def _corrected_logits(
    true_logits: tf.Tensor,
    sampled_logits: tf.Tensor,
    sampled_log_q: tf.Tensor,
    *,
    true_log_q: Optional[tf.Tensor] = None,
    positive_corrected: bool = True,
    hit_mask: Optional[tf.Tensor] = None,
) -> tf.Tensor:
    """[B, T + m] logits: positives first, then negatives minus log(m·q), hits masked.

    Args:
      true_logits: [B, T] raw logits of the positives.
      sampled_logits: [B, m] raw logits of the drawn negatives.
      sampled_log_q: [B, m] normalized log-probabilities of the draws (not expected counts), or
        [m] for draws shared by the batch.
      true_log_q: [B, T] log q of the positives; required when `positive_corrected` and T > 0.
      positive_corrected: subtract log(m·q) from the positives too ("standard"); False keeps
        them raw ("negatives_only", "corrected").
      hit_mask: optional bool [B, m]; True columns get `MASKED_LOGIT`. Default None.
    """
    num_samples = sampled_logits.shape[-1]
    if num_samples is None:
        raise ValueError("The number of sampled columns must be static.")
    log_m = math.log(num_samples)
    sampled_log_q = tf.stop_gradient(tf.maximum(tf.cast(sampled_log_q, tf.float32), _MIN_LOG_Q))
    negatives = sampled_logits - (log_m + sampled_log_q)
    if hit_mask is not None:
        negatives = tf.where(hit_mask, tf.cast(_MASKED_LOGIT, negatives.dtype), negatives)
    positives = true_logits
    if positive_corrected and true_logits.shape[-1] != 0:
        if true_log_q is None:
            raise ValueError(
                "`true_log_q` (the positives' log q, e.g. `sampler.log_prob(query, labels)`) is required "
                "with `logq_correction='standard'` (the default); pass it, or "
                "`logq_correction='negatives_only'` for Blanc & Rendle's uncorrected positive."
            )
        true_log_q = tf.stop_gradient(tf.maximum(tf.cast(true_log_q, tf.float32), _MIN_LOG_Q))
        positives = true_logits - (log_m + true_log_q)
    return tf.concat([positives, negatives], axis=-1)


def _multi_positive_cross_entropy(logits: tf.Tensor, num_true: int) -> tf.Tensor:
    """[B]: cross-entropy with target 1/num_true on each of the first num_true columns.

    Args:
      logits: [B, num_true + m] corrected logits, positives first.
      num_true: how many leading columns are positives.
    """
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    return -tf.reduce_mean(log_probs[:, :num_true], axis=-1)


def _check_logq_correction(logq_correction: str, remove_accidental_hits: bool = True) -> str:
    """`logq_correction`, or a ValueError naming the accepted values (and the hit masking that
    "corrected" needs)."""
    logq_correction = _validation.resolve_logq_correction(logq_correction)
    if logq_correction == "corrected" and not remove_accidental_hits:
        raise ValueError(
            "`logq_correction='corrected'` estimates the partition function without the positive, so "
            "accidental hits must be removed (`remove_accidental_hits=True`)."
        )
    return logq_correction


def _corrected_logq_cross_entropy(logits: tf.Tensor, num_true: int, log_negative_draws: float = 0.0) -> tf.Tensor:
    """[B]: Khrylchenko et al.'s corrected-logQ loss (module docstring), averaged over positives.

    Args:
      logits: [B, num_true + m]: the positives' raw logits first, then the negatives corrected by
        -log(m·q) with accidental hits masked (`sampled_softmax_logits(..., logq_correction="corrected")`).
      num_true: how many leading columns are positives.
      log_negative_draws: log of how many independent estimates of Z₋y the negative columns sum
        (1 for one proposal; mixed in-batch and catalogue negatives are two). Default 0.0.
    """
    positives, negatives = logits[:, :num_true], logits[:, num_true:]
    log_rest = tf.reduce_logsumexp(negatives, axis=-1, keepdims=True)
    miss_probability = tf.stop_gradient(1.0 - tf.sigmoid(positives - (log_rest - log_negative_draws)))
    return tf.reduce_mean(miss_probability * (log_rest - positives), axis=-1)


@_validation.accepts_correct_positive
def sampled_softmax_logits(
    query: TensorLike,
    labels: TensorLike,
    sampled_ids: TensorLike,
    sampled_log_q: TensorLike,
    class_embeddings: TensorLike,
    class_bias: Optional[TensorLike] = None,
    *,
    true_log_q: Optional[TensorLike] = None,
    logq_correction: str = "standard",
    remove_accidental_hits: bool = True,
    logit_transform: _LogitTransform = None,
) -> tf.Tensor:
    """The corrected logits, positives first: what `sampled_softmax_loss` takes the loss of.

    Args: as `sampled_softmax_loss` (without `sample_weight`).

    Returns:
      [B, num_true + m] float32: the positives' logits (minus log(m·q) under "standard", raw
      otherwise), then the negatives' minus log(m·q), accidental hits at -1e30.

    Raises:
      ValueError: for ids of the wrong rank, an unknown `logq_correction`, "corrected" without
        hit removal, or "standard" without `true_log_q`.
      TypeError: for float ids or integer queries.
    """
    logq_correction = _check_logq_correction(logq_correction, remove_accidental_hits)
    query = _validation.as_queries(query, "query")
    labels = _validation.as_label_matrix(labels)
    sampled_ids = _validation.as_ids(sampled_ids, "sampled_ids")
    true_logits = _gathered_logits(query, labels, class_embeddings, class_bias, logit_transform)
    if sampled_ids.shape.rank not in (1, 2):
        raise ValueError(
            "`sampled_ids` must have shape [batch, num_samples] (per query) or [num_samples] "
            f"(shared by the batch); got shape {sampled_ids.shape}."
        )
    sampled_logits = _gathered_logits(query, sampled_ids, class_embeddings, class_bias, logit_transform)
    hit_mask = _accidental_hit_mask(labels, sampled_ids) if remove_accidental_hits else None
    return _corrected_logits(
        true_logits,
        sampled_logits,
        sampled_log_q,
        true_log_q=true_log_q,
        positive_corrected=logq_correction == "standard",
        hit_mask=hit_mask,
    )


@_validation.accepts_correct_positive
def sampled_softmax_loss(
    query: TensorLike,
    labels: TensorLike,
    sampled_ids: TensorLike,
    sampled_log_q: TensorLike,
    class_embeddings: TensorLike,
    class_bias: Optional[TensorLike] = None,
    *,
    true_log_q: Optional[TensorLike] = None,
    logq_correction: str = "standard",
    remove_accidental_hits: bool = True,
    sample_weight: Optional[TensorLike] = None,
    logit_transform: _LogitTransform = None,
) -> tf.Tensor:
    """Per-example sampled-softmax loss (the estimators of the module docstring).

    Args:
      query: [B, d] float query embeddings h.
      labels: [B] or [B, num_true] integer positive class ids.
      sampled_ids: [B, m] integer negatives drawn with replacement per query, or [m] shared by
        the whole batch (as `tf.nn.sampled_softmax_loss` draws them; one matmul scores them).
      sampled_log_q: normalized log q of each draw, shaped like `sampled_ids`.
      class_embeddings: [N, d] class embedding matrix W (a variable, a tensor, or a sharded table).
      class_bias: optional [N] bias. Default None.
      true_log_q: [B, num_true] log q of the positives under the same proposal (for shared draws:
        the batch mixture's); required with "standard", unused otherwise. Default None.
      logq_correction: "standard" (default), "negatives_only" or "corrected" (module docstring).
      remove_accidental_hits: mask negatives equal to one of the row's positives ("corrected"
        requires it). Default True.
      sample_weight: optional [B] weights multiplied into the per-example loss. Default None.
      logit_transform: optional elementwise map on raw logits (e.g. `tf.abs`, absolute softmax).
        Default None.

    Returns:
      [B] float32 per-example losses.

    Raises:
      ValueError, TypeError: as `sampled_softmax_logits`.
    """
    logq_correction = _check_logq_correction(logq_correction, remove_accidental_hits)
    logits = sampled_softmax_logits(
        query,
        labels,
        sampled_ids,
        sampled_log_q,
        class_embeddings,
        class_bias,
        true_log_q=true_log_q if logq_correction == "standard" else None,
        logq_correction=logq_correction,
        remove_accidental_hits=remove_accidental_hits,
        logit_transform=logit_transform,
    )
    num_true = _validation.as_label_matrix(labels).shape[-1]
    return _reduction.weighted(_sampled_cross_entropy(logits, num_true, logq_correction), sample_weight)


def _sampled_cross_entropy(logits: tf.Tensor, num_true: int, logq_correction: str = "standard") -> tf.Tensor:
    """[B]: the loss `logq_correction` names over corrected logits [B, num_true + m]
    (`_multi_positive_cross_entropy` or `_corrected_logq_cross_entropy`)."""
    if _check_logq_correction(logq_correction) == "corrected":
        return _corrected_logq_cross_entropy(logits, num_true)
    return _multi_positive_cross_entropy(logits, num_true)


def full_softmax_loss(
    query: TensorLike,
    labels: TensorLike,
    class_embeddings: TensorLike,
    class_bias: Optional[TensorLike] = None,
    *,
    sample_weight: Optional[TensorLike] = None,
    logit_transform: _LogitTransform = None,
) -> tf.Tensor:
    """Exact per-example softmax cross-entropy over all N classes (O(N·d) per example).

    With num_true > 1 the target puts 1/num_true on each positive, as `sampled_softmax_loss` does.

    Args:
      query: [B, d] queries.
      labels: [B] or [B, num_true] integer class ids.
      class_embeddings: [N, d] class table W.
      class_bias: optional [N] bias. Default None.
      sample_weight: optional [B] weights multiplied into the per-example loss. Default None.
      logit_transform: optional elementwise map on the logits. Default None.

    Returns:
      [B] float32 per-example losses.

    Raises:
      ValueError: for queries not of rank 2 or labels not of rank 1 or 2.
      TypeError: for integer queries or float labels.
    """
    query = _validation.as_queries(query, "query")
    labels = _validation.as_label_matrix(labels)
    logits = _full_logits(query, class_embeddings, class_bias, logit_transform)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    per_example = -tf.reduce_mean(tf.gather(log_probs, labels, batch_dims=1), axis=-1)
    return _reduction.weighted(per_example, sample_weight)

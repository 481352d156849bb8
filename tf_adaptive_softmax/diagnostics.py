"""How far a sampler is from the model's softmax, measured on a probe batch.

For queries h with labels y, model distribution p = softmax(h Wᵀ + b) and proposal q(· | h):

* `kl_p_q` = KL(p ‖ q) and `kl_q_p` = KL(q ‖ p), averaged over the probe queries;
* `ess_ratio`: effective sample size of the self-normalized importance weights w_j = p(s_j)/q(s_j)
  of m draws, (Σw)² / Σw², divided by m (1 when q = p);
* `gradient_bias_l1` / `gradient_cosine`: the Monte-Carlo mean of the sampled-softmax gradient
  w.r.t. the logits over `repeats` draws, against the full-softmax gradient p − y (L1 distance
  and cosine), i.e. the bias the sampler puts into training (plus Monte-Carlo noise that shrinks
  with `repeats`);
* for MIDX, bucket statistics: the share of non-empty buckets and the largest bucket.

Everything costs O(B·N·d) on the probe batch (full logits and q over all N classes), so keep the
probe small. `ProposalDiagnostics` adds these numbers to the epoch logs (History, TensorBoard).

Example:
    >>> import numpy as np
    >>> from tf_adaptive_softmax import diagnostics, samplers
    >>> w = np.random.default_rng(0).normal(size=(50, 4)).astype("float32")
    >>> h = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    >>> stats = diagnostics.proposal_diagnostics(h, np.arange(8), w, None, samplers.Uniform(50), num_samples=10)
    >>> sorted(stats)
    ['ess_ratio', 'gradient_bias_l1', 'gradient_cosine', 'kl_p_q', 'kl_q_p']
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf

from tf_adaptive_softmax import _validation, estimator
from tf_adaptive_softmax._keras import K
from tf_adaptive_softmax._types import TensorLike
from tf_adaptive_softmax.samplers.base import Sampler

__all__ = ["ProposalDiagnostics", "proposal_diagnostics"]


def _sampled_gradient_mean(logits, labels, sampler, queries, num_samples, repeats, seed, logq_correction):
    """Mean over `repeats` draws of d(sampled loss)/d(logits), [B, N]."""
    batch = tf.shape(logits)[0]
    tiled_logits = tf.tile(logits, [repeats, 1])
    tiled_labels = tf.tile(labels, [repeats, 1])
    tiled_queries = tf.tile(queries, [repeats, 1])
    ids, log_q = sampler.sample(tiled_queries, num_samples, seed=seed)
    positive_corrected = logq_correction == "standard"
    true_log_q = sampler.log_prob(tiled_queries, tiled_labels) if positive_corrected else None
    with tf.GradientTape() as tape:
        tape.watch(tiled_logits)
        true_logits = tf.gather(tiled_logits, tiled_labels, batch_dims=1)
        sampled_logits = tf.gather(tiled_logits, ids, batch_dims=1)
        corrected = estimator._corrected_logits(
            true_logits,
            sampled_logits,
            log_q,
            true_log_q=true_log_q,
            positive_corrected=positive_corrected,
            hit_mask=estimator._accidental_hit_mask(tiled_labels, ids),
        )
        loss = tf.reduce_sum(estimator._sampled_cross_entropy(corrected, labels.shape[-1], logq_correction))
    gradient = tape.gradient(loss, tiled_logits)
    return tf.reduce_mean(tf.reshape(gradient, [repeats, batch, -1]), axis=0)


@_validation.accepts_correct_positive
def proposal_diagnostics(
    queries: TensorLike,
    labels: TensorLike,
    class_embeddings: TensorLike,
    class_bias: Optional[TensorLike],
    sampler: Sampler,
    num_samples: int = 64,
    repeats: int = 32,
    seed: int = 0,
    logq_correction: str = "standard",
) -> Dict[str, float]:
    """The numbers listed in the module docstring, as Python floats.

    Args:
      queries: [B, d] probe queries; labels: [B] (or [B, num_true]) their class ids.
      class_embeddings: [N, d]; class_bias: [N] or None — the model's current output layer.
      sampler: any `Sampler` (its current state is what is measured).
      num_samples: m, as in training.
      repeats: Monte-Carlo draws of m negatives per query for the gradient bias (default 32).
      seed: seed of the draws (default 0).
      logq_correction: the estimator whose gradient bias is measured: "standard" (default, the
        training default), "negatives_only" or "corrected" (`tf_adaptive_softmax.estimator`).

    Returns:
      {"kl_p_q", "kl_q_p", "ess_ratio", "gradient_bias_l1", "gradient_cosine"} as floats (and
      MIDX's "nonempty_bucket_share", "largest_bucket").

    Raises:
      ValueError: an unknown `logq_correction`, num_samples or repeats below 1, queries not [B, d].
    """
    logq_correction = estimator._check_logq_correction(logq_correction)
    queries = _validation.as_queries(queries)
    labels = _validation.as_label_matrix(labels)
    num_samples = _validation.check_num_samples(num_samples)
    repeats = _validation.check_positive_int(repeats, "repeats")
    class_embeddings = tf.convert_to_tensor(class_embeddings, tf.float32)
    num_classes = class_embeddings.shape[0]
    logits = estimator._full_logits(
        queries, class_embeddings, None if class_bias is None else tf.convert_to_tensor(class_bias, tf.float32)
    )
    log_p = tf.nn.log_softmax(logits, axis=-1)
    all_ids = tf.tile(tf.range(num_classes)[tf.newaxis], [tf.shape(queries)[0], 1])
    log_q = sampler.log_prob(queries, all_ids)
    p, q = tf.exp(log_p), tf.exp(log_q)
    # q may be 0 where p > 0 (zero-count unigram classes): floor log q so KL(p‖q) stays finite.
    kl_p_q = tf.reduce_sum(p * (log_p - tf.maximum(log_q, estimator._MIN_LOG_Q)), axis=-1)
    kl_q_p = tf.reduce_sum(tf.where(q > 0, q * (log_q - log_p), 0.0), axis=-1)
    ids, draw_log_q = sampler.sample(queries, num_samples, seed=seed)
    log_w = tf.gather(log_p, ids, batch_dims=1) - draw_log_q
    ess = tf.exp(2.0 * tf.reduce_logsumexp(log_w, -1) - tf.reduce_logsumexp(2.0 * log_w, -1)) / num_samples
    mean_gradient = _sampled_gradient_mean(
        logits, labels, sampler, queries, num_samples, repeats, seed + 1, logq_correction
    )
    targets = tf.reduce_sum(tf.one_hot(labels, num_classes), axis=1) / labels.shape[-1]
    full_gradient = p - targets
    cosine = tf.reduce_sum(mean_gradient * full_gradient, -1) / (
        tf.norm(mean_gradient, axis=-1) * tf.norm(full_gradient, axis=-1) + 1e-12
    )
    stats = {
        "kl_p_q": float(tf.reduce_mean(kl_p_q)),
        "kl_q_p": float(tf.reduce_mean(kl_q_p)),
        "ess_ratio": float(tf.reduce_mean(ess)),
        "gradient_bias_l1": float(tf.reduce_mean(tf.reduce_sum(tf.abs(mean_gradient - full_gradient), -1))),
        "gradient_cosine": float(tf.reduce_mean(cosine)),
    }
    stats.update(_bucket_statistics(sampler))
    return stats


def _bucket_statistics(sampler) -> Dict[str, float]:
    """For MIDX: share of non-empty buckets and the largest bucket size; {} for other samplers.

    Args:
      sampler: any sampler (only MIDX has buckets).
    """
    sizes = getattr(sampler, "bucket_sizes", None)
    if sizes is None or getattr(sampler, "embedding_dim", None) is None:
        return {}
    sizes = np.asarray(sizes)
    return {"nonempty_bucket_share": float(np.mean(sizes > 0)), "largest_bucket": float(sizes.max())}


class ProposalDiagnostics(K.callbacks.Callback):
    """Adds `proposal_diagnostics` of a loss layer's sampler to the epoch logs.

    The numbers land in `History` and TensorBoard under `diagnostics/<name>` (the progress bar
    prints its own line before callbacks added later run, so they are also printed here when
    `verbose`).

    Args:
      output_layer: the `AdaptiveSampledSoftmaxLoss` whose sampler is measured.
      query_model: maps `probe_features` to queries (the model's query tower).
      probe_features, probe_labels: a small fixed probe batch.
      num_samples, repeats: as `proposal_diagnostics`; num_samples defaults to the layer's.
      verbose: print the numbers at each epoch end.

    Raises:
      ValueError: an `output_layer` without a sampler.
    """

    def __init__(
        self,
        output_layer: Any,
        query_model: Any,
        probe_features: TensorLike,
        probe_labels: TensorLike,
        num_samples: Optional[int] = None,
        repeats: int = 32,
        verbose: bool = False,
    ):
        super().__init__()
        if getattr(output_layer, "sampler", None) is None:
            raise ValueError("`output_layer` has no sampler to diagnose.")
        self.output_layer = output_layer
        self.query_model = query_model
        self.probe_features = probe_features
        self.probe_labels = probe_labels
        self.num_samples = num_samples or output_layer.num_samples
        self.repeats = repeats
        self.verbose = verbose

    def on_epoch_end(self, epoch, logs=None):
        queries = self.query_model(self.probe_features, training=False)
        stats = proposal_diagnostics(
            queries,
            self.probe_labels,
            self.output_layer.class_embeddings,
            self.output_layer.class_bias,
            self.output_layer.sampler,
            self.num_samples,
            self.repeats,
            seed=epoch,
            logq_correction=self.output_layer.logq_correction,
        )
        if logs is not None:
            logs.update({f"diagnostics/{name}": value for name, value in stats.items()})
        if self.verbose:
            print(" - ".join(f"{name}: {value:.4g}" for name, value in stats.items()))

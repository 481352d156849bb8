"""The loss that trains learned MIDX codewords (`LearnedCodebooks`), as functions of tensors."""

from __future__ import annotations

import tensorflow as tf


def proposal_kl(log_q: tf.Tensor, target_logits: tf.Tensor) -> tf.Tensor:
    """[B]: Σ_j p̂_j (log p̂_j − log q_j) over the candidates, p̂ = softmax(target_logits).

    Its gradient −Σ_j p̂_j ∇log q_j is a self-normalized importance estimate of ∇KL(p‖q) over all
    N classes when log q_j is exact (MIDX's normalizer sums the K² buckets), so nothing grows with
    N; the Σ p̂ log p̂ term (no gradient) makes the value read as a KL estimate in nats. The forward
    direction KL(p‖q) is the one the estimator needs: its weights are p/q, so its bias and variance
    grow where q ≪ p, which KL(p‖q) penalizes (mass-covering), while KL(q‖p) would let q drop
    modes of p. A masked candidate (p̂ = 0) or a zero-weight class (log q = −inf) adds nothing.
    """
    target = tf.nn.softmax(target_logits, axis=-1)
    log_target = tf.nn.log_softmax(target_logits, axis=-1)
    return tf.reduce_sum(tf.math.multiply_no_nan(log_target - log_q, target), axis=-1)


def reconstruction_error(positive_embeddings: tf.Tensor, quantized: tf.Tensor) -> tf.Tensor:
    """[B]: mean over the row's positives of ‖w_y − q̂_y‖², which keeps codewords near the classes
    they stand for (so that re-assigning classes stays meaningful)."""
    return tf.reduce_mean(tf.reduce_sum(tf.square(positive_embeddings - quantized), axis=-1), axis=-1)

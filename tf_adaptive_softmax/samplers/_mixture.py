"""The batch mixture q̄(i) = (1/B)·Σ_b q(i | h_b) that shared negatives are drawn from.

Generic forms for any sampler; MIDX and the quadratic kernel override them with exact, cheaper
ones. A static sampler's q does not depend on the query, so its mixture is q itself.
"""

from __future__ import annotations

import tensorflow as tf

from tf_adaptive_softmax._ops.random import sub_seed, uniform_ints

__all__ = ["at_least_one_query", "mixture_log_prob", "one_query", "shared_draw"]


def one_query(queries: tf.Tensor) -> tf.Tensor:
    """A single zero query of the batch's width: what a static sampler's draw is conditioned on."""
    return tf.zeros(tf.stack([1, tf.shape(queries)[1]]), queries.dtype)


def at_least_one_query(queries: tf.Tensor) -> tf.Tensor:
    """The batch, or one zero query when it is empty: a mixture over no queries is undefined, and
    an empty batch (the last shard of a dataset) must still trace and run."""
    missing = tf.maximum(1 - tf.shape(queries)[0], 0)
    return tf.concat([queries, tf.zeros(tf.stack([missing, tf.shape(queries)[1]]), queries.dtype)], 0)


def shared_draw(sampler, queries: tf.Tensor, num_samples: int, seed: tf.Tensor):
    """(ids [m], log q̄ [m]): each draw picks a query uniformly, then draws from its q."""
    if not sampler.adaptive:
        ids, log_q = sampler._sample(one_query(queries), num_samples, seed)
        return ids[0], log_q[0]
    queries = at_least_one_query(queries)
    owners = uniform_ints([num_samples], tf.shape(queries)[0], sub_seed(seed, 0))
    ids, _ = sampler._sample(tf.gather(queries, owners), 1, sub_seed(seed, 1))
    ids = ids[:, 0]
    return ids, sampler._mixture_log_prob(queries, ids)


def mixture_log_prob(sampler, queries: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """log q̄ of flat ids [k]: log-mean-exp over the batch of each query's log q."""
    if not sampler.adaptive:
        return sampler._log_prob(one_query(queries), ids[tf.newaxis])[0]
    queries = at_least_one_query(queries)
    batch = tf.shape(queries)[0]
    width = ids.shape[0] if ids.shape[0] is not None else tf.size(ids)  # static where known (XLA)
    per_query = sampler._log_prob(queries, tf.broadcast_to(ids, tf.stack([batch, width])))
    return tf.reduce_logsumexp(per_query, axis=0) - tf.math.log(tf.cast(batch, tf.float32))

"""MIDX's inverted multi-index: every class's bucket (k1, k2), the class ids sorted by bucket, the
bucket offsets into them and the log bucket weights log W[k1, k2] (with weighted buckets, the
cumulative in-bucket weights the draw searches)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import tensorflow as tf

from tf_adaptive_softmax._ops.discrete import segmented_cumsum


class BucketIndex(NamedTuple):
    """The index a refresh assigns: bucket [N], sorted_ids [N], offsets [K² + 1], log_bucket
    [K, K], cumulative [N] (weighted buckets only, else None)."""

    bucket: tf.Tensor
    sorted_ids: tf.Tensor
    offsets: tf.Tensor
    log_bucket: tf.Tensor
    cumulative: Optional[tf.Tensor]


def build_bucket_index(codes1: tf.Tensor, codes2: tf.Tensor, log_weight: tf.Tensor, num_codewords: int, weighted: bool):
    """The `BucketIndex` of classes with codes (k1, k2) [N] and in-bucket log weights log w_i [N].

    W[k1, k2] = Σ_{i in bucket} w_i, summed after scaling by the largest weight (exp cannot
    overflow); the cumulative in-bucket weights use the same scale and restart at every bucket.
    """
    k = num_codewords
    bucket = codes1 * k + codes2
    sorted_ids = tf.argsort(bucket, stable=True)
    sizes = tf.math.unsorted_segment_sum(tf.ones_like(bucket), bucket, k * k)
    offsets = tf.concat([[0], tf.cumsum(sizes)], axis=0)
    top = tf.reduce_max(log_weight)
    weight = tf.exp(log_weight - top)
    bucket_weight = tf.math.unsorted_segment_sum(weight, bucket, k * k)
    log_bucket = tf.reshape(tf.math.log(bucket_weight) + top, [k, k])
    cumulative = None
    if weighted:
        cumulative = segmented_cumsum(tf.gather(weight, sorted_ids), tf.gather(bucket, sorted_ids))
    return BucketIndex(bucket, sorted_ids, offsets, log_bucket, cumulative)

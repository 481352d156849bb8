"""Mixed precision: the demo model trains with finite losses under mixed_float16 and
mixed_bfloat16, while log q, the logits and the logsumexp stay float32."""

import numpy as np
import pytest
import tensorflow as tf

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, datasets
from tf_adaptive_softmax import _experiments as experiments
from tf_adaptive_softmax._keras import K


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def policy(request):
    K.mixed_precision.set_global_policy(request.param)
    yield request.param
    K.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("sampler_name", ["uniform", "midx_rvq", "quadratic_kernel"])
def test_demo_model_trains_finite(policy, sampler_name):
    teacher = datasets.make_teacher(300, 16, seed=0)
    train, test = datasets.train_test_split(teacher, 3_000, 500)
    counts = np.bincount(train[1], minlength=300).astype(np.float64)
    result = experiments.train_and_evaluate(
        train,
        test,
        300,
        experiments.SAMPLERS[sampler_name](300, counts),
        num_samples=20,
        epochs=2,
        batch_size=64,
        learning_rate=3e-3,
        jit_compile=False,
        verbose=0,
    )
    assert all(np.isfinite(result["train_losses"])), result["train_losses"]
    assert np.isfinite(result["test_cross_entropy"])
    # It learned: the exact test cross-entropy beats the uniform predictor's log N. (The sampled
    # training loss is not comparable across epochs: an adaptive proposal changes at each refresh.)
    assert result["test_cross_entropy"] < np.log(300) - 0.3, result["test_cross_entropy"]


@pytest.mark.parametrize("sampler_name", ["uniform", "midx_rvq", "quadratic_kernel"])
def test_low_precision_queries_give_float32_log_q_and_loss(policy, sampler_name):
    compute_dtype = K.mixed_precision.global_policy().compute_dtype
    num_classes = 300
    sampler = experiments.SAMPLERS[sampler_name](num_classes, np.ones(num_classes))
    output = AdaptiveSampledSoftmaxLoss(num_classes, sampler, num_samples=16)
    # Large queries: exp(o) would overflow float16 (max 65504) if the softmax ran in half precision.
    query = tf.cast(tf.random.normal([8, 16]) * 1000.0, compute_dtype)
    labels = tf.zeros([8], tf.int32)
    output.build_for_dim(16)
    output.refresh_sampler()
    ids, log_q = sampler.sample(query, 16)
    assert log_q.dtype == tf.float32 and sampler.log_prob(query, ids).dtype == tf.float32
    assert output.class_embeddings.dtype == tf.float32  # the layer keeps float32 weights and math
    for training in (True, False):
        loss = output((query, labels), training=training)
        assert loss.dtype == tf.float32
        assert np.all(np.isfinite(loss.numpy()))
    assert output.logits(query).dtype == tf.float32

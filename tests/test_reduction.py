"""One helper for sample weights and reductions understands every reduction name of both Keras
flavours; the compile adapter uses it, and its train/eval detection fails loudly."""

import numpy as np
import pytest
import tensorflow as tf

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, SampledSoftmaxLoss, _reduction, losses, samplers
from tf_adaptive_softmax._keras import IS_KERAS_3, K

PER_EXAMPLE = tf.constant([1.0, 2.0, 3.0, 4.0])
WEIGHTS = tf.constant([0.0, 1.0, 2.0, 1.0])


@pytest.mark.parametrize(
    "reduction, expected",
    [
        (None, [0.0, 2.0, 6.0, 4.0]),
        ("none", [0.0, 2.0, 6.0, 4.0]),
        ("sum", 12.0),
        ("sum_over_batch_size", 3.0),
        ("auto", 3.0),
        ("mean", 3.0),
        ("mean_with_sample_weight", 3.0),
        ("SUM", 12.0),
    ],
)
def test_every_reduction_name_of_both_flavours(reduction, expected):
    got = _reduction.reduce(PER_EXAMPLE, reduction, WEIGHTS).numpy()
    np.testing.assert_allclose(got, expected)


def test_weighted_mean_differs_from_the_batch_mean():
    weights = tf.constant([1.0, 1.0, 0.0, 0.0])
    assert float(_reduction.reduce(PER_EXAMPLE, "mean_with_sample_weight", weights)) == pytest.approx(1.5)
    assert float(_reduction.reduce(PER_EXAMPLE, "sum_over_batch_size", weights)) == pytest.approx(0.75)


def test_tf_keras_enum_members_are_understood():
    class FakeEnum:  # tf_keras' Reduction members carry the name as .value
        value = "sum_over_batch_size"

    assert _reduction.reduction_name(FakeEnum()) == "sum_over_batch_size"
    assert _reduction.reduction_name("Reduction.SUM") == "sum"


def test_unknown_reduction_is_a_clear_error():
    with pytest.raises(ValueError, match="reduction"):
        _reduction.reduce(PER_EXAMPLE, "average")
    layer = AdaptiveSampledSoftmaxLoss(20, samplers.Uniform(20), num_samples=3)
    with pytest.raises(ValueError, match="reduction"):
        SampledSoftmaxLoss(layer, reduction="average")


@pytest.mark.skipif(not IS_KERAS_3, reason="Keras 3's reduction name")
def test_adapter_honours_mean_with_sample_weight():
    layer = AdaptiveSampledSoftmaxLoss(20, None, num_samples=3)
    layer.build_for_dim(4)
    x = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    y = np.array([1, 2, 3, 4])
    weights = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
    per_example = SampledSoftmaxLoss(layer, mode="full", reduction="none")(y, x).numpy()
    got = SampledSoftmaxLoss(layer, mode="full", reduction="mean_with_sample_weight")(y, x, weights)
    assert float(got) == pytest.approx(per_example[:2].mean(), rel=1e-6)


def test_train_eval_detection_fails_loudly_when_tensorflow_moves(monkeypatch):
    from tensorflow.python.eager import record

    monkeypatch.delattr(record, "could_possibly_record")
    layer = AdaptiveSampledSoftmaxLoss(20, samplers.Uniform(20), num_samples=3)
    layer.build_for_dim(4)
    with pytest.raises(RuntimeError, match="mode='sampled'"):
        SampledSoftmaxLoss(layer)(np.array([1]), np.zeros((1, 4), np.float32))
    # Explicit modes never need the private signal.
    assert np.isfinite(float(SampledSoftmaxLoss(layer, mode="full")(np.array([1]), np.zeros((1, 4), np.float32))))
    assert losses.SampledSoftmaxLoss is SampledSoftmaxLoss and K is not None

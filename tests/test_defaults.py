"""The default estimator is the corrected positive at every entry point; older configs keep theirs."""

import inspect

import numpy as np
import pytest

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, SampledSoftmaxLoss, diagnostics, estimator, samplers
from tf_adaptive_softmax._keras import IS_KERAS_3, K

N, D, M = 40, 6, 7


def _data(batch=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, D)).astype(np.float32), rng.integers(0, N, batch).astype(np.int32)


def _corrected_loss_from_twin(layer, x, y, correct_positive):
    """The estimator's loss on the draws a twin sampler (same seed, same state) makes."""
    twin = samplers.LogUniform(N, seed=3)
    ids, log_q = twin.sample(x, M)
    true_log_q = twin.log_prob(x, y) if correct_positive else None
    return estimator.sampled_softmax_loss(
        x,
        y,
        ids,
        log_q,
        layer.class_embeddings,
        layer.class_bias,
        true_log_q=true_log_q,
        correct_positive=correct_positive,
    ).numpy()


def test_estimator_functions_default_to_the_corrected_positive():
    for function in (estimator.sampled_softmax_loss, estimator.corrected_logits):
        assert inspect.signature(function).parameters["correct_positive"].default is True
    assert inspect.signature(diagnostics.proposal_diagnostics).parameters["correct_positive"].default is True


def test_layer_default_is_the_corrected_positive_and_computes_it():
    layer = AdaptiveSampledSoftmaxLoss(N, samplers.LogUniform(N, seed=3), num_samples=M)
    layer.build_for_dim(D)
    assert layer.get_config()["correct_positive"] is True
    x, y = _data()
    got = layer((x, y), training=True).numpy()
    np.testing.assert_allclose(got, _corrected_loss_from_twin(layer, x, y, True), rtol=1e-6)
    assert not np.allclose(got, _corrected_loss_from_twin(layer, x, y, False), rtol=1e-3)


def test_compile_adapter_uses_the_corrected_positive_by_default():
    layer = AdaptiveSampledSoftmaxLoss(N, samplers.LogUniform(N, seed=3), num_samples=M)
    layer.build_for_dim(D)
    loss = SampledSoftmaxLoss(layer, mode="sampled", reduction="none")
    x, y = _data()
    got = loss(y, x).numpy()
    np.testing.assert_allclose(got, _corrected_loss_from_twin(layer, x, y, True), rtol=1e-6)


def test_an_older_config_with_the_uncorrected_positive_loads_unchanged():
    old = AdaptiveSampledSoftmaxLoss(N, samplers.Uniform(N), num_samples=M, correct_positive=False).get_config()
    assert old["correct_positive"] is False
    restored = AdaptiveSampledSoftmaxLoss.from_config(old)
    assert restored.correct_positive is False
    restored.build_for_dim(D)
    x, y = _data()
    # Uniform q: the corrected positive differs from eq. 3 by log(m/N) on the positive's logit.
    assert np.all(np.isfinite(restored((x, y), training=True).numpy()))


@pytest.mark.skipif(not IS_KERAS_3, reason="the .keras format round-trips this layer in Keras 3")
def test_keras_file_written_with_eq3_reloads_with_eq3(tmp_path):
    features, labels = K.Input((D,)), K.Input((), dtype="int32")
    layer = AdaptiveSampledSoftmaxLoss(
        N, samplers.Uniform(N, seed=1), num_samples=M, correct_positive=False, add_to_model_loss=True
    )
    model = K.Model([features, labels], layer((K.layers.Dense(D)(features), labels)))
    path = str(tmp_path / "eq3.keras")
    model.save(path)
    restored = K.models.load_model(path)
    restored_layer = next(layer for layer in restored.layers if isinstance(layer, AdaptiveSampledSoftmaxLoss))
    assert restored_layer.correct_positive is False

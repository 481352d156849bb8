"""One option for the logQ choice at every entry point: "standard" by default; the deprecated
`correct_positive` still works (with a warning, the same numbers), and files and configs saved
with it load with the same estimator."""

import inspect
import pathlib

import numpy as np
import pytest

from tf_adaptive_softmax import (
    AdaptiveSampledSoftmaxLoss,
    SampledSoftmaxLoss,
    diagnostics,
    estimator,
    retrieval,
    samplers,
)
from tf_adaptive_softmax._keras import IS_KERAS_3, K

N, D, M = 40, 6, 7
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def _data(batch=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, D)).astype(np.float32), rng.integers(0, N, batch).astype(np.int32)


def _loss_from_twin(layer, x, y, logq_correction):
    """The estimator's loss on the draws a twin sampler (same seed, same state) makes."""
    twin = samplers.LogUniform(N, seed=3)
    ids, log_q = twin.sample(x, M)
    true_log_q = twin.log_prob(x, y)
    return estimator.sampled_softmax_loss(
        x,
        y,
        ids,
        log_q,
        layer.class_embeddings,
        layer.class_bias,
        true_log_q=true_log_q,
        logq_correction=logq_correction,
    ).numpy()


ENTRY_POINTS = [
    estimator.sampled_softmax_loss,
    estimator.sampled_softmax_logits,
    diagnostics.proposal_diagnostics,
    retrieval.mixed_negatives_loss,
    retrieval.mixed_negatives_scores,
    AdaptiveSampledSoftmaxLoss.__init__,
]


@pytest.mark.parametrize("function", ENTRY_POINTS, ids=lambda f: f.__qualname__)
def test_every_entry_point_has_one_logq_option_defaulting_to_standard(function):
    parameters = inspect.signature(function).parameters
    assert parameters["logq_correction"].default == "standard"
    assert "correct_positive" not in parameters


def test_layer_default_corrects_the_positive_and_the_options_differ():
    layer = AdaptiveSampledSoftmaxLoss(N, samplers.LogUniform(N, seed=3), num_samples=M)
    layer.build_for_dim(D)
    assert layer.get_config()["logq_correction"] == "standard" and "correct_positive" not in layer.get_config()
    x, y = _data()
    got = layer((x, y), training=True).numpy()
    np.testing.assert_allclose(got, _loss_from_twin(layer, x, y, "standard"), rtol=1e-6)
    assert not np.allclose(got, _loss_from_twin(layer, x, y, "negatives_only"), rtol=1e-3)
    adapted = AdaptiveSampledSoftmaxLoss(N, samplers.LogUniform(N, seed=3), num_samples=M)  # the compile adapter
    adapted.build_for_dim(D)
    loss = SampledSoftmaxLoss(adapted, mode="sampled", reduction="none")
    np.testing.assert_allclose(loss(y, x).numpy(), _loss_from_twin(adapted, x, y, "standard"), rtol=1e-6)


@pytest.mark.parametrize("logq_correction", ["negatives_only", "corrected"])
def test_layer_computes_each_choice(logq_correction):
    layer = AdaptiveSampledSoftmaxLoss(
        N, samplers.LogUniform(N, seed=3), num_samples=M, logq_correction=logq_correction
    )
    layer.build_for_dim(D)
    x, y = _data()
    np.testing.assert_allclose(
        layer((x, y), training=True).numpy(), _loss_from_twin(layer, x, y, logq_correction), rtol=1e-6
    )


def test_unknown_choice_names_the_argument():
    with pytest.raises(ValueError, match=r"logq_correction.*negatives_only"):
        AdaptiveSampledSoftmaxLoss(N, samplers.Uniform(N), num_samples=M, logq_correction="eq3")
    with pytest.raises(ValueError, match="remove_accidental_hits"):
        AdaptiveSampledSoftmaxLoss(
            N, samplers.Uniform(N), num_samples=M, logq_correction="corrected", remove_accidental_hits=False
        )


@pytest.mark.parametrize("correct_positive, expected", [(True, "standard"), (False, "negatives_only")])
def test_deprecated_correct_positive_warns_and_gives_the_same_numbers(correct_positive, expected):
    x, y = _data()
    with pytest.warns(DeprecationWarning, match="correct_positive"):
        old = AdaptiveSampledSoftmaxLoss(
            N, samplers.LogUniform(N, seed=3), num_samples=M, correct_positive=correct_positive
        )
    new = AdaptiveSampledSoftmaxLoss(N, samplers.LogUniform(N, seed=3), num_samples=M, logq_correction=expected)
    assert old.logq_correction == expected
    for layer in (old, new):
        layer.build_for_dim(D)
    new.set_weights(old.get_weights())
    np.testing.assert_allclose(old((x, y), training=True).numpy(), new((x, y), training=True).numpy(), rtol=1e-6)
    # The pure functions take it too.
    ids, log_q = samplers.LogUniform(N, seed=3).sample(x, M)
    true_log_q = samplers.LogUniform(N).log_prob(x, y)
    args = (x, y, ids, log_q, new.class_embeddings, new.class_bias)
    with pytest.warns(DeprecationWarning):
        deprecated = estimator.sampled_softmax_loss(*args, true_log_q=true_log_q, correct_positive=correct_positive)
    current = estimator.sampled_softmax_loss(*args, true_log_q=true_log_q, logq_correction=expected)
    np.testing.assert_allclose(deprecated.numpy(), current.numpy(), rtol=1e-6)
    candidates = np.random.default_rng(1).standard_normal((16, D)).astype(np.float32)
    probability = np.full(16, 0.05, np.float32)
    with pytest.warns(DeprecationWarning):
        deprecated = retrieval.mixed_negatives_loss(
            x, candidates, y, candidate_sampling_probability=probability, correct_positive=correct_positive
        )
    current = retrieval.mixed_negatives_loss(
        x, candidates, y, candidate_sampling_probability=probability, logq_correction=expected
    )
    assert float(deprecated) == pytest.approx(float(current), rel=1e-6)


def test_a_config_saved_with_correct_positive_loads_with_the_same_estimator():
    config = AdaptiveSampledSoftmaxLoss(N, samplers.Uniform(N), num_samples=M).get_config()
    config.pop("logq_correction")
    for saved, expected in ((False, "negatives_only"), (True, "standard")):
        with pytest.warns(DeprecationWarning):
            restored = AdaptiveSampledSoftmaxLoss.from_config({**config, "correct_positive": saved})
        assert restored.logq_correction == expected
    with pytest.warns(DeprecationWarning):  # "corrected" never used the flag: it stays corrected
        restored = AdaptiveSampledSoftmaxLoss.from_config(
            {**config, "correct_positive": False, "logq_correction": "corrected"}
        )
    assert restored.logq_correction == "corrected"


@pytest.mark.skipif(not IS_KERAS_3, reason="the .keras format round-trips this layer in Keras 3")
def test_keras_file_written_by_version_0_1_with_eq3_reloads_with_eq3():
    # Saved by release 0.1.0 with AdaptiveSampledSoftmaxLoss(..., correct_positive=False).
    with pytest.warns(DeprecationWarning):
        restored = K.models.load_model(FIXTURES / "eq3_layer_v0.1.0.keras")
    layer = next(layer for layer in restored.layers if isinstance(layer, AdaptiveSampledSoftmaxLoss))
    assert layer.logq_correction == "negatives_only"
    x, y = _data()
    query = next(layer for layer in restored.layers if isinstance(layer, K.layers.Dense))(x)
    twin = samplers.Uniform(N, seed=1)
    ids, log_q = twin.sample(query, M)
    expected = estimator.sampled_softmax_loss(
        query, y, ids, log_q, layer.class_embeddings, layer.class_bias, logq_correction="negatives_only"
    )
    layer.sampler._seed_state.assign(twin._seed_state - [0, 1])  # replay the twin's draw
    np.testing.assert_allclose(layer((query, y), training=True).numpy(), expected.numpy(), rtol=1e-5)


@pytest.mark.skipif(not IS_KERAS_3, reason="the .keras format round-trips this layer in Keras 3")
def test_keras_file_with_a_version_0_1_midx_reloads_its_options_and_state():
    # Saved by release 0.1.0: MIDX(40, num_codewords=4, quantizer="pq", include_bias=True,
    # kmeans_iterations=5, kmeans_sample_size=32, seed=2), refreshed once; row 0 of its log q
    # for ids 0..7 at the Dense layer's output for N(0, 1) features (NumPy seed 0) was:
    saved_log_q = [-3.68243, -3.7028532, -3.6818123, -3.6762323, -3.7028532, -3.6818123, -3.7045674, -3.7089362]
    restored = K.models.load_model(FIXTURES / "midx_layer_v0.1.0.keras")
    layer = next(layer for layer in restored.layers if isinstance(layer, AdaptiveSampledSoftmaxLoss))
    sampler = layer.sampler
    assert sampler.kmeans == samplers.KMeansOptions(iterations=5, sample_size=32, tolerance=0.0)  # as saved
    assert sampler.learned is None
    assert sampler.quantizer == "pq" and sampler.include_bias and sampler.num_codewords == 4
    x = np.random.default_rng(0).standard_normal((4, D)).astype("float32")
    query = next(layer for layer in restored.layers if isinstance(layer, K.layers.Dense))(x)
    log_q = sampler.log_prob(query, np.tile(np.arange(8), (4, 1))).numpy()[0]
    np.testing.assert_allclose(log_q, saved_log_q, rtol=1e-5)

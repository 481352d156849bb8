"""NaN or Inf at refresh: a clear error by default, or the previous state kept with a warning.
Either way no state variable changes (the index is never half-updated)."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, CodebookRefresh, SampledSoftmaxLoss, samplers
from tf_adaptive_softmax._keras import K

N, D = 30, 4

ADAPTIVE = {
    "midx": lambda: samplers.MIDX(N, num_codewords=3, include_bias=True, seed=1),
    "midx_learned": lambda: samplers.MIDX(N, num_codewords=3, learn_codebooks=True, seed=1),
    "quadratic_kernel": lambda: samplers.QuadraticKernel(N, leaf_size=5, seed=1),
    "softmax_snapshot": lambda: samplers.Softmax(N, live=False, seed=1),
}


def _refreshed(name):
    sampler = ADAPTIVE[name]()
    sampler.refresh(np.random.default_rng(0).standard_normal((N, D)).astype(np.float32), np.zeros(N))
    return sampler


def _state(sampler):
    return [np.asarray(w).copy() for w in sampler.weights]


def _poisoned(value, where="embeddings"):
    embeddings = np.random.default_rng(1).standard_normal((N, D)).astype(np.float32)
    bias = np.zeros(N, np.float32)
    (embeddings if where == "embeddings" else bias)[3] = value
    return embeddings, bias


def _assert_unchanged(sampler, before):
    for variable, old in zip(sampler.weights, before):
        np.testing.assert_array_equal(np.asarray(variable), old, err_msg=variable.name)


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["embeddings", "bias"])
def test_default_raises_and_leaves_state_untouched(name, value, where):
    sampler = _refreshed(name)
    before = _state(sampler)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        sampler.refresh(*_poisoned(value, where))
    _assert_unchanged(sampler, before)
    compiled = tf.function(sampler.refresh)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        compiled(*_poisoned(value, where))
    _assert_unchanged(sampler, before)


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
@pytest.mark.parametrize("eager", [True, False])
def test_keep_policy_keeps_previous_state(name, eager):
    sampler = _refreshed(name)
    before = _state(sampler)
    refresh = sampler.refresh if eager else tf.function(sampler.refresh)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        accepted = refresh(*_poisoned(np.nan), on_nonfinite="keep")
    assert not bool(accepted)
    assert any("NaN or Inf" in str(w.message) for w in caught) == eager  # graph callers warn
    _assert_unchanged(sampler, before)
    # Finite inputs are still accepted under the same policy, and change the state.
    assert bool(refresh(*_poisoned(0.5), on_nonfinite="keep"))
    assert any(not np.array_equal(np.asarray(w), old) for w, old in zip(sampler.weights, before))


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="on_nonfinite"):
        _refreshed("midx").refresh(*_poisoned(0.0), on_nonfinite="ignore")
    with pytest.raises(ValueError, match="on_nonfinite"):
        CodebookRefresh(AdaptiveSampledSoftmaxLoss(N, samplers.Uniform(N)), on_nonfinite="skip")


def _diverging_fit(on_nonfinite):
    """A model whose class embeddings turn NaN after the first step (a huge learning rate)."""
    sampler = samplers.MIDX(N, num_codewords=3, seed=0)
    output = AdaptiveSampledSoftmaxLoss(N, sampler, num_samples=4, name="output")
    features = K.Input((D,))
    model = K.Model(features, K.layers.Dense(D)(features))
    model.compile(optimizer=K.optimizers.SGD(1e30), loss=SampledSoftmaxLoss(output, model=model))
    refresh = CodebookRefresh(output, every_n_steps=1, on_nonfinite=on_nonfinite)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, D)).astype(np.float32) * 1e3
    y = rng.integers(0, N, 64).astype(np.int32)
    return model, output, refresh, (x, y)


def test_callback_raises_by_default_when_training_diverges():
    model, _, refresh, (x, y) = _diverging_fit("raise")
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[refresh])


def test_callback_keep_policy_counts_rejections_and_warns():
    model, output, refresh, (x, y) = _diverging_fit("keep")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[refresh])
    assert not np.all(np.isfinite(output.class_embeddings.numpy()))
    assert refresh.rejected_refreshes >= 1
    assert any("previous state" in str(w.message) for w in caught)
    for variable in output.sampler.weights:
        if np.issubdtype(np.asarray(variable).dtype, np.floating):
            assert not np.any(np.isnan(np.asarray(variable))), variable.name  # -inf: empty buckets

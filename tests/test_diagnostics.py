import numpy as np
import pytest

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, SampledSoftmaxLoss, diagnostics, samplers
from tf_adaptive_softmax._keras import K

N, D = 60, 6


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, D)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    h = rng.standard_normal((16, D)).astype(np.float32)
    return h, rng.integers(0, N, 16), w, b


def test_uniform_kl_matches_closed_form():
    h, y, w, b = _problem()
    stats = diagnostics.proposal_diagnostics(h, y, w, b, samplers.Uniform(N), num_samples=8, repeats=4)
    logits = h @ w.T + b
    log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    p = np.exp(log_p)
    assert stats["kl_p_q"] == pytest.approx(np.mean(np.sum(p * log_p, 1) + np.log(N)), rel=1e-4)
    assert stats["kl_q_p"] == pytest.approx(np.mean(np.sum(-(1 / N) * (np.log(N) + log_p), 1)), rel=1e-4)


def test_exact_softmax_beats_uniform_on_every_measure():
    h, y, w, b = _problem()
    oracle = samplers.Softmax(N, live=False)
    oracle.refresh(w, b)
    exact = diagnostics.proposal_diagnostics(h, y, w, b, oracle, num_samples=16, repeats=64)
    uniform = diagnostics.proposal_diagnostics(h, y, w, b, samplers.Uniform(N), num_samples=16, repeats=64)
    assert exact["kl_p_q"] < 1e-5 and exact["kl_q_p"] < 1e-5
    assert exact["ess_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert uniform["ess_ratio"] < 0.9 * exact["ess_ratio"]
    assert exact["gradient_bias_l1"] < 0.5 * uniform["gradient_bias_l1"]
    assert exact["gradient_cosine"] > uniform["gradient_cosine"]


def test_midx_reports_bucket_statistics():
    h, y, w, b = _problem()
    sampler = samplers.MIDX(N, num_codewords=4, seed=0)
    sampler.refresh(w)
    stats = diagnostics.proposal_diagnostics(h, y, w, None, sampler, num_samples=8, repeats=4)
    assert 0 < stats["nonempty_bucket_share"] <= 1 and stats["largest_bucket"] >= N / 16


def test_callback_adds_diagnostics_to_history():
    layer = AdaptiveSampledSoftmaxLoss(N, samplers.MIDX(N, num_codewords=4, seed=0), num_samples=8)
    features = K.Input((D,))
    model = K.Model(features, K.layers.Dense(D)(features))
    model.compile(optimizer="adam", loss=SampledSoftmaxLoss(layer, model=model))
    h, y, _, _ = _problem()
    callback = diagnostics.ProposalDiagnostics(layer, model, h[:8], y[:8], repeats=4)
    history = model.fit(h, y.astype(np.int32), epochs=2, verbose=0, callbacks=[callback])
    assert len(history.history["diagnostics/kl_p_q"]) == 2
    assert all(np.isfinite(history.history["diagnostics/gradient_bias_l1"]))
    with pytest.raises(ValueError, match="sampler"):
        diagnostics.ProposalDiagnostics(AdaptiveSampledSoftmaxLoss(N, None), model, h, y)

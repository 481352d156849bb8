"""tf_adaptive_softmax: adaptive sampled softmax for Keras and TensorFlow.

Public API:
  AdaptiveSampledSoftmaxLoss   the output/loss layer (layers.py)
  SampledSoftmaxLoss           adapter for model.compile(loss=...) (losses.py)
  CodebookRefresh              refreshes adaptive samplers during fit (callbacks.py)
  refresh                      the one refresh path: the SamplerOwner protocol, CompiledRefresh
  samplers                     Uniform, LogUniform, Unigram, MIDX, QuadraticKernel, Softmax
  estimator                    the pure-TF sampled-softmax math
  quantization                 k-means, product and residual quantization (MIDX's codebooks)
  retrieval                    mixed-negatives retrieval loss (any Keras flavour)
  tfrs.AdaptiveRetrieval       the TFRS task (import tf_adaptive_softmax.tfrs; tf_keras only)
  datasets                     synthetic teacher data
  diagnostics                  KL(p||q), ESS, gradient bias on a probe batch; a logging callback
  experiments                  the harness the demo, examples and benchmarks share

Submodules load on first use, so `python -m tf_adaptive_softmax.demo` can quiet TensorFlow's
start-up log before TensorFlow is imported.
"""

from __future__ import annotations

import importlib
from typing import Any, List

__version__ = "0.1.0"

_SUBMODULES = (
    "callbacks",
    "datasets",
    "diagnostics",
    "estimator",
    "experiments",
    "layers",
    "losses",
    "quantization",
    "refresh",
    "retrieval",
    "samplers",
)
_ATTRIBUTES = {
    "AdaptiveSampledSoftmaxLoss": "layers",
    "CodebookRefresh": "callbacks",
    "SampledSoftmaxLoss": "losses",
    "IS_KERAS_3": "_keras",
}

__all__ = ["AdaptiveSampledSoftmaxLoss", "CodebookRefresh", "SampledSoftmaxLoss", "IS_KERAS_3", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(f"{__name__}.{_ATTRIBUTES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))

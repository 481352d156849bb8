"""tf_adaptive_softmax: adaptive sampled softmax for Keras and TensorFlow.

Public API (every name, with its module, in docs/api.md):
  AdaptiveSampledSoftmaxLoss   the output/loss layer (layers.py)
  SampledSoftmaxLoss           adapter for model.compile(loss=...) (losses.py)
  CodebookRefresh              refreshes adaptive samplers during fit (callbacks.py)
  samplers                     Uniform, LogUniform, Unigram, MIDX, QuadraticKernel, Softmax
  estimator                    the pure-TF sampled-softmax math
  retrieval                    mixed-negatives retrieval loss (any Keras flavour)
  tfrs.AdaptiveRetrieval       the TFRS task (import tf_adaptive_softmax.tfrs; tf_keras only)
  keras_rs.CatalogueNegatives  catalogue negatives for keras-rs models (Keras 3; extra keras-rs)
  datasets                     synthetic teacher data
  diagnostics                  KL(p||q), ESS, gradient bias on a probe batch; a logging callback

Submodules load on first use, so `python -m tf_adaptive_softmax.demo` can quiet TensorFlow's
start-up log before TensorFlow is imported.
"""

from __future__ import annotations

import importlib
from typing import Any, List

__version__ = "0.2.0"

_SUBMODULES = (
    "callbacks",
    "datasets",
    "diagnostics",
    "estimator",
    "layers",
    "losses",
    "retrieval",
    "samplers",
)
_ATTRIBUTES = {
    "AdaptiveSampledSoftmaxLoss": "layers",
    "CodebookRefresh": "callbacks",
    "SampledSoftmaxLoss": "losses",
}

__all__ = ["AdaptiveSampledSoftmaxLoss", "CodebookRefresh", "SampledSoftmaxLoss"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES or name in ("tfrs", "_experiments"):
        return importlib.import_module(f"{__name__}.{name}")
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(f"{__name__}.{_ATTRIBUTES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))

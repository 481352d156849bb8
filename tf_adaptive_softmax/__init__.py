"""tf_adaptive_softmax: adaptive sampled softmax for Keras and TensorFlow.

Public API:
  AdaptiveSampledSoftmaxLoss   the output/loss layer (layers.py)
  samplers                     Uniform, LogUniform, Unigram, MIDX, QuadraticKernel, Softmax
  retrieval                    mixed-negatives retrieval loss (any Keras flavour)
  tfrs.AdaptiveRetrieval       the TFRS task (import tf_adaptive_softmax.tfrs; tf_keras only)
  estimator                    the pure-TF sampled-softmax math
  losses.SampledSoftmaxLoss    adapter for model.compile(loss=...)
  callbacks.CodebookRefresh    refreshes adaptive samplers during fit
  datasets                     synthetic teacher data
  diagnostics                  KL(p||q), ESS, gradient bias on a probe batch; a logging callback
"""

from tf_adaptive_softmax import (
    callbacks,
    datasets,
    diagnostics,
    estimator,
    losses,
    quantization,
    retrieval,
    samplers,
)
from tf_adaptive_softmax._keras import IS_KERAS_3
from tf_adaptive_softmax.callbacks import CodebookRefresh
from tf_adaptive_softmax.layers import AdaptiveSampledSoftmaxLoss
from tf_adaptive_softmax.losses import SampledSoftmaxLoss

__version__ = "0.1.0"

__all__ = [
    "AdaptiveSampledSoftmaxLoss",
    "CodebookRefresh",
    "SampledSoftmaxLoss",
    "IS_KERAS_3",
    "callbacks",
    "datasets",
    "diagnostics",
    "estimator",
    "losses",
    "quantization",
    "retrieval",
    "samplers",
]

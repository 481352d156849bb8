"""Proposal distributions, one per module, all keeping the contract of `samplers.base.Sampler`."""

from tf_adaptive_softmax.samplers.base import Sampler
from tf_adaptive_softmax.samplers.log_uniform import LogUniform
from tf_adaptive_softmax.samplers.midx import MIDX, KMeansOptions, LearnedCodebooks
from tf_adaptive_softmax.samplers.quadratic_kernel import QuadraticKernel
from tf_adaptive_softmax.samplers.softmax import Softmax
from tf_adaptive_softmax.samplers.uniform import Uniform
from tf_adaptive_softmax.samplers.unigram import Unigram

__all__ = [
    "MIDX",
    "KMeansOptions",
    "LearnedCodebooks",
    "LogUniform",
    "QuadraticKernel",
    "Sampler",
    "Softmax",
    "Uniform",
    "Unigram",
]

"""One XLA computation for a kernel of many small ops, whatever compiles (or not) its caller.

TensorFlow's graph executor runs every op of a kernel on its own, each a pass over its [B·m]
tensor, so a draw made of a few dozen elementwise ops, gathers and short searches costs about
twice as much in graph mode as compiled (benchmarks/README.md, "Step cost"). Under XLA (a
`tf.function(jit_compile=True)`, Keras `jit_compile=True`, TPUs) the caller is compiled anyway and
the kernel is simply part of it.

XLA ships with every TensorFlow build this package supports (QuadraticKernel's refresh relies on
it too). Kernels given to `Compiled` take tensors, not variables: a variable that lives on a
parameter server must be read by TensorFlow (which moves only what is read), not inside an XLA
computation on a worker.
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

# TensorFlow's own test of "this graph is being built for XLA" (used by its control-flow ops);
# there is no public equivalent.
from tensorflow.python.ops import control_flow_util

__all__ = ["Compiled", "in_xla_context"]


def in_xla_context() -> bool:
    """True while tracing code that XLA will compile: a `tf.function(jit_compile=True)`, a Keras
    step with `jit_compile=True`, a TPU computation."""
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


class Compiled:
    """`function` run as one XLA computation in every mode.

    Inside code that XLA compiles, the call goes straight to `function` (it becomes part of the
    caller's computation); in graph mode or eagerly, through an XLA-compiled `tf.function` built
    on first use (it retraces per input shape and Python argument, as any `tf.function`).
    """

    def __init__(self, function: Callable):
        self._function = function
        self._compiled: Optional[Callable] = None

    # Kernels are plain TensorFlow (no Python control flow on tensors). Called inside an XLA
    # context whose caller runs AutoGraph, they and all they call were converted at the first
    # such trace in a process: seconds spent for nothing.
    @tf.autograph.experimental.do_not_convert
    def __call__(self, *args, **kwargs):
        if in_xla_context():
            return self._function(*args, **kwargs)
        if self._compiled is None:
            self._compiled = tf.function(self._function, jit_compile=True, autograph=False)
        return self._compiled(*args, **kwargs)

"""`CodebookRefresh`: keeps an adaptive sampler in step with the model during `fit`."""

from __future__ import annotations

import time
from typing import Optional

import tensorflow as tf

from tf_adaptive_softmax import _validation
from tf_adaptive_softmax._keras import K
from tf_adaptive_softmax.samplers.base import Sampler


class _SamplerTarget:
    """Refreshes a bare sampler from a table (variable or callable) in a compiled graph function."""

    def __init__(self, sampler: Sampler, class_embeddings):
        if class_embeddings is None:
            raise ValueError("A bare Sampler target needs `class_embeddings` (a [N, d] variable or a callable).")
        self.sampler = sampler
        self._read = class_embeddings if callable(class_embeddings) else (lambda: class_embeddings)
        self._refresh = sampler.compiled_refresh(lambda: (tf.convert_to_tensor(self._read()), None))

    def refresh_sampler(self) -> None:
        if not self.sampler.adaptive:
            return
        if self.sampler.embedding_dim is None:  # state variables are created eagerly, once
            self.sampler.build_state(int(self._read().shape[-1]))
        self._refresh()


class CodebookRefresh(K.callbacks.Callback):
    """Calls `target.refresh_sampler()` at the start of each epoch and/or every N train steps.

    The sampler's state lives in fixed-shape variables, so the refresh (a graph function that only
    assigns) is seen by the already compiled train step, `jit_compile=True` included, without
    retracing. Static samplers (Uniform, LogUniform, Unigram) make it a no-op.

    The class is built against the active Keras flavour (`tf.keras`), so it works in Keras 3 `fit`
    and in tf_keras `fit` alike. With `steps_per_execution > 1` Keras calls batch hooks once per
    execution, so `every_n_steps` counts executions.

    Args:
      target: an `AdaptiveSampledSoftmaxLoss`, a `tfrs.AdaptiveRetrieval` (anything with
        `refresh_sampler()`), or a bare `Sampler` together with `class_embeddings`.
      every_n_steps: refresh after every n-th train batch; None disables step refreshes.
      on_epoch_begin: refresh at the start of every epoch (the first one included).
      class_embeddings: with a bare sampler: the [N, d] table (a variable) or a callable returning
        it, e.g. `lambda: model.item_embedding.embeddings` (custom `compute_loss` models).

    Example:
        >>> import tf_adaptive_softmax as tfas
        >>> output = tfas.AdaptiveSampledSoftmaxLoss(100, tfas.samplers.Uniform(100), num_samples=8)
        >>> refresh = tfas.callbacks.CodebookRefresh(output, every_n_steps=100)
    """

    def __init__(
        self, target, every_n_steps: Optional[int] = None, on_epoch_begin: bool = True, class_embeddings=None
    ):
        super().__init__()
        if isinstance(target, Sampler):
            target = _SamplerTarget(target, class_embeddings)
        elif class_embeddings is not None:
            raise ValueError("`class_embeddings` is only for a bare Sampler target.")
        if not hasattr(target, "refresh_sampler"):
            raise TypeError(
                "`target` must be an AdaptiveSampledSoftmaxLoss (or expose `refresh_sampler()`); "
                f"got {target!r}."
            )
        if every_n_steps is not None:
            every_n_steps = _validation.check_positive_int(every_n_steps, "every_n_steps")
        self.target = target
        self.every_n_steps = every_n_steps
        self.refresh_on_epoch_begin = bool(on_epoch_begin)
        self.refresh_count = 0
        #: Wall seconds spent refreshing, to weigh the refresh against the epoch.
        self.refresh_seconds = 0.0
        self._steps = 0

    def refresh(self) -> None:
        start = time.perf_counter()
        self.target.refresh_sampler()
        self.refresh_seconds += time.perf_counter() - start
        self.refresh_count += 1

    def on_epoch_begin(self, epoch, logs=None):
        if self.refresh_on_epoch_begin:
            self.refresh()

    def on_train_batch_end(self, batch, logs=None):
        if self.every_n_steps is None:
            return
        self._steps += 1
        if self._steps % self.every_n_steps == 0:
            self.refresh()

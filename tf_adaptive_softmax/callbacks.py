"""`CodebookRefresh`: keeps an adaptive sampler in step with the model during `fit`."""

from __future__ import annotations

from typing import Optional

from tf_adaptive_softmax import _validation
from tf_adaptive_softmax._keras import K


class CodebookRefresh(K.callbacks.Callback):
    """Calls `target.refresh_sampler()` at the start of each epoch and/or every N train steps.

    The sampler's state lives in fixed-shape variables, so the refresh (a graph function that only
    assigns) is seen by the already compiled train step, `jit_compile=True` included, without
    retracing. Static samplers (Uniform, LogUniform, Unigram) make it a no-op.

    The class is built against the active Keras flavour (`tf.keras`), so it works in Keras 3 `fit`
    and in tf_keras `fit` alike. With `steps_per_execution > 1` Keras calls batch hooks once per
    execution, so `every_n_steps` counts executions.

    Args:
      target: an `AdaptiveSampledSoftmaxLoss` (anything with `refresh_sampler()`).
      every_n_steps: refresh after every n-th train batch; None disables step refreshes.
      on_epoch_begin: refresh at the start of every epoch (the first one included).

    Example:
        >>> import tf_adaptive_softmax as tfas
        >>> output = tfas.AdaptiveSampledSoftmaxLoss(100, tfas.samplers.Uniform(100), num_samples=8)
        >>> refresh = tfas.callbacks.CodebookRefresh(output, every_n_steps=100)
    """

    def __init__(self, target, every_n_steps: Optional[int] = None, on_epoch_begin: bool = True):
        super().__init__()
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
        self._steps = 0

    def refresh(self) -> None:
        self.target.refresh_sampler()
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

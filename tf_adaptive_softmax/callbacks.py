"""`CodebookRefresh` keeps an adaptive sampler in step with the model during `fit`;
`ProposalDiagnostics` (defined in `diagnostics.py`) logs how far the proposal is from the model."""

from __future__ import annotations

import time
import warnings
from typing import Any, Optional

import tensorflow as tf

from tf_adaptive_softmax import _validation
from tf_adaptive_softmax._keras import K
from tf_adaptive_softmax._refresh import SamplerOwner, SamplerTarget
from tf_adaptive_softmax._validation import check_nonfinite_policy
from tf_adaptive_softmax.samplers.base import Sampler

__all__ = ["CodebookRefresh"]


class CodebookRefresh(K.callbacks.Callback):
    """Calls `target.refresh_sampler()` at the start of each epoch and/or every N train steps.

    The sampler's state lives in fixed-shape variables, so the refresh (a graph function that only
    assigns) is seen by the already compiled train step, `jit_compile=True` included, without
    retracing. Static samplers (Uniform, LogUniform, Unigram) make it a no-op.

    The class is built against the active Keras flavour (`tf.keras`), so it works in Keras 3 `fit`
    and in tf_keras `fit` alike.

    Step refreshes follow the optimizer's iteration counter (the global step, which checkpoints
    save): the sampler is refreshed before the train step whose global step is a multiple of
    `every_n_steps` (step 0 included), so a run restored from a checkpoint or `BackupAndRestore`
    refreshes at the same steps as an uninterrupted one. With `steps_per_execution > 1` Keras
    calls batch hooks only between executions: the refresh happens at the first execution
    boundary at or after each multiple (a multiple of `steps_per_execution` refreshes exactly on
    schedule); with `every_n_steps` below `steps_per_execution` it refreshes once per execution,
    less often than asked, and the callback warns at the start of training; the loss layer's
    `refresh_every_n_steps` keeps an exact step schedule inside the train function instead. A
    step refresh and an epoch refresh due at the same global step run once.

    Batch hooks are registered only when `every_n_steps` is set. Under
    `ParameterServerStrategy` (tf_keras), which runs no batch-level callbacks, use the epoch
    schedule (`every_n_steps=None`, the default): the refresh then runs on the coordinator
    between epochs, reading the sharded class table shard by shard; for a step schedule there,
    use the layer's `refresh_every_n_steps`.

    Args:
      target: an `AdaptiveSampledSoftmaxLoss`, a `tfrs.AdaptiveRetrieval` (anything with
        `refresh_sampler(on_nonfinite)` returning False when it kept the previous state), or a
        bare `Sampler` together with `class_embeddings`.
      every_n_steps: refresh every n global steps; None disables step refreshes.
      on_epoch_begin: refresh at the start of every epoch (the first one included). tf_keras'
        `BackupAndRestore(save_freq=<int>)` resumes mid-epoch and calls `on_epoch_begin` for the
        partial epoch: for a trajectory identical to an uninterrupted run, use a step schedule
        (`on_epoch_begin=False`) there.
      class_embeddings: with a bare sampler: the [N, d] table (a variable) or a callable returning
        it, e.g. `lambda: model.item_embedding.embeddings` (custom `compute_loss` models).
      on_nonfinite: "raise" (default) stops training with an error when the class embeddings hold
        NaN or Inf at a refresh; "keep" keeps the sampler's previous state, warns and counts the
        event in `rejected_refreshes`. Either way the sampler is never half-updated.

    Raises:
      TypeError: a `target` with no `refresh_sampler`.
      ValueError: `class_embeddings` with a target that is not a bare sampler, every_n_steps
        below 1, or an unknown `on_nonfinite`.

    Example:
        >>> import tf_adaptive_softmax as tfas
        >>> output = tfas.AdaptiveSampledSoftmaxLoss(100, tfas.samplers.Uniform(100), num_samples=8)
        >>> refresh = tfas.callbacks.CodebookRefresh(output, every_n_steps=100)
    """

    def __init__(
        self,
        target: Any,
        every_n_steps: Optional[int] = None,
        on_epoch_begin: bool = True,
        class_embeddings: Any = None,
        on_nonfinite: str = "raise",
    ):
        super().__init__()
        if isinstance(target, Sampler):
            target = SamplerTarget(target, class_embeddings)
        elif class_embeddings is not None:
            raise ValueError("`class_embeddings` is only for a bare Sampler target.")
        if not isinstance(target, SamplerOwner):
            raise TypeError(
                "`target` must be an AdaptiveSampledSoftmaxLoss (or expose `refresh_sampler(on_nonfinite)`); "
                f"got {target!r}."
            )
        if every_n_steps is not None:
            every_n_steps = _validation.check_positive_int(every_n_steps, "every_n_steps")
        self.target = target
        self.every_n_steps = every_n_steps
        self.refresh_on_epoch_begin = bool(on_epoch_begin)
        self.on_nonfinite = check_nonfinite_policy(on_nonfinite)
        self.refresh_count = 0
        #: Refreshes whose inputs held NaN/Inf and were skipped (`on_nonfinite="keep"`).
        self.rejected_refreshes = 0
        #: Wall seconds spent refreshing, to weigh the refresh against the epoch.
        self.refresh_seconds = 0.0
        self._steps_seen = 0  # used when the model has no optimizer counter
        self._slot: Optional[int] = None
        self._refreshed_at: Optional[int] = None

    def _global_step(self) -> int:
        iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)
        if iterations is None:
            return self._steps_seen
        return int(tf.convert_to_tensor(iterations).numpy())

    def refresh(self) -> None:
        """Refreshes now (also called by the schedule)."""
        start = time.perf_counter()
        if not self.target.refresh_sampler(on_nonfinite=self.on_nonfinite):
            self.rejected_refreshes += 1
        self.refresh_seconds += time.perf_counter() - start
        self.refresh_count += 1

    def _refresh_once_at(self, step: int) -> None:
        if self._refreshed_at != step:
            self.refresh()
            self._refreshed_at = step

    # tf_keras asks these before a ParameterServerStrategy `fit` (which rejects batch hooks).
    def _implements_train_batch_hooks(self) -> bool:
        return self.every_n_steps is not None

    def _implements_test_batch_hooks(self) -> bool:
        return False

    def _implements_predict_batch_hooks(self) -> bool:
        return False

    def on_train_begin(self, logs=None):
        self._slot = None
        self._refreshed_at = None
        self._warn_if_executions_skip_refreshes()

    def _warn_if_executions_skip_refreshes(self) -> None:
        # Keras 3 keeps an int, tf_keras a variable under a private name.
        steps_per_execution = getattr(self.model, "steps_per_execution", None)
        if steps_per_execution is None:
            steps_per_execution = getattr(self.model, "_steps_per_execution", None)
        if steps_per_execution is None or self.every_n_steps is None:
            return
        executed = int(tf.convert_to_tensor(steps_per_execution).numpy())
        if executed > self.every_n_steps:
            warnings.warn(
                f"CodebookRefresh(every_n_steps={self.every_n_steps}) with steps_per_execution={executed}: "
                "Keras calls batch hooks only between executions, so the sampler is refreshed at most once "
                f"every {executed} steps. Use every_n_steps >= steps_per_execution (a multiple of it refreshes "
                "exactly on schedule), or AdaptiveSampledSoftmaxLoss(refresh_every_n_steps=...), which refreshes "
                "inside the train function.",
                stacklevel=2,
            )

    def on_epoch_begin(self, epoch, logs=None):
        if self.refresh_on_epoch_begin:
            self._refresh_once_at(self._global_step())

    def on_train_batch_begin(self, batch, logs=None):
        if self.every_n_steps is None:
            return
        step = self._global_step()
        slot = step // self.every_n_steps
        due = step % self.every_n_steps == 0 if self._slot is None else slot > self._slot
        self._slot = slot
        if due:
            self._refresh_once_at(step)

    def on_train_batch_end(self, batch, logs=None):
        self._steps_seen += 1

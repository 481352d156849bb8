"""One refresh path for every owner of a sampler.

An owner (the loss layer, `tfrs.AdaptiveRetrieval`, or a bare sampler with its class table) keeps
its sampler in step with the model through `refresh_sampler(on_nonfinite) -> bool`: the
`SamplerOwner` protocol that `CodebookRefresh` calls. Every owner implements it with a
`CompiledRefresh`: one graph function per owner, traced at the first refresh and reused, that
reads the current class embeddings (and bias) and calls `sampler.refresh`, which only assigns to
fixed-shape variables, so an already compiled train step sees the new state without retracing.

Example:
    >>> import numpy as np, tensorflow as tf
    >>> from tf_adaptive_softmax import _refresh as refresh, samplers
    >>> table = tf.Variable(np.random.default_rng(0).normal(size=(300, 8)).astype("float32"))
    >>> owner = refresh.SamplerTarget(samplers.MIDX(300, num_codewords=8, seed=0), table)
    >>> isinstance(owner, refresh.SamplerOwner), owner.refresh_sampler()
    (True, True)
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Tuple, runtime_checkable

import tensorflow as tf

from tf_adaptive_softmax._validation import check_nonfinite_policy, warn_if_kept
from tf_adaptive_softmax.samplers.base import Sampler

__all__ = ["CompiledRefresh", "SamplerOwner", "SamplerTarget", "refresh_on_schedule"]

_ReadWeights = Callable[[], Tuple[tf.Tensor, Optional[tf.Tensor]]]


@runtime_checkable
class SamplerOwner(Protocol):
    """Anything `CodebookRefresh` can keep in step: it refreshes its sampler from the model."""

    def refresh_sampler(self, on_nonfinite: str = "raise") -> bool:
        """Rebuilds the sampler's state; False when NaN/Inf inputs were rejected ("keep")."""


class CompiledRefresh:
    """Refreshes `sampler` from `read_weights() -> (class_embeddings, class_bias or None)` through
    one compiled graph function (`Sampler.compiled_refresh`), built at the first call.

    Args:
      sampler: the sampler to refresh (static samplers make every call a no-op returning True).
      read_weights: reads the current class table and bias; called inside the graph function, so
        a candidate tower run over the catalogue becomes part of it.
      owner: named in the warning when non-finite inputs are rejected (default: the sampler).
    """

    def __init__(self, sampler: Sampler, read_weights: _ReadWeights, owner=None):
        self.sampler = sampler
        self.read_weights = read_weights
        self.owner = sampler if owner is None else owner
        self._function: Optional[Callable] = None
        self._from_embeddings: Optional[Callable] = None

    def __call__(self, on_nonfinite: str = "raise", class_embeddings: Optional[tf.Tensor] = None) -> bool:
        """Refreshes now. NaN/Inf in the inputs raise ("raise", default) or keep the previous
        state with a warning ("keep"); returns whether the inputs were accepted.

        `class_embeddings`, when given, replaces `read_weights` (no bias): for an owner that has
        already computed them for another use (a retrieval index), so they are computed once.
        """
        check_nonfinite_policy(on_nonfinite)
        if not self.sampler.adaptive:
            return True
        if class_embeddings is not None:
            if self._from_embeddings is None:
                self._from_embeddings = tf.function(
                    lambda embeddings, policy: self.sampler.refresh(embeddings, None, on_nonfinite=policy),
                    autograph=False,
                )
            return warn_if_kept(self._from_embeddings(class_embeddings, on_nonfinite), self.owner)
        if self._function is None:
            self._function = self.sampler.compiled_refresh(self.read_weights)
        return warn_if_kept(self._function(on_nonfinite), self.owner)


class SamplerTarget:
    """A bare sampler and its class table as a `SamplerOwner` (for custom `compute_loss` models).

    Args:
      sampler: the sampler.
      class_embeddings: the [N, d] table (a variable) or a callable returning it.
    """

    def __init__(self, sampler: Sampler, class_embeddings):
        if class_embeddings is None:
            raise ValueError("A bare Sampler target needs `class_embeddings` (a [N, d] variable or a callable).")
        self.sampler = sampler
        self._read = class_embeddings if callable(class_embeddings) else (lambda: class_embeddings)
        self._refresh = CompiledRefresh(sampler, lambda: (tf.convert_to_tensor(self._read()), None))

    def refresh_sampler(self, on_nonfinite: str = "raise") -> bool:
        """Refreshes the sampler from the table (see `CompiledRefresh`)."""
        if self.sampler.adaptive and self.sampler.embedding_dim is None:  # state is created eagerly, once
            self.sampler.build_state(int(self._read().shape[-1]))
        return self._refresh(on_nonfinite)


def refresh_on_schedule(sampler: Sampler, read_weights: _ReadWeights, counter: tf.Variable, every_n: int) -> list:
    """Inside a training step: refreshes `sampler` when the step counter is a multiple of
    `every_n` (keeping the previous state on NaN/Inf, since a compiled step cannot raise), then
    counts the step. Returns the ops the step's draws must follow.

    Raises:
      ValueError: under a multi-replica strategy, whose mirrored variables TensorFlow cannot
        update inside a conditional.
    """
    strategy = tf.distribute.get_strategy()
    parameter_servers = isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)
    if strategy.num_replicas_in_sync > 1 and not parameter_servers:
        raise ValueError(
            f"`refresh_every_n_steps` cannot run under {type(strategy).__name__} with "
            f"{strategy.num_replicas_in_sync} replicas: TensorFlow does not update mirrored variables "
            "inside a conditional. Use `CodebookRefresh(every_n_steps=...)` instead."
        )
    due = tf.equal(tf.math.floormod(counter.read_value(), every_n), 0)
    accepted = tf.cond(
        due,
        lambda: tf.convert_to_tensor(sampler.refresh(*read_weights(), on_nonfinite="keep")),
        lambda: tf.constant(True),
    )
    with tf.control_dependencies([accepted]):
        counted = counter.assign_add(1, read_value=False)
    return [accepted] if counted is None else [accepted, counted]

"""Type aliases for the public signatures (floor 0)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

#: What public functions accept where a tensor goes: tensors, variables, arrays, nested lists, numbers.
TensorLike = tf.Tensor | tf.Variable | np.ndarray | Sequence[Any] | float | int

#: ids -> embeddings: an Embedding layer or a candidate tower.
Embed = Callable[[tf.Tensor], tf.Tensor]

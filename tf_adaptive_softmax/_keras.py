"""The one place that resolves which Keras the user's TensorFlow exposes.

`K` is `tf.keras`: Keras 3 by default, tf_keras when `TF_USE_LEGACY_KERAS=1` was set before
TensorFlow first touched `tf.keras`. Never `import keras` anywhere else: in legacy mode it still
returns Keras 3, whose layers a tf_keras (and so TFRS) model rejects.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

K = tf.keras

_version = getattr(K, "version", None)
IS_KERAS_3: bool = _version is not None and _version().startswith("3.")

SERIALIZATION_PACKAGE = "tf_adaptive_softmax"


def register_serializable(cls):
    """Registers `cls` with the active flavour's serialization registry."""
    return K.utils.register_keras_serializable(package=SERIALIZATION_PACKAGE)(cls)


# Aggregation for non-trainable state updated inside a train step (the seed stream): under a
# multi-replica strategy the first replica's update is kept, as for metrics' counters.
ONLY_FIRST_REPLICA = "only_first_replica" if IS_KERAS_3 else tf.VariableAggregation.ONLY_FIRST_REPLICA


def serialize(obj) -> dict:
    """Serializes a registered object (a sampler) into a config dict."""
    return K.utils.serialize_keras_object(obj)


def deserialize(config):
    """Rebuilds an object serialized by `serialize`; passes live objects through."""
    if config is None or not isinstance(config, dict):
        return config
    return K.utils.deserialize_keras_object(config)


def raw_variable(variable):
    """The underlying tf.Variable of a Keras 3 Variable (tf_keras weights already are one).

    TF ops on a resource variable read only what they need (`tf.gather` becomes ResourceGather),
    where converting a Keras 3 Variable to a tensor first would copy the whole [N, d] table.
    """
    if isinstance(variable, tf.Variable):
        return variable
    return getattr(variable, "value", variable)


class Untracked:
    """Holds references (a tied layer, another layer's variables) that Keras must not track as
    this layer's own, which would list the same variable twice in the model's weights."""

    def __init__(self, **values: Any):
        self.__dict__.update(values)

    # The attributes are whatever __init__ was given: say so to type checkers.
    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

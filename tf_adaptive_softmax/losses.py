"""Keras `Loss` adapter: `model.compile(loss=SampledSoftmaxLoss(output_layer))`.

The model's output (y_pred) is the query embedding [B, d]; y_true holds the class ids [B] or
[B, num_true]. The adapter delegates to an `AdaptiveSampledSoftmaxLoss` layer, which owns W, b and
the sampler: sampled loss while gradients are being recorded (the train step), exact full-softmax
loss otherwise (`evaluate`), so validation numbers are honest.

The layer's weights must train with the model, so the model must track the layer: pass
`model=` (a functional or subclassed model) and the adapter builds the layer for the model's
output width and attaches it (`Sequential` models cannot track an extra layer: a clear error says
so). A compiled model saves and loads, but the restored loss has no link to the layer (a live
object, not config): compile again with a new `SampledSoftmaxLoss` after loading.
"""

from __future__ import annotations

from typing import Any, Optional

from tf_adaptive_softmax import _reduction, _validation
from tf_adaptive_softmax._keras import K, register_serializable

__all__ = ["SampledSoftmaxLoss"]


def _recording_gradients() -> bool:
    """True inside a GradientTape (Keras train steps): the only reliable train/eval signal a loss
    object sees, since Keras passes it no `training` flag. It reads a private TensorFlow function;
    if that ever moves, this fails loudly rather than guessing (a wrong guess would make
    `evaluate` report the sampled loss)."""
    try:
        from tensorflow.python.eager import record  # pylint: disable=import-outside-toplevel

        could_record = record.could_possibly_record
    except (ImportError, AttributeError) as error:  # pragma: no cover - private API moved
        raise RuntimeError(
            "SampledSoftmaxLoss(mode='auto') cannot tell training from evaluation with this TensorFlow "
            "version. Pass mode='sampled' to the loss used for training and evaluate with mode='full' "
            "(or call the AdaptiveSampledSoftmaxLoss layer with training=...)."
        ) from error
    return bool(could_record())


def _attach(output_layer, model) -> None:
    """Builds `output_layer` for `model`'s output width and makes `model` track its weights."""
    width = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if width is None:
        raise ValueError("`model` must be built (its output width known) before attaching the output layer.")
    output_layer.build_for_dim(int(width))
    setattr(model, f"sampled_softmax_{output_layer.name}", output_layer)
    tracked = {id(v) for v in model.trainable_weights}
    if any(id(v) not in tracked for v in output_layer.trainable_weights):
        raise ValueError(
            f"{type(model).__name__} does not track extra layers, so the class embeddings would never "
            "train. Use a functional model (keras.Model(inputs, query)) or a subclassed model."
        )


@register_serializable
class SampledSoftmaxLoss(K.losses.Loss):
    """Adapts an `AdaptiveSampledSoftmaxLoss` layer to `model.compile(loss=...)`.

    Args:
      output_layer: the `AdaptiveSampledSoftmaxLoss` holding the class embeddings and sampler.
      model: the model whose output is the query; the layer is built and attached to it. Leave it
        None only when the model already tracks the layer.
      mode: "auto" (sampled inside a GradientTape, exact otherwise), "sampled" or "full".
      reduction: any reduction name of either Keras flavour: "sum_over_batch_size" (default, the
        mean over the batch), "sum", "mean", "mean_with_sample_weight", "auto", "none"/None.
      name: the loss name (default "sampled_softmax_loss").

    Raises:
      ValueError: an unknown `mode` or `reduction`, or a `model` that cannot track the layer
        (`Sequential`) or is not built.
      TypeError: an `output_layer` that is not an `AdaptiveSampledSoftmaxLoss`.

    Example:
        >>> import tensorflow as tf
        >>> import tf_adaptive_softmax as tfas
        >>> K = tf.keras
        >>> output = tfas.AdaptiveSampledSoftmaxLoss(500, tfas.samplers.LogUniform(500), num_samples=16)
        >>> features = K.Input((8,))
        >>> model = K.Model(features, K.layers.Dense(16)(features))
        >>> model.compile(optimizer="adam", loss=tfas.SampledSoftmaxLoss(output, model=model))
        >>> x = tf.random.normal([64, 8]); y = tf.random.uniform([64], 0, 500, tf.int32)
        >>> _ = model.fit(x, y, epochs=1, verbose=0)
    """

    def __init__(
        self,
        output_layer: Any,
        model: Optional[Any] = None,
        mode: str = "auto",
        reduction: Optional[str] = "sum_over_batch_size",
        name: Optional[str] = None,
    ):
        if mode not in ("auto", "sampled", "full"):
            raise ValueError(f"`mode` must be 'auto', 'sampled' or 'full'; got {mode!r}.")
        if output_layer is not None and not hasattr(output_layer, "per_example_loss"):
            raise TypeError(f"`output_layer` must be an AdaptiveSampledSoftmaxLoss layer; got {output_layer!r}.")
        _reduction.reduction_name(reduction)  # fails early on a name neither Keras flavour knows
        super().__init__(reduction=reduction, name=name or "sampled_softmax_loss")
        self.output_layer = output_layer
        self.mode = mode
        if model is not None:
            _attach(output_layer, model)

    def _layer(self):
        if self.output_layer is None:
            raise ValueError(
                "This SampledSoftmaxLoss was restored from a saved config without its output layer "
                "(a live object). Compile again with SampledSoftmaxLoss(output_layer, model=model)."
            )
        return self.output_layer

    def _training(self) -> bool:
        return self.mode == "sampled" or (self.mode == "auto" and _recording_gradients())

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Bypasses Keras' own conversion, which would cast the integer ids to float.
        return _reduction.reduce(self.call(y_true, y_pred), self.reduction, sample_weight)

    def call(self, y_true, y_pred):
        y_true = _validation.integral_float_ids(y_true)
        return self._layer().per_example_loss(y_pred, y_true, training=self._training())

    def get_config(self) -> dict:
        # The output layer is a live object with weights, not config: a restored loss has none and
        # says so when called (the model itself saves and loads; re-compile after loading).
        config = super().get_config()
        config["mode"] = self.mode
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("fn", None)
        return cls(None, **{k: v for k, v in config.items() if k in ("mode", "reduction", "name")})

"""Input checks shared by the estimator, the samplers and the Keras layers.

Static facts (dtype, rank, width) are checked in Python at trace time and raise ValueError /
TypeError. Values (label ranges, finiteness) are checked in-graph with `tf.debugging` asserts,
which raise `tf.errors.InvalidArgumentError` eagerly and in graph mode. XLA compiles asserts away,
so label checks additionally poison the affected rows' loss with NaN (see `label_validity`): a bad
label is never silently clipped, even under `jit_compile=True`.
"""

from __future__ import annotations

import functools
import numbers
import warnings

import tensorflow as tf


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}.")
    return int(value)


def check_nonnegative_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0 or value == float("inf"):
        raise ValueError(f"`{name}` must be a finite number >= 0; got {value!r}.")
    return float(value)


def check_num_samples(num_samples, num_classes: int | None = None) -> int:
    """`num_samples` is a static Python int: it fixes tensor shapes (XLA needs them static)."""
    if tf.is_tensor(num_samples):
        raise TypeError(
            "`num_samples` must be a Python int (it fixes the sampled tensor's static shape); "
            f"got a tensor {num_samples!r}."
        )
    return check_positive_int(num_samples, "num_samples")


def as_queries(queries, name: str = "queries", width: int | None = None) -> tf.Tensor:
    """Converts to a float32 [B, d] tensor, checking rank and (optionally) width."""
    queries = tf.convert_to_tensor(queries)
    if not queries.dtype.is_floating:
        raise TypeError(f"`{name}` must be a floating tensor of shape [batch, dim]; got dtype {queries.dtype.name}.")
    if queries.shape.rank != 2:
        raise ValueError(f"`{name}` must have shape [batch, dim] (rank 2); got shape {queries.shape}.")
    if width is not None and queries.shape[-1] is not None and queries.shape[-1] != width:
        raise ValueError(
            f"`{name}` must have shape [batch, {width}] to match the class embeddings; got {queries.shape}."
        )
    return tf.cast(queries, tf.float32)


def as_ids(ids, name: str = "ids", rank: int | None = None) -> tf.Tensor:
    """Converts integer class ids to int32, rejecting floats rather than truncating them."""
    ids = tf.convert_to_tensor(ids)
    if not ids.dtype.is_integer:
        raise TypeError(
            f"`{name}` must hold integer class ids; got dtype {ids.dtype.name}. "
            "Cast your labels to int32/int64 in the input pipeline."
        )
    if rank is not None and ids.shape.rank is not None and ids.shape.rank != rank:
        raise ValueError(f"`{name}` must have rank {rank}; got shape {ids.shape}.")
    return tf.cast(ids, tf.int32)


def integral_float_ids(ids, name: str = "labels") -> tf.Tensor:
    """Float ids whose values are whole numbers -> int32 (an assert rejects any fraction).

    For the compile adapter only: Keras itself hands some losses float targets (Keras 3 builds
    the compiled loss of a distributed model from float placeholders), so a float dtype there
    does not mean the user passed floats. Fractions still raise; nothing is rounded silently.
    """
    ids = tf.convert_to_tensor(ids)
    if not ids.dtype.is_floating:
        return ids
    whole = tf.debugging.Assert(
        tf.reduce_all(tf.equal(ids, tf.round(ids))),
        [f"`{name}` must hold integer class ids; got non-integer values."],
        name=f"check_{name}_integral",
    )
    with tf.control_dependencies([whole]):
        return tf.cast(ids, tf.int32)


def as_label_matrix(labels, name: str = "labels") -> tf.Tensor:
    """Labels [B] or [B, num_true] -> int32 [B, num_true]."""
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 1:
        labels = labels[:, tf.newaxis]
    if labels.shape.rank != 2:
        raise ValueError(f"`{name}` must have shape [batch] or [batch, num_true]; got shape {labels.shape}.")
    return as_ids(labels, name=name)


def checked_ids(ids: tf.Tensor, num_classes: int, name: str = "labels") -> tf.Tensor:
    """Returns `ids` behind an assert that all of them lie in [0, num_classes)."""
    in_range = tf.reduce_all((ids >= 0) & (ids < num_classes))
    assertion = tf.debugging.Assert(
        in_range,
        [
            f"`{name}` must be class ids in [0, num_classes={num_classes}); got min/max:",
            tf.reduce_min(ids),
            tf.reduce_max(ids),
        ],
        name=f"check_{name}_range",
    )
    with tf.control_dependencies([assertion]):
        return tf.identity(ids)


def label_validity(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    """bool [B]: whether every label of a row lies in [0, num_classes)."""
    return tf.reduce_all((labels >= 0) & (labels < num_classes), axis=-1)


def poison_invalid_rows(per_example: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """NaN where a row had an out-of-range label, so XLA (which drops asserts) still shows it."""
    return tf.where(valid, per_example, tf.fill(tf.shape(per_example), float("nan")))


def check_embedding_shape(class_embeddings: tf.Tensor, num_classes: int, dim: int | None, name: str) -> None:
    shape = class_embeddings.shape
    expected = f"[{num_classes}, {dim if dim is not None else 'dim'}]"
    if (
        shape.rank != 2
        or (shape[0] is not None and shape[0] != num_classes)
        or (dim is not None and shape[1] is not None and shape[1] != dim)
    ):
        raise ValueError(f"`{name}` must have shape {expected}; got {shape}.")


#: What `refresh` does with NaN/Inf class embeddings or bias: raise, or keep the previous state.
NONFINITE_POLICIES = ("raise", "keep")


def as_class_bias(class_bias, num_classes: int) -> tf.Tensor | None:
    """A float32 [N] bias, or None; raises naming `class_bias` for any other shape."""
    if class_bias is None:
        return None
    class_bias = tf.convert_to_tensor(class_bias)
    if class_bias.shape.rank != 1 or class_bias.shape[0] not in (None, num_classes):
        raise ValueError(f"`class_bias` must have shape [{num_classes}]; got {class_bias.shape}.")
    return tf.cast(class_bias, tf.float32)


def auxiliary_loss_inputs(candidate_ids, target_logits, positive_embeddings, num_classes: int, dim: int | None):
    """Checked, gradient-stopped (ids [B, S], target logits [B, S], positives [B, T, d] or None)."""
    ids = checked_ids(as_label_matrix(candidate_ids, name="candidate_ids"), num_classes, name="candidate_ids")
    target_logits = tf.cast(tf.convert_to_tensor(target_logits), tf.float32)
    if target_logits.shape.rank != 2 or (
        None not in (target_logits.shape[1], ids.shape[1]) and target_logits.shape[1] != ids.shape[1]
    ):
        raise ValueError(
            f"`target_logits` must have shape [batch, {ids.shape[1]}] like `candidate_ids`; got {target_logits.shape}."
        )
    if positive_embeddings is not None:
        positive_embeddings = tf.cast(tf.convert_to_tensor(positive_embeddings), tf.float32)
        if positive_embeddings.shape.rank == 2:
            positive_embeddings = positive_embeddings[:, tf.newaxis, :]
        if positive_embeddings.shape.rank != 3 or positive_embeddings.shape[-1] != dim:
            raise ValueError(
                f"`positive_embeddings` must have shape [batch, num_true, {dim}]; got {positive_embeddings.shape}."
            )
        positive_embeddings = tf.stop_gradient(positive_embeddings)
    return tf.stop_gradient(ids), tf.stop_gradient(target_logits), positive_embeddings


def check_nonfinite_policy(on_nonfinite: str) -> str:
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"`on_nonfinite` must be one of {NONFINITE_POLICIES}; got {on_nonfinite!r}.")
    return on_nonfinite


def warn_if_kept(accepted, owner) -> bool:
    """Turns a refresh's result into a Python bool, warning when non-finite inputs were rejected."""
    accepted = bool(accepted)
    if not accepted:
        warnings.warn(
            f"{owner!r}: the class embeddings (or bias) contain NaN or Inf; the sampler keeps its "
            "previous state. Training has probably diverged.",
            RuntimeWarning,
            stacklevel=3,
        )
    return accepted


#: The logQ choices of every entry point: "standard" (every column minus log(m·q), the positive
#: included: TF's, TFRS's and the MIDX authors' convention), "negatives_only" (the positive raw:
#: Blanc & Rendle's eq. 3), "corrected" (Khrylchenko et al., RecSys 2025).
LOGQ_CORRECTIONS = ("standard", "negatives_only", "corrected")


def resolve_logq_correction(logq_correction: str, correct_positive=None, stacklevel: int = 3) -> str:
    """The validated `logq_correction`, with the deprecated `correct_positive` mapped onto it.

    `correct_positive=False` was the uncorrected positive: "negatives_only" (under "corrected",
    which always keeps the positive raw, it changed nothing and still does). It warns once per call
    site (DeprecationWarning) and will be removed in the next minor release.

    Raises:
      ValueError: for a name outside `LOGQ_CORRECTIONS`.
    """
    if correct_positive is not None:
        warnings.warn(
            "`correct_positive` is deprecated: use `logq_correction='standard'` (correct_positive=True) or "
            "`logq_correction='negatives_only'` (correct_positive=False).",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        if not correct_positive and logq_correction == "standard":
            logq_correction = "negatives_only"
    if logq_correction not in LOGQ_CORRECTIONS:
        raise ValueError(f"`logq_correction` must be one of {LOGQ_CORRECTIONS}; got {logq_correction!r}.")
    return logq_correction


def accepts_correct_positive(function):
    """Lets a function that takes `logq_correction` still accept the deprecated `correct_positive`
    keyword (`resolve_logq_correction`); its signature stays the function's own."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if "correct_positive" in kwargs:
            kwargs["logq_correction"] = resolve_logq_correction(
                kwargs.get("logq_correction", "standard"), kwargs.pop("correct_positive"), stacklevel=3
            )
        return function(*args, **kwargs)

    return wrapper

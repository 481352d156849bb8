"""The harness the demo, the examples and the benchmarks share: a registry of samplers by name, the
teacher-task student, exact test metrics, timers, and an output layer trained with TF's own
sampled softmax (the baseline users have today).

Example:
    >>> from tf_adaptive_softmax import _experiments as experiments, datasets
    >>> teacher = datasets.make_teacher(300, 8, seed=0)
    >>> train, test = datasets.train_test_split(teacher, 2_000, 300)
    >>> sampler = experiments.make_sampler("midx_rvq", 300)
    >>> result = experiments.train_and_evaluate(train, test, 300, sampler, num_samples=5, epochs=1, verbose=0)
    >>> sorted(result)[:3]
    ['accuracy_at_1', 'compile_seconds', 'curve']
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_adaptive_softmax import samplers
from tf_adaptive_softmax._keras import K, raw_variable
from tf_adaptive_softmax._tf_sampled import TFSampledSoftmax
from tf_adaptive_softmax.callbacks import CodebookRefresh
from tf_adaptive_softmax.layers import AdaptiveSampledSoftmaxLoss
from tf_adaptive_softmax.losses import SampledSoftmaxLoss

__all__ = [
    "DATA_DIR_VARIABLE",
    "SAMPLERS",
    "EpochTimer",
    "TFSampledSoftmax",
    "TimeToQuality",
    "build_student",
    "data_dir",
    "exact_test_metrics",
    "export_serving",
    "make_sampler",
    "pyplot",
    "time_to_reach",
    "train_and_evaluate",
]

#: The environment variable naming the folder of real data sets (PTB subset, MovieLens 100K).
DATA_DIR_VARIABLE = "TFAS_DATA_DIR"


def data_dir(path: Optional[str] = None) -> Optional[pathlib.Path]:
    """The folder of real data sets: `path` if given, else `$TFAS_DATA_DIR`, else None.

    The package ships no data; examples and benchmarks fall back to synthetic data (or skip) when
    this is None or the file they want is missing in it.

    Args:
      path: an explicit folder (a command-line argument), default None.
    """
    chosen = path or os.environ.get(DATA_DIR_VARIABLE)
    return pathlib.Path(chosen).expanduser() if chosen else None


_SamplerFactory = Callable[[int, np.ndarray], samplers.Sampler]

#: name -> factory(num_classes, train_label_counts); MIDX uses its N-based default codebook size.
SAMPLERS: Dict[str, _SamplerFactory] = {
    "uniform": lambda n, counts: samplers.Uniform(n, seed=1),
    "log_uniform": lambda n, counts: samplers.LogUniform(n, seed=1),
    "unigram": lambda n, counts: samplers.Unigram(counts + 1.0, power=0.75, seed=1),
    "midx_pq": lambda n, counts: samplers.MIDX(n, quantizer="pq", include_bias=True, seed=1),
    "midx_rvq": lambda n, counts: samplers.MIDX(n, quantizer="rvq", include_bias=True, seed=1),
    "midx_pq_learned": lambda n, counts: samplers.MIDX(
        n, quantizer="pq", include_bias=True, learn_codebooks=True, seed=1
    ),
    "midx_rvq_learned": lambda n, counts: samplers.MIDX(
        n, quantizer="rvq", include_bias=True, learn_codebooks=True, seed=1
    ),
    "quadratic_kernel": lambda n, counts: samplers.QuadraticKernel(n, alpha=100.0, seed=1),
    "softmax": lambda n, counts: samplers.Softmax(n, seed=1),
}


def make_sampler(
    name: str,
    num_classes: int,
    counts: Optional[np.ndarray] = None,
    num_codewords: Optional[int] = None,
    kmeans: Optional[samplers.KMeansOptions] = None,
) -> Optional[samplers.Sampler]:
    """The sampler registered as `name` (None for "full", the full softmax).

    Args:
      name: a key of `SAMPLERS`, or "full".
      num_classes: N.
      counts: per-class training counts (used by "unigram"; default: all ones).
      num_codewords: K for the MIDX entries (default: their N-based default); ignored by others.
      kmeans: the MIDX entries' `KMeansOptions` (default: theirs); ignored by others.
    """
    if name == "full":
        return None
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; choose from {['full'] + sorted(SAMPLERS)}.")
    counts = np.ones(num_classes) if counts is None else np.asarray(counts, np.float64)
    sampler = SAMPLERS[name](num_classes, counts)
    overrides = {"num_codewords": num_codewords, "kmeans": None if kmeans is None else dataclasses.asdict(kmeans)}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if overrides and isinstance(sampler, samplers.MIDX):
        sampler = samplers.MIDX.from_config({**sampler.get_config(), **overrides})
    return sampler


class EpochTimer(K.callbacks.Callback):
    """Wall seconds of every epoch, in `durations`."""

    def __init__(self):
        super().__init__()
        self.durations: List[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.durations.append(time.perf_counter() - self._start)


def exact_test_metrics(
    query_model, output: AdaptiveSampledSoftmaxLoss, features, labels, batch_size: int = 512
) -> Dict[str, float]:
    """Exact full-softmax test cross-entropy and accuracy@1 over all N classes, in batches.

    Args:
      query_model: maps features to queries [B, d].
      output: the `AdaptiveSampledSoftmaxLoss` holding the class embeddings.
      features, labels: the test set (labels [n] int).
      batch_size: queries scored at a time (memory is batch_size x N floats). Default 512.
    """
    total_ce, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        logits = output.logits(query_model(features[start : start + batch_size], training=False))
        batch_labels = tf.constant(labels[start : start + batch_size], tf.int32)
        total_ce += float(tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(batch_labels, logits)))
        correct += int(
            tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), batch_labels), tf.int32))
        )
    return {"test_cross_entropy": total_ce / len(labels), "accuracy_at_1": correct / len(labels)}


class TimeToQuality(K.callbacks.Callback):
    """Records exact test metrics against training wall-clock seconds, evaluation time excluded.

    Args:
      evaluate: a function of no arguments returning `exact_test_metrics`' dict.
      evaluations_per_epoch: points per epoch, evenly spaced, the last at the epoch's end
        (default 1).
    """

    def __init__(self, evaluate: Callable[[], Dict[str, float]], evaluations_per_epoch: int = 1):
        super().__init__()
        self.evaluate = evaluate
        self.evaluations_per_epoch = max(1, int(evaluations_per_epoch))
        #: (training seconds, test cross-entropy, accuracy@1) after each evaluation.
        self.points: List[tuple] = []
        #: Training seconds of every epoch (evaluations excluded; refreshes included).
        self.epoch_seconds: List[float] = []
        self._training_seconds = 0.0
        self._since = 0.0
        self._epoch_start = 0.0
        self._checkpoints: set = set()

    def _elapsed(self) -> float:
        return self._training_seconds + time.perf_counter() - self._since

    def _record(self) -> None:
        self._training_seconds = self._elapsed()
        metrics = self.evaluate()
        self.points.append((self._training_seconds, metrics["test_cross_entropy"], metrics["accuracy_at_1"]))
        self._since = time.perf_counter()

    def on_train_begin(self, logs=None):
        self._training_seconds, self._since = 0.0, time.perf_counter()
        steps = (self.params or {}).get("steps") or 0
        parts = self.evaluations_per_epoch
        self._checkpoints = {round(j * steps / parts) for j in range(1, parts)} - {0, steps} if steps else set()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._elapsed()

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 in self._checkpoints:
            self._record()

    def on_epoch_end(self, epoch, logs=None):
        self._record()
        self.epoch_seconds.append(self._training_seconds - self._epoch_start)

    @property
    def training_seconds(self) -> float:
        return self.points[-1][0] if self.points else 0.0


def build_student(dim: int) -> K.Model:
    """The teacher task's query tower: features [d] -> ReLU [2d] -> query [d].

    Args:
      dim: d, the feature and query width.
    """
    features = K.Input((dim,), name="features")
    hidden = K.layers.Dense(2 * dim, activation="relu")(features)
    return K.Model(features, K.layers.Dense(dim, name="query")(hidden))


def train_and_evaluate(
    train,
    test,
    num_classes: int,
    sampler: Optional[samplers.Sampler],
    num_samples: int,
    epochs: int,
    batch_size: int = 256,
    learning_rate: float = 3e-3,
    jit_compile: bool = False,
    verbose: int = 0,
    seed: int = 0,
    logq_correction: str = "standard",
    shared_negatives: bool = False,
    refresh_every: Optional[int] = 100,
    tf_sampled: bool = False,
    evaluations_per_epoch: int = 1,
    callbacks: Optional[Callable[[K.Model, AdaptiveSampledSoftmaxLoss], Sequence[K.callbacks.Callback]]] = None,
    compile_first: bool = False,
) -> dict:
    """Trains one teacher-task student; returns its exact test metrics, seconds per epoch and curve.

    Args:
      train, test: (features, labels) pairs from `datasets.train_test_split`.
      num_classes: N.
      sampler: the proposal, or None for the full softmax.
      num_samples: m (per query, or per batch with `shared_negatives` / `tf_sampled`).
      epochs: passes over `train`.
      batch_size, learning_rate: Adam's batch and step size (defaults 256, 3e-3).
      jit_compile: train under XLA (default False).
      verbose: Keras `fit` verbosity (default 0).
      seed: Keras' global seed (default 0).
      logq_correction, shared_negatives: the loss layer's options (defaults "standard", False).
      refresh_every: `CodebookRefresh` every n steps (default 100; epochs refresh too; None:
        at epoch starts only).
      tf_sampled: train with `tf.nn.sampled_softmax_loss` instead (`sampler` must be None).
      evaluations_per_epoch: points of the time-to-quality curve per epoch (default 1).
      callbacks: a function (query model, output layer) -> extra Keras callbacks for `fit`, run
        after the curve and the refresh (e.g. diagnostics on a probe batch: the model and layer
        exist only in here). Their time counts as training time. Default None.
      compile_first: trace and compile the train step and the refresh before the timed epochs
        (`compile_before_timing`; its seconds are `compile_seconds`). Default False: the first
        epoch's time includes them.
    """
    (x_train, y_train), (x_test, y_test) = train, test
    K.utils.set_random_seed(seed)
    model = build_student(x_train.shape[1])
    if tf_sampled:
        if sampler is not None:
            raise ValueError("`tf_sampled` trains with TF's own sampler: pass sampler=None.")
        output = TFSampledSoftmax(num_classes, num_samples)
    else:
        output = AdaptiveSampledSoftmaxLoss(
            num_classes,
            sampler,
            num_samples=num_samples,
            logq_correction=logq_correction,
            shared_negatives=shared_negatives,
        )
    loss = SampledSoftmaxLoss(output, model=model)
    model.compile(optimizer=K.optimizers.Adam(learning_rate), loss=loss, jit_compile=jit_compile)
    compile_seconds = compile_before_timing(model, output, x_train, y_train, batch_size) if compile_first else 0.0
    refresh = CodebookRefresh(output, every_n_steps=refresh_every)
    curve = TimeToQuality(lambda: exact_test_metrics(model, output, x_test, y_test), evaluations_per_epoch)
    history = model.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=epochs,
        verbose=verbose,
        shuffle=True,
        callbacks=[curve, refresh, *(callbacks(model, output) if callbacks else [])],
    )
    final = curve.points[-1]
    return {
        "test_cross_entropy": final[1],
        "accuracy_at_1": final[2],
        # The first epoch also traces and compiles the step: the median of the others is the rate.
        "seconds_per_epoch": statistics.median(curve.epoch_seconds[1:] or curve.epoch_seconds),
        "training_seconds": curve.training_seconds,
        "compile_seconds": compile_seconds,
        "refresh_share": refresh.refresh_seconds / max(curve.training_seconds, 1e-9),
        "refresh_count": refresh.refresh_count,
        "refresh_seconds": refresh.refresh_seconds,
        "train_losses": [float(v) for v in history.history["loss"]],
        "curve": [list(point) for point in curve.points],
    }


def compile_before_timing(model: K.Model, output, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """Runs the train step once on each batch shape `fit` will feed (a full and the last partial
    batch) and the output layer's refresh, so their tracing and compilation happen before the
    timed epochs, then restores every variable (model, output layer and sampler state, optimizer):
    the training that follows is the one without it. Returns the seconds it took."""
    start = time.perf_counter()
    model.optimizer.build(model.trainable_variables)
    variables = {id(raw_variable(v)): v for v in [*model.variables, *output.variables, *model.optimizer.variables]}
    saved = {key: variable.numpy() for key, variable in variables.items()}
    for size in sorted({batch_size, len(x) % batch_size} - {0}, reverse=True):
        model.train_on_batch(x[:size], y[:size])
    if isinstance(output, AdaptiveSampledSoftmaxLoss):
        output.refresh_sampler()
    for key, variable in variables.items():
        variable.assign(saved[key])
    return time.perf_counter() - start


def time_to_reach(curve: Sequence[Sequence[float]], target: float) -> Optional[float]:
    """Training seconds at the first curve point whose test cross-entropy is <= target, or None.

    Args:
      curve: `TimeToQuality.points`: (seconds, test cross-entropy, ...) tuples.
      target: the cross-entropy to reach.
    """
    return next((seconds for seconds, value, *_ in curve if value <= target), None)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None (with a note) when matplotlib is
    missing (`pip install tf_adaptive_softmax[examples]`)."""
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'tf_adaptive_softmax[examples]').")
        return None
    return plt


def save_figure(figure, path, dpi: int = 90) -> pathlib.Path:
    """Lays out `figure`, writes it to `path` (its folder created) and closes it."""
    figure.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel  (only with a figure)

    plt.close(figure)
    return path


def export_serving(
    path, query_model, output_layer: AdaptiveSampledSoftmaxLoss, input_signature, k: int = 10
) -> pathlib.Path:
    """Saves a serving SavedModel: `serving_default(inputs) -> {"top_k_ids", "top_k_scores"}` over
    all N classes (exact logits, no sampler op), via `tf.saved_model.save`.

    Args:
      path: the SavedModel folder.
      query_model: maps the serving inputs to queries.
      output_layer: the `AdaptiveSampledSoftmaxLoss` holding the class embeddings.
      input_signature: the `tf.TensorSpec` list of the serving function.
      k: how many classes to return (default 10).
    """
    # Track only the variables serving reads (not the optimizer slots, the sampler state or the
    # Keras objects' own training functions): a small SavedModel with one signature.
    module = tf.Module()
    module.serving_variables = (
        [raw_variable(v) for v in query_model.weights]
        + [raw_variable(output_layer.class_embeddings)]
        + ([raw_variable(output_layer.class_bias)] if output_layer.class_bias is not None else [])
    )

    @tf.function(input_signature=input_signature)
    def serve(inputs):
        scores, ids = output_layer.top_k(query_model(inputs, training=False), k=k)
        return {"top_k_ids": ids, "top_k_scores": scores}

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})
    print(f"Serving SavedModel: {path}")
    return pathlib.Path(path)

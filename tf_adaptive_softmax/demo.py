"""The main job: full softmax vs each sampler at a few sample sizes, on synthetic teacher data.

    python -m tf_adaptive_softmax.demo            # embedded default (about 11 minutes on 2 cores)
    python -m tf_adaptive_softmax.demo --quick    # under a minute

Every run trains the same student (a Dense query tower and an `AdaptiveSampledSoftmaxLoss`) with
the same optimizer, steps and seed; only the training loss differs. It prints a table of the
exact full-softmax test cross-entropy, accuracy@1 and wall time per epoch, with the teacher's
Bayes-optimal cross-entropy as the floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tf_adaptive_softmax import datasets, samplers  # noqa: E402
from tf_adaptive_softmax._keras import K  # noqa: E402
from tf_adaptive_softmax.callbacks import CodebookRefresh  # noqa: E402
from tf_adaptive_softmax.layers import AdaptiveSampledSoftmaxLoss  # noqa: E402
from tf_adaptive_softmax.losses import SampledSoftmaxLoss  # noqa: E402

SamplerFactory = Callable[[int, np.ndarray], samplers.Sampler]

#: name -> factory(num_classes, train_label_counts). Adaptive samplers register here as they land.
SAMPLERS: Dict[str, SamplerFactory] = {
    "uniform": lambda n, counts: samplers.Uniform(n, seed=1),
    "log_uniform": lambda n, counts: samplers.LogUniform(n, seed=1),
    "unigram": lambda n, counts: samplers.Unigram(counts + 1.0, power=0.75, seed=1),
    "midx_pq": lambda n, counts: samplers.MIDX(n, num_codewords=32, quantizer="pq", include_bias=True, seed=1),
    "midx_rvq": lambda n, counts: samplers.MIDX(n, num_codewords=32, quantizer="rvq", include_bias=True, seed=1),
    "quadratic_kernel": lambda n, counts: samplers.QuadraticKernel(n, alpha=100.0, seed=1),
    "softmax": lambda n, counts: samplers.Softmax(n, seed=1),
}


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


def train_and_evaluate(
    train, test, num_classes: int, sampler: Optional[samplers.Sampler], num_samples: int,
    epochs: int, batch_size: int, learning_rate: float, jit_compile: bool, verbose: int, seed: int = 0,
    correct_positive: bool = False, shared_negatives: bool = False,
) -> dict:
    """Trains one student; returns its full-softmax test metrics and seconds per epoch."""
    (x_train, y_train), (x_test, y_test) = train, test
    K.utils.set_random_seed(seed)
    dim = x_train.shape[1]
    features = K.Input((dim,), name="features")
    hidden = K.layers.Dense(2 * dim, activation="relu")(features)
    query = K.layers.Dense(dim, name="query")(hidden)
    model = K.Model(features, query)
    output = AdaptiveSampledSoftmaxLoss(
        num_classes, sampler, num_samples=num_samples, correct_positive=correct_positive,
        shared_negatives=shared_negatives)
    model.compile(
        optimizer=K.optimizers.Adam(learning_rate),
        loss=SampledSoftmaxLoss(output, model=model),
        jit_compile=jit_compile,
    )
    timer = EpochTimer()
    refresh = CodebookRefresh(output, every_n_steps=100)
    history = model.fit(
        x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose, shuffle=True,
        callbacks=[timer, refresh],
    )
    logits = np.concatenate(
        [output.logits(model(x_test[i:i + 1024], training=False)).numpy() for i in range(0, len(y_test), 1024)]
    )
    log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    return {
        "test_cross_entropy": float(-np.mean(log_probs[np.arange(len(y_test)), y_test])),
        "accuracy_at_1": float(np.mean(np.argmax(logits, axis=1) == y_test)),
        "seconds_per_epoch": statistics.median(timer.durations[1:] or timer.durations),
        "refresh_share": refresh.refresh_seconds / sum(timer.durations),
        "train_losses": [float(v) for v in history.history["loss"]],
    }


def format_table(rows: Sequence[dict], floor: float) -> str:
    lines = [
        "| training loss | m | test cross-entropy | gap to full softmax | accuracy@1 | s / epoch | refresh share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    full = next((r for r in rows if r["sampler"] == "full softmax"), None)
    for row in rows:
        gap = "" if full is None else f"{row['test_cross_entropy'] - full['test_cross_entropy']:+.3f}"
        lines.append(
            f"| {row['sampler']} | {row['num_samples'] or '—'} | {row['test_cross_entropy']:.3f} | {gap} | "
            f"{row['accuracy_at_1']:.3f} | {row['seconds_per_epoch']:.2f} | {row['refresh_share']:.1%} |"
        )
    lines.append(f"| teacher (Bayes floor) | — | {floor:.3f} | | | | |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-classes", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--train-examples", type=int, default=100_000)
    parser.add_argument("--test-examples", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--num-samples", default="5,20,100", help="comma-separated sample sizes m")
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help=f"any of {', '.join(SAMPLERS)}")
    parser.add_argument("--jit-compile", action="store_true", help="train with XLA (jit_compile=True)")
    parser.add_argument("--quick", action="store_true", help="a small run, under a minute")
    parser.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (1: progress bar)")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_classes, args.train_examples, args.test_examples, args.epochs = 1000, 20_000, 2_000, 2
        args.num_samples = "5,50"
    return args


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    names = [n.strip() for n in args.samplers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown:
        raise SystemExit(f"Unknown sampler(s) {unknown}; choose from {sorted(SAMPLERS)}.")
    sample_sizes = [int(m) for m in args.num_samples.split(",")]
    teacher = datasets.make_teacher(args.num_classes, args.dim, seed=0)
    train, test = datasets.train_test_split(teacher, args.train_examples, args.test_examples)
    counts = np.bincount(train[1], minlength=args.num_classes).astype(np.float64)
    floor = teacher.cross_entropy(*test)
    print(
        f"Synthetic teacher: N={args.num_classes} classes, d={args.dim}, {args.train_examples} train / "
        f"{args.test_examples} test examples; Keras {'3' if hasattr(K, 'version') else 'tf_keras'}, "
        f"{os.cpu_count()} CPU cores, jit_compile={args.jit_compile}."
    )
    runs = [("full softmax", None, 0)] + [(n, n, m) for n in names for m in sample_sizes]
    rows = []
    for index, (label, name, m) in enumerate(runs, 1):
        print(f"\n[{index}/{len(runs)}] {label}" + (f", m={m}" if m else ""), flush=True)
        sampler = None if name is None else SAMPLERS[name](args.num_classes, counts)
        # The exact softmax oracle draws a categorical over N: cheap on CPU graphs, O(B·m·N) in XLA.
        jit = args.jit_compile and name != "softmax"
        metrics = train_and_evaluate(
            train, test, args.num_classes, sampler, max(m, 1), args.epochs, args.batch_size,
            args.learning_rate, jit, args.verbose,
        )
        rows.append({"sampler": label, "num_samples": m, **metrics})
    print("\nFull-softmax metrics on the test split (every row trained with the same steps and seed):\n")
    print(format_table(rows, floor))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])

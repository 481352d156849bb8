"""The main job: what adaptive sampled softmax buys over the full softmax and TF's sampled softmax.

    python -m tf_adaptive_softmax.demo            # N = 100,000 classes, 3-5 minutes on 2 cores
    python -m tf_adaptive_softmax.demo --quick    # N = 20,000, under a minute

A synthetic teacher (a known softmax model over N clustered classes with a Zipf prior; by default
its class ids are in no particular order, as in item catalogues: `--frequency-sorted-ids` gives the
vocabulary layout that TF's log-uniform sampler assumes) labels the data. Every row trains the
same student (a two-layer query tower and an `AdaptiveSampledSoftmaxLoss` output layer) with the
same optimizer, batches, epochs and seed; only the training loss differs:

* the full softmax (exact, O(N·d) per example);
* `tf.nn.sampled_softmax_loss` as users call it today (log-uniform negatives shared by the batch);
* our Uniform and LogUniform (static), MIDX (adaptive, per query and shared by the batch) and
  QuadraticKernel (adaptive, shared), all with the positive corrected by log(m·q).

It prints the exact test cross-entropy over all N classes, accuracy@1, seconds per epoch, the
speed-up over the full softmax and the gap to it, writes a PNG of test cross-entropy against
training seconds (time to quality) and closes with a sentence saying what MIDX bought. Every row's
train step and refresh are traced and compiled before its timed epochs (the seconds are printed
per row and are not training time), so the first epoch is timed as the others. For the
bias study at small N across many m, see `python -m benchmarks.run --sections bias`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
import time
import warnings
from typing import List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_tensorflow_quietly() -> None:
    """TensorFlow's C++ runtime writes start-up lines (oneDNN, CUDA probes) to stderr before its
    logging is configured, whatever TF_CPP_MIN_LOG_LEVEL says: silence the file descriptor for
    the import and the device probe only. Errors still raise."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow

        tensorflow.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


if __name__ == "__main__":
    _import_tensorflow_quietly()

import numpy as np
import tensorflow as tf

from tf_adaptive_softmax import _experiments as experiments
from tf_adaptive_softmax import datasets
from tf_adaptive_softmax._keras import IS_KERAS_3

#: (row label, sampler name or "full" / "tf_sampled", negatives shared by the batch)
ROWS = [
    ("full softmax", "full", False),
    ("tf.nn.sampled_softmax_loss (log-uniform, shared)", "tf_sampled", True),
    ("Uniform", "uniform", False),
    ("LogUniform", "log_uniform", False),
    ("MIDX", "midx_rvq", False),
    ("MIDX, shared", "midx_rvq", True),
    ("QuadraticKernel, shared", "quadratic_kernel", True),
]
ROW_KEYS = ["full", "tf_sampled", "uniform", "log_uniform", "midx", "midx_shared", "kernel_shared"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-classes", type=int, default=100_000, help="N (default 100,000)")
    parser.add_argument("--dim", type=int, default=32, help="embedding width d (default 32)")
    parser.add_argument("--train-examples", type=int, default=40_000)
    parser.add_argument("--test-examples", type=int, default=3_000)
    parser.add_argument("--epochs", type=int, default=2, help="the same for every row (default 2)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--num-samples", type=int, default=32, help="m per query (default 32)")
    parser.add_argument(
        "--shared-samples", type=int, default=512, help="m shared by the batch, TF's row included (default 512)"
    )
    parser.add_argument(
        "--refresh-every",
        type=int,
        default=None,
        help="adaptive refresh every n steps (default 100; 20 with --quick: 4-5 refreshes a run either way)",
    )
    parser.add_argument("--rows", default=",".join(ROW_KEYS), help=f"any of {', '.join(ROW_KEYS)}")
    parser.add_argument(
        "--frequency-sorted-ids",
        action="store_true",
        help="ids sorted by frequency (a vocabulary: log-uniform's best case)",
    )
    parser.add_argument(
        "--evaluations-per-epoch", type=int, default=2, help="points of the time-to-quality curve per epoch (default 2)"
    )
    parser.add_argument(
        "--jit-compile", action="store_true", help="train under XLA (TF's sampled-softmax row then stays in graph mode)"
    )
    parser.add_argument(
        "--plot",
        type=pathlib.Path,
        default=pathlib.Path("tf_adaptive_softmax_demo.png"),
        help="PNG of test cross-entropy against training seconds",
    )
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="N = 20,000 and fewer examples: under a minute")
    parser.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (1: progress bars)")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_classes, args.train_examples, args.test_examples = 20_000, 10_000, 1_000
        args.epochs, args.shared_samples, args.evaluations_per_epoch = 2, 256, 1
    if args.refresh_every is None:
        # --quick has 40 steps an epoch: every 20 steps refreshes 4 times a run (the full run, every
        # 100 of 314 steps, 5 times), and not only on the first epoch's random initial table.
        args.refresh_every = 20 if args.quick else 100
    args.row_keys = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(args.row_keys) - set(ROW_KEYS))
    if unknown:
        raise SystemExit(f"Unknown row(s) {unknown}; choose from {ROW_KEYS}.")
    return args


def _quiet() -> None:
    """Progress bars and the table only: no TensorFlow or absl log lines, no retracing warnings."""
    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)


def run_rows(args, train, test, counts) -> List[dict]:
    rows = []
    chosen = [(key, spec) for key, spec in zip(ROW_KEYS, ROWS) if key in args.row_keys]
    for index, (key, (label, name, shared)) in enumerate(chosen, 1):
        tf_sampled = name == "tf_sampled"
        m = args.shared_samples if shared else args.num_samples
        sampler = None if name in ("full", "tf_sampled") else experiments.make_sampler(name, args.num_classes, counts)
        print(f"\n[{index}/{len(chosen)}] {label}" + ("" if name == "full" else f", m={m}"), flush=True)
        start = time.perf_counter()
        result = experiments.train_and_evaluate(
            train,
            test,
            args.num_classes,
            sampler,
            m,
            args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            jit_compile=args.jit_compile and not tf_sampled,
            verbose=args.verbose,
            shared_negatives=shared and not tf_sampled,
            refresh_every=args.refresh_every,
            tf_sampled=tf_sampled,
            evaluations_per_epoch=args.evaluations_per_epoch,
            compile_first=True,
        )
        print(f"  compiled before the timed epochs in {result['compile_seconds']:.1f} s", flush=True)
        rows.append(
            {
                "key": key,
                "row": label,
                "num_samples": 0 if name == "full" else m,
                **result,
                "wall_seconds": time.perf_counter() - start,
            }
        )
    return rows


def add_comparisons(rows: List[dict]) -> Optional[dict]:
    full = next((r for r in rows if r["key"] == "full"), None)
    if full is None:
        return None
    for row in rows:
        row["speedup"] = full["seconds_per_epoch"] / row["seconds_per_epoch"]
        row["gap"] = row["test_cross_entropy"] / full["test_cross_entropy"] - 1.0
        reached = experiments.time_to_reach(row["curve"], 1.02 * full["test_cross_entropy"])
        row["seconds_to_within_2pct"] = reached
    return full


def format_table(rows: Sequence[dict], floor: float) -> str:
    lines = [
        "| training loss | m | test cross-entropy | gap to full softmax | accuracy@1 | s / epoch | "
        "speed-up | s to within 2% of full |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        gap = f"{row['gap']:+.1%}" if "gap" in row else ""
        speedup = f"{row['speedup']:.1f}x" if "speedup" in row else ""
        reached = row.get("seconds_to_within_2pct")
        reached = "—" if reached is None else f"{reached:.0f}"
        lines.append(
            f"| {row['row']} | {row['num_samples'] or '—'} | {row['test_cross_entropy']:.3f} | {gap} | "
            f"{row['accuracy_at_1']:.3f} | {row['seconds_per_epoch']:.1f} | {speedup} | {reached} |"
        )
    lines.append(f"| teacher (Bayes floor) | — | {floor:.3f} | | | | | |")
    return "\n".join(lines)


def summary(rows: Sequence[dict], full: Optional[dict]) -> str:
    """The closing sentence: what the best MIDX row bought, and what TF's sampled softmax did."""
    if full is None:
        return "(No full-softmax row: nothing to compare against.)"
    midx = [r for r in rows if r["key"].startswith("midx")]
    parts = []
    if midx:
        best = min(midx, key=lambda r: r["test_cross_entropy"])
        parts.append(
            f"{best['row']} reached a test cross-entropy of {best['test_cross_entropy']:.3f} "
            f"({best['gap']:+.1%} from the full softmax's {full['test_cross_entropy']:.3f}) in "
            f"{best['training_seconds']:.0f} s, {best['training_seconds'] / full['training_seconds']:.0%} of the "
            f"full softmax's {full['training_seconds']:.0f} s"
        )
        if best["seconds_to_within_2pct"] is not None:
            parts[-1] += (
                f"; it was within 2% of it after {best['seconds_to_within_2pct']:.0f} s "
                f"({best['seconds_to_within_2pct'] / full['training_seconds']:.0%} of its time)"
            )
    tf_row = next((r for r in rows if r["key"] == "tf_sampled"), None)
    if tf_row is not None:
        parts.append(
            f"tf.nn.sampled_softmax_loss reached {tf_row['test_cross_entropy']:.3f} ({tf_row['gap']:+.1%}) "
            f"in {tf_row['training_seconds']:.0f} s"
        )
    return "; ".join(parts) + "."


def plot(rows: Sequence[dict], path: pathlib.Path, title: str) -> Optional[pathlib.Path]:
    plt = experiments.pyplot()
    if plt is None:
        return None
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for color, row in enumerate(rows):
        seconds, values = zip(*[(p[0], p[1]) for p in row["curve"]])
        axis.plot(seconds, values, marker="o", markersize=3, color=f"C{color}", label=row["row"])
    full = next((r for r in rows if r["key"] == "full"), None)
    if full is not None:
        axis.axhline(1.02 * full["test_cross_entropy"], color="gray", linestyle=":", label="full softmax + 2%")
    axis.set(
        xscale="log", xlabel="training seconds (evaluation excluded)", ylabel="exact test cross-entropy", title=title
    )
    every_second = [p[0] for row in rows for p in row["curve"]]
    axis.set_xticks(
        [
            t
            for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
            if min(every_second) / 1.5 <= t <= max(every_second) * 1.5
        ]
    )
    axis.xaxis.set_major_formatter(plt.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_formatter(plt.NullFormatter())
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return experiments.save_figure(figure, path, dpi=100)


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    _quiet()
    teacher = datasets.make_teacher(args.num_classes, args.dim, seed=0, frequency_sorted_ids=args.frequency_sorted_ids)
    train, test = datasets.train_test_split(teacher, args.train_examples, args.test_examples)
    counts = np.bincount(train[1], minlength=args.num_classes).astype(np.float64)
    floor = teacher.cross_entropy(*test)
    layout = (
        "sorted by frequency (a vocabulary)" if args.frequency_sorted_ids else "in no particular order (a catalogue)"
    )
    print(
        f"Synthetic teacher: N={args.num_classes:,} classes, ids {layout}, d={args.dim}; "
        f"{args.train_examples:,} train / {args.test_examples:,} test examples; {args.epochs} epochs of batch "
        f"{args.batch_size} for every row; Keras {'3' if IS_KERAS_3 else '2 (tf_keras)'}, TensorFlow "
        f"{tf.__version__}, {os.cpu_count()} CPU cores, jit_compile={args.jit_compile}.",
        flush=True,
    )
    rows = run_rows(args, train, test, counts)
    full = add_comparisons(rows)
    print("\nExact test metrics over all classes (every row: same student, optimizer, batches, epochs, seed):\n")
    print(format_table(rows, floor))
    path = plot(rows, args.plot, f"Teacher N={args.num_classes:,}: time to quality ({os.cpu_count()} CPU cores)")
    print("\n" + (f"Time-to-quality plot: {path.resolve()}" if path else "(matplotlib missing: no plot)"))
    print("\n" + summary(rows, full))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "bayes_floor": floor, "rows": rows}, indent=1
            )
        )
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])

"""What the real-catalogue examples share: per-epoch evaluation against training seconds, early
stopping, one JSON row per configuration (means and spread over seeds), the table and the plot.

Training seconds exclude evaluation and include everything else (tracing, compilation,
refreshes). The time-to-quality target is 99% of the full softmax's final Recall@20 (the mean over
seeds); a row's time to it is the mean over seeds of the first evaluation at or above it, and None
when a seed never got there.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from catalogues import FullCatalogueRanking, Split
from common import DATA_DIR, pyplot, save_figure

K = 20  # Recall@K, NDCG@K
RECALL, NDCG = f"recall_at_{K}", f"ndcg_at_{K}"
Vectors = Callable[[], Tuple[np.ndarray, np.ndarray]]


class Progress(tf.keras.callbacks.Callback):
    """After every epoch: training seconds so far (evaluation excluded), test and validation
    Recall@20; stops after `patience` epochs without a better validation Recall@20 and keeps the
    test metrics of the best validation epoch in `best`.

    Args:
      vectors: () -> (query vectors [num_users, d'] by user id, item vectors [N, d']) whose dot
        products rank the catalogue as the model does.
      validation, test: `FullCatalogueRanking`s (validation may have no rows: test then decides).
      patience: epochs without improvement before stopping.
      label: the row's name in progress lines. verbose: print a line per epoch.
    """

    def __init__(
        self,
        vectors: Vectors,
        validation: FullCatalogueRanking,
        test: FullCatalogueRanking,
        patience: int,
        label: str,
        verbose: bool,
    ):
        super().__init__()
        self.vectors, self.validation, self.test = vectors, validation, test
        self.patience, self.label, self.verbose = patience, label, verbose
        self.seconds, self.curve, self.best = 0.0, [], None
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += time.perf_counter() - self._start
        users, items = self.vectors()
        test = self.test.metrics(users, items, K)
        validation = self.validation.metrics(users, items, K) if len(self.validation.users) else test
        self.curve.append([round(self.seconds, 2), test[RECALL]])
        if self.best is None or validation[RECALL] > self.best["validation_recall"]:
            self.best = {"epoch": epoch + 1, "seconds": self.seconds, "validation_recall": validation[RECALL], **test}
        elif epoch + 1 - self.best["epoch"] >= self.patience:
            self.model.stop_training = True
        if self.verbose:
            print(
                f"  {self.label} epoch {epoch + 1}: {self.seconds:.1f} s, validation R@{K} "
                f"{validation[RECALL]:.4f}, test R@{K} {test[RECALL]:.4f}",
                flush=True,
            )

    def result(self) -> dict:
        """The run's best-validation test metrics, its seconds to that epoch and its curve."""
        return {
            RECALL: self.best[RECALL],
            NDCG: self.best[NDCG],
            "train_seconds": self.best["seconds"],
            "epochs": self.best["epoch"],
            "seconds_per_epoch": self.seconds / len(self.curve),
            "curve": self.curve,
        }


def report_run(name: str, seed: int, result: dict) -> None:
    print(
        f"{name} (seed {seed}): Recall@{K}={result[RECALL]:.4f} NDCG@{K}={result[NDCG]:.4f} after "
        f"{result['epochs']} epochs, {result['train_seconds']:.0f} s ({result['seconds_per_epoch']:.1f} s/epoch)",
        flush=True,
    )
    if "proposal" in result:
        print("  proposal on test queries: " + ", ".join(f"{k}={v:.3g}" for k, v in result["proposal"].items()))


def summarize(name: str, kind: str, runs: List[dict], seeds: Sequence[int], recommended: bool = False) -> dict:
    """One JSON row: means over seeds with their spread (sample standard deviation, `*_std`), the
    first seed's curve (`curve`) and every seed's (`curves`)."""
    row: dict = {"name": name, "kind": kind, "seeds": list(seeds)}
    for key in (RECALL, NDCG, "train_seconds", "epochs", "seconds_per_epoch"):
        values = [run[key] for run in runs]
        row[key] = statistics.fmean(values)
        row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    row["curve"], row["curves"] = runs[0]["curve"], [run["curve"] for run in runs]
    if all("proposal" in run for run in runs):  # `proposal_diagnostics` at the end of training
        row["proposal"] = {key: statistics.fmean(run["proposal"][key] for run in runs) for key in runs[0]["proposal"]}
    if recommended:
        row["recommended"] = True
    return row


def reference_row(name: str, kind: str, results: List[Dict[str, float]], seeds: Sequence[int]) -> dict:
    """A row that does not train (popularity, a teacher's scores): metrics only."""
    row: dict = {"name": name, "kind": kind, "seeds": list(seeds), "train_seconds": 0.0, "epochs": 0, "curve": []}
    for key in (RECALL, NDCG):
        values = [result[key] for result in results]
        row[key] = statistics.fmean(values)
        row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return row


def step_times(builds: Dict[str, tuple], rounds: int, steps: int, reference: str) -> Dict[str, dict]:
    """Median training-step milliseconds of several models timed round by round (each round runs
    `steps` steps of every model in turn, so a slow spell of the machine hits them all), their
    ratio to `reference`'s step in the same round, and the median refresh time.

    Args:
      builds: name -> (compiled Keras model, `tf.data.Dataset` of batches, refresh callable or None).
      rounds, steps: rounds of `steps` training steps per model.
      reference: the name whose step the ratios divide by.

    Returns:
      name -> {"step_ms", "ratio", "refresh_ms"} (refresh_ms None without a refresh).
    """
    runners = {}
    for name, (model, dataset, refresh) in builds.items():
        iterator = iter(dataset.repeat())
        train = model.make_train_function()
        for _ in range(10):  # trace, compile, warm the caches
            train(iterator)
        if refresh is not None:
            refresh()
        runners[name] = (train, iterator, refresh)
    times: Dict[str, List[float]] = {name: [] for name in builds}
    refreshes: Dict[str, List[float]] = {name: [] for name in builds}
    for round_index in range(rounds):
        for name, (train, iterator, refresh) in runners.items():
            start = time.perf_counter()
            for _ in range(steps):
                logs = train(iterator)
            tf.nest.map_structure(lambda value: np.asarray(value), logs)
            times[name].append(1000 * (time.perf_counter() - start) / steps)
            if refresh is not None and round_index % 5 == 0:
                start = time.perf_counter()
                refresh()
                refreshes[name].append(1000 * (time.perf_counter() - start))
    return {
        name: {
            "step_ms": statistics.median(times[name]),
            "ratio": statistics.median(a / b for a, b in zip(times[name], times[reference])),
            "refresh_ms": statistics.median(refreshes[name]) if refreshes[name] else None,
        }
        for name in builds
    }


def add_protocol_arguments(parser: argparse.ArgumentParser, patience: int) -> None:
    """The catalogue, split and early-stopping flags every real-catalogue example takes."""
    parser.add_argument("--data", type=pathlib.Path, default=DATA_DIR / "gowalla.txt", help="catalogue file")
    parser.add_argument("--max-users", type=int, default=None, help="read only the first users of the file")
    parser.add_argument("--seed", type=int, default=0, help="split and initialization seed")
    parser.add_argument("--seeds", default=None, help="several seeds, e.g. 0,1,2 (overrides --seed)")
    parser.add_argument("--validation-users", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=30, help="at most this many epochs")
    parser.add_argument("--patience", type=int, default=patience, help="epochs without a better validation Recall@20")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Row choice and outputs: --only, --quick, --json, --plot, --verbose."""
    parser.add_argument("--only", default=None, help="only the rows whose name contains one of these |-separated texts")
    parser.add_argument("--quick", action="store_true", help="the first 2,000 users, at most 2 epochs, three rows")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write {'rows': [...]} here")
    parser.add_argument("--plot", type=pathlib.Path, default=None, help="time-to-quality PNG")
    parser.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=True, help="a line per epoch")


def finish_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Parses --seeds into a list and applies --quick (2,000 users, at most 2 epochs)."""
    args.seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    if args.quick:
        args.max_users, args.epochs = min(args.max_users or 2000, 2000), min(args.epochs, 2)
    return args


def rankings(split: Split) -> Tuple[FullCatalogueRanking, FullCatalogueRanking]:
    """(validation, test) rankings over the full catalogue, each user's known items excluded."""
    return (
        FullCatalogueRanking(split.validation, split.known_for_validation, split.num_items),
        FullCatalogueRanking(split.test, split.known_for_test, split.num_items),
    )


def choose_rows(rows: Sequence, only: Optional[str], quick: Optional[Sequence[str]] = None) -> list:
    """The rows to train: those whose name contains one of the `|`-separated texts of `only`;
    without `only`, the rows named in `quick` (a `--quick` run) or every row.

    Raises:
      SystemExit: `only` matches no row (the names are listed).
    """
    if only:
        chosen = [row for row in rows if any(text.strip() in row.name for text in only.split("|"))]
        if not chosen:
            raise SystemExit(f"--only {only!r} matches no row; rows: " + "; ".join(row.name for row in rows))
        return chosen
    return [row for row in rows if quick is None or row.name in quick]


def popularity_scorer(split) -> Callable[[np.ndarray], np.ndarray]:
    """users -> [len(users), N] training counts: the popularity ranking (`metrics_of_scores`)."""
    counts = np.bincount(split.train[1], minlength=split.num_items).astype(np.float32)
    return lambda users: np.broadcast_to(counts, (len(users), split.num_items))


def seconds_to_reach(curve: Sequence[Sequence[float]], target: float) -> Optional[float]:
    """Training seconds at the first evaluation with Recall@20 >= target (None: never)."""
    return next((seconds for seconds, recall in curve if recall >= target), None)


def add_time_to_quality(rows: List[dict]) -> None:
    """Adds `seconds_to_99_of_full` to every trained row (see the module docstring)."""
    full = next((row for row in rows if row["kind"] == "full-softmax"), None)
    for row in rows:
        row["seconds_to_99_of_full"] = None
        if full is not None and "curves" in row:
            reached = [seconds_to_reach(curve, 0.99 * full[RECALL]) for curve in row["curves"]]
            row["seconds_to_99_of_full"] = None if None in reached else statistics.fmean(reached)


def table(rows: List[dict]) -> str:
    """The rows as a Markdown table (mean ± spread over seeds)."""
    lines = [
        f"| row | kind | Recall@{K} | NDCG@{K} | s / epoch | epochs | train s | s to 99% of full |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        trained = "seconds_per_epoch" in row
        reach = row.get("seconds_to_99_of_full")
        cells = [
            row["name"] + (" (recommended)" if row.get("recommended") else ""),
            row["kind"],
            f"{row[RECALL]:.4f} ± {row[RECALL + '_std']:.4f}",
            f"{row[NDCG]:.4f} ± {row[NDCG + '_std']:.4f}",
            f"{row['seconds_per_epoch']:.1f}" if trained else "—",
            f"{row['epochs']:.1f}" if trained else "—",
            f"{row['train_seconds']:.0f}" if trained else "—",
            "—" if reach is None else f"{reach:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: List[dict], path: pathlib.Path, title: str) -> None:
    """Test Recall@20 against training seconds, one line per trained row (first seed); references
    as horizontal lines."""
    plt = pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for row in rows:
        if row.get("curve"):
            seconds, recall = zip(*row["curve"])
            axis.plot(seconds, recall, marker=".", label=row["name"])
        else:
            axis.axhline(row[RECALL], color="grey", linestyle=":", label=row["name"])
    axis.set_xscale("log")
    axis.set_xlabel("training seconds (evaluation excluded)")
    axis.set_ylabel(f"test Recall@{K}")
    axis.set_title(title, fontsize=8)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    print(f"Time-to-quality plot: {save_figure(figure, path)}")


def write_json(path: pathlib.Path, rows: List[dict], source: str, settings: str, config: dict) -> None:
    """`{"rows": [...], "source", "settings", "config", "machine"}`; paths in `config` by name only."""
    config = {key: (value.name if isinstance(value, pathlib.Path) else value) for key, value in config.items()}
    machine = f"{os.cpu_count()} CPU cores, {platform.machine()}, TensorFlow {tf.__version__}"
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"source": source, "settings": settings, "config": config, "machine": machine, "rows": rows}
    path.write_text(json.dumps(report, indent=1))

"""What the example scripts share: data loading, leave-last-out splits, ranking metrics, sampler
choice, command-line flags and the training-curve plot. Import it from a script in this folder
(`python examples/<script>.py` puts the folder on the path)."""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
from typing import Dict, Optional, Sequence

import numpy as np

import tf_adaptive_softmax as tfas
from tf_adaptive_softmax import _experiments as experiments
from tf_adaptive_softmax import samplers
from tf_adaptive_softmax._experiments import export_serving, pyplot, save_figure  # noqa: F401  (the scripts' API)

# Real data sets live wherever $TFAS_DATA_DIR points (none ship with the package); without it the
# scripts use their synthetic stand-ins.
DATA_DIR = experiments.data_dir() or pathlib.Path("TFAS_DATA_DIR-is-not-set")
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
SAMPLER_CHOICES = ["full", "tf_sampled", *experiments.SAMPLERS]


def add_training_arguments(parser: argparse.ArgumentParser, sampler="midx_rvq", num_samples=64, epochs=5):
    """Flags every example takes: sampler, m, epochs, --quick, output paths, verbosity."""
    parser.add_argument(
        "--sampler",
        default=sampler,
        choices=SAMPLER_CHOICES,
        help="training loss: 'full' softmax, 'tf_sampled' (tf.nn.sampled_softmax_loss, log-uniform, shared) "
        "or a sampler from tf_adaptive_softmax._experiments.SAMPLERS",
    )
    parser.add_argument("--num-samples", type=int, default=num_samples, help="m, negatives per query")
    parser.add_argument(
        "--logq-correction",
        choices=["standard", "negatives_only", "corrected"],
        default="standard",
        help="standard: every column minus log(m·q), the positive too (default); negatives_only: the "
        "positive raw (Blanc & Rendle's eq. 3); corrected: Khrylchenko et al. 2025",
    )
    parser.add_argument(
        "--shared-negatives",
        action="store_true",
        help="one set of m negatives for the whole batch (batch-mixture proposal)",
    )
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--refresh-every", type=int, default=100, help="CodebookRefresh every n steps")
    parser.add_argument("--quick", action="store_true", help="a run of about a minute")
    parser.add_argument(
        "--plot",
        type=pathlib.Path,
        default=None,
        help="PNG of the training curves (default: examples/results/<script>.png)",
    )
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the final metrics here")
    parser.add_argument("--export", type=pathlib.Path, default=None, help="export a serving SavedModel here")
    parser.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (1: progress bar)")
    parser.add_argument("--seed", type=int, default=0)


def make_sampler(name: str, num_classes: int, counts: Optional[np.ndarray] = None) -> Optional[samplers.Sampler]:
    """None for the full softmax (and TF's loss), else the named sampler from experiments.SAMPLERS."""
    if name in ("full", "tf_sampled"):
        return None
    counts = np.ones(num_classes) if counts is None else np.asarray(counts, np.float64)
    return experiments.SAMPLERS[name](num_classes, counts + 1.0)


def make_output_layer(args, num_classes: int, counts: Optional[np.ndarray] = None, **layer_kwargs):
    """The output layer the flags ask for: `experiments.TFSampledSoftmax` for `--sampler tf_sampled`
    (its negatives are always shared and its positive corrected), else `AdaptiveSampledSoftmaxLoss`."""
    if args.sampler == "tf_sampled":
        return experiments.TFSampledSoftmax(num_classes, args.num_samples, **layer_kwargs)
    return tfas.AdaptiveSampledSoftmaxLoss(
        num_classes,
        make_sampler(args.sampler, num_classes, counts),
        num_samples=args.num_samples,
        logq_correction=args.logq_correction,
        shared_negatives=args.shared_negatives,
        **layer_kwargs,
    )


def load_interactions(path: pathlib.Path):
    """(users, items, timestamps) as dense 0-based int arrays from an interactions file.

    Tab- or comma-separated, with or without a header. Three columns are user, item, timestamp;
    four are user, item, rating, timestamp (MovieLens' `.inter` layout).
    """
    with open(path) as handle:
        first = handle.readline()
    delimiter = "\t" if "\t" in first else ","
    has_header = not first.split(delimiter)[0].strip().lstrip("-").isdigit()
    raw = np.loadtxt(path, delimiter=delimiter, skiprows=int(has_header), dtype=np.int64, ndmin=2)
    if raw.shape[1] not in (3, 4):
        raise ValueError(
            f"{path}: expected columns user,item,timestamp or user,item,rating,timestamp; got {raw.shape[1]} columns."
        )
    users = np.unique(raw[:, 0], return_inverse=True)[1]
    items = np.unique(raw[:, 1], return_inverse=True)[1]
    return users.astype(np.int32), items.astype(np.int32), raw[:, -1]


def user_sequences(users, items, timestamps) -> Dict[int, np.ndarray]:
    """Each user's items in time order (ties kept in file order)."""
    order = np.lexsort((np.arange(len(users)), timestamps, users))
    users, items = users[order], items[order]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1, len(users)]
    return {int(users[a]): items[a:b] for a, b in itertools.pairwise(starts)}


def leave_last_out(users, items, timestamps):
    """((train users, train items), (test users, test items)): each user's last item is the test."""
    order = np.lexsort((np.arange(len(users)), timestamps, users))
    users, items = users[order], items[order]
    last = np.r_[users[1:] != users[:-1], True]
    return (users[~last], items[~last]), (users[last], items[last])


def ranking_metrics(scores: np.ndarray, targets: np.ndarray, exclude: Optional[np.ndarray] = None, k: int = 10):
    """(Recall@k, NDCG@k) of each row's target among all columns of `scores` [n, N].

    `exclude` [n, N] bool removes items from the ranking (a user's training history), as
    RecBole's full-sort evaluation does. Ties count against the target.
    """
    if exclude is not None:
        scores = np.where(exclude, -np.inf, scores)
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    rank = (scores > target_scores).sum(axis=1)
    hit = rank < k
    return float(hit.mean()), float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean())


def precision_at_k(scores: np.ndarray, label_sets: np.ndarray, ks: Sequence[int] = (1, 3, 5)) -> Dict[str, float]:
    """Precision@k for multi-label rows: |top-k ∩ labels| / k, averaged over rows."""
    top = np.argsort(-scores, axis=1)[:, : max(ks)]
    hits = (top[:, :, None] == label_sets[:, None, :]).any(axis=2)
    return {f"precision_at_{k}": float(hits[:, :k].sum(axis=1).mean() / k) for k in ks}


def exact_logits(query_model, output_layer, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """All N full-softmax logits [n, N] for `inputs`, computed `batch_size` rows at a time."""
    return np.concatenate(
        [
            output_layer.logits(query_model(inputs[start : start + batch_size], training=False)).numpy()
            for start in range(0, len(inputs), batch_size)
        ]
    )


def plot_curves(curves: Dict[str, Sequence[float]], path: pathlib.Path, title: str) -> Optional[pathlib.Path]:
    """Writes one panel per curve (loss, metrics by epoch) to a PNG; skips without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    from matplotlib.ticker import MaxNLocator

    curves = {name: values for name, values in curves.items() if len(values)}
    figure, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.4), squeeze=False)
    for axis, (name, values) in zip(axes[0], curves.items()):
        axis.plot(np.arange(1, len(values) + 1), values, marker="o")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(name)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    path = save_figure(figure, path)
    print(f"Training curves: {path}")
    return path


def finish(script: str, args, metrics: dict, curves: Dict[str, Sequence[float]], title: str) -> dict:
    """Prints the final metrics, writes the plot (and JSON when asked)."""
    print(
        "\nFinal full-softmax metrics: "
        + ", ".join(f"{key}={value:.4f}" for key, value in metrics.items() if isinstance(value, float))
    )
    plot_curves(curves, args.plot or RESULTS_DIR / f"{script}.png", title)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({**metrics, "curves": {k: list(map(float, v)) for k, v in curves.items()}}, indent=2)
        )
    return metrics

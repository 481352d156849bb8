"""TFRS two-tower retrieval on a real catalogue: every loss users would compare, to convergence and
against the clock.

    python examples/tfrs_two_tower.py                          # gowalla.txt from $TFAS_DATA_DIR, one seed
    python examples/tfrs_two_tower.py --data amazon-book.txt --seeds 0,1,2 --json rows.json
    python examples/tfrs_two_tower.py --quick                  # a slice of Gowalla, a minute
    python examples/tfrs_two_tower.py --catalogue synthetic    # 100,000 items from a known teacher
    python examples/tfrs_two_tower.py --only "MIDX" --dim 64   # rows whose name contains "MIDX"

Data: a one-user-a-line file (`gowalla.txt`, `amazon-book.txt`: user id, then item ids) or an
interactions table (`ml-100k.inter`: user, item, [rating,] timestamp), told apart automatically
(`catalogues.py`). The protocol (LightGCN's release, one held-out item): users with fewer than two distinct
items dropped, one random test item per user (`--seed`), a validation item for up to
`--validation-users` users with three or more items (early stopping); Recall@20 and NDCG@20 of the
held-out item ranked against the full catalogue, the user's known items excluded. Counts of what
was dropped are printed; a malformed line stops the run with its file and line.

Every trained row has the same towers (user-id and item-id embeddings of width `--dim`), optimizer
(`--optimizer`, Adam 0.01 by default), batches, seed and early stopping (best validation Recall@20,
`--patience` epochs, at most `--epochs`). Rows (`kind` in `--json`):

  Popularity                          popularity          items ranked by training count
  Retrieval, in-batch (dot|cosine)    tfrs-in-batch       tfrs.tasks.Retrieval as users call it
  Retrieval, in-batch + logQ (...)    tfrs-in-batch-logq  + candidate_sampling_probability (item frequency)
  Full softmax (cosine)               full-softmax        every item scored at every step: the ceiling
  AdaptiveRetrieval + S[, shared]     adaptive            in-batch + logQ columns plus m catalogue negatives
                                                          from S = MIDX (adaptive) or Uniform, per query or
                                                          shared by the batch (Uniform shared: mixed
                                                          negative sampling, Yang et al. 2020)

Optimizers: every row uses the same one, so its cost is the same in every row. tf_keras' Adam
decays both moments of the whole embedding table at every step, whatever rows the loss touched;
`--optimizer adagrad` updates only the touched rows (sparse updates), and the dot-product row
labelled "Adagrad 0.1" is the 0.1.0 example's recipe, kept for comparison.

Cosine rows L2-normalize both towers and divide scores by `--temperature`; the catalogue proposal
then sees h / τ, the model's own scale, and is refreshed on the normalized item vectors.
Training seconds exclude evaluation and include everything else (tracing, refreshes); read
seconds side by side within one run. Results and the conclusions: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from typing import Dict, List, Optional, Tuple

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFRS needs tf_keras; must precede the TF import
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
from catalogues import Catalogue, Split, describe, first_users, holdout_split, read_catalogue
from common import RESULTS_DIR
from time_to_quality import (
    Progress,
    add_protocol_arguments,
    add_report_arguments,
    add_time_to_quality,
    choose_rows,
    finish_arguments,
    plot,
    popularity_scorer,
    rankings,
    reference_row,
    report_run,
    step_times,
    summarize,
    table,
    write_json,
)

from tf_adaptive_softmax import CodebookRefresh, datasets, samplers
from tf_adaptive_softmax.tfrs import AdaptiveRetrieval


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    kind: str
    cosine: bool = True
    log_q: bool = False
    sampler: Optional[str] = None  # "midx" | "uniform" with AdaptiveRetrieval
    shared: bool = False
    optimizer: Optional[Tuple[str, float]] = None  # (name, learning rate) instead of --optimizer's


ROWS = [
    Row("Retrieval, in-batch + logQ, dot, Adagrad 0.1", "tfrs-in-batch-logq", False, True, optimizer=("adagrad", 0.1)),
    Row("Retrieval, in-batch, dot", "tfrs-in-batch", cosine=False),
    Row("Retrieval, in-batch + logQ, dot", "tfrs-in-batch-logq", cosine=False, log_q=True),
    Row("Retrieval, in-batch, cosine", "tfrs-in-batch"),
    Row("Retrieval, in-batch + logQ, cosine", "tfrs-in-batch-logq", log_q=True),
    Row("Full softmax, cosine", "full-softmax"),
    Row("AdaptiveRetrieval + MIDX", "adaptive", log_q=True, sampler="midx"),
    Row("AdaptiveRetrieval + MIDX, shared", "adaptive", log_q=True, sampler="midx", shared=True),
    Row("AdaptiveRetrieval + Uniform", "adaptive", log_q=True, sampler="uniform"),
    Row("AdaptiveRetrieval + Uniform, shared", "adaptive", log_q=True, sampler="uniform", shared=True),
]
# Ours to compare in --quick and --json: on Gowalla (3 seeds) Uniform shared negatives ended ahead
# of MIDX shared and cost less (benchmarks/README.md, "Real catalogues").
RECOMMENDED = "AdaptiveRetrieval + Uniform, shared"
QUICK_ROWS = ("Retrieval, in-batch + logQ, cosine", "Full softmax, cosine", RECOMMENDED)  # --quick, no --only


def synthetic_catalogue(num_users: int, num_items: int, dim: int, per_user: int, seed: int):
    """(Catalogue, teacher scorer): each user's distinct draws from a two-tower teacher
    softmax(u·vᵀ + b) with clustered items, a Zipf popularity b and shuffled item ids."""
    teacher = datasets.make_teacher(num_items, dim, seed=seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_items)  # ids say nothing about popularity
    item_vectors, item_bias = teacher.class_embeddings[order], teacher.class_bias[order]
    user_vectors = rng.standard_normal((num_users, dim)).astype(np.float32)

    def scores(users):
        return user_vectors[users] @ item_vectors.T + item_bias

    users, items = [], []
    chunk = max(1, (1 << 24) // num_items)
    for start in range(0, num_users, chunk):
        block = np.arange(start, min(num_users, start + chunk))
        draws = tf.random.stateless_categorical(scores(block), per_user, seed=[seed, start], dtype=tf.int32).numpy()
        for user, row in zip(block, draws):
            kept = np.unique(row)
            users.append(np.full(len(kept), user, np.int32))
            items.append(kept.astype(np.int32))
    catalogue = Catalogue(
        np.concatenate(users), np.concatenate(items), num_users, num_items, "synthetic teacher", {"users": num_users}
    )
    return catalogue, scores


class TwoTower(tfrs.Model):
    """User-id and item-id embeddings; cosine scores when `cosine`; `task` is the loss."""

    def __init__(self, num_users: int, num_items: int, dim: int, cosine: bool, item_probability=None, init_stddev=None):
        super().__init__()

        def init():  # one initializer per table: a shared unseeded one repeats its values
            return "uniform" if init_stddev is None else tf.keras.initializers.RandomNormal(stddev=init_stddev)

        self.users = tf.keras.layers.Embedding(num_users, dim, embeddings_initializer=init())
        self.items = tf.keras.layers.Embedding(num_items, dim, embeddings_initializer=init())
        self.users.build((None,))
        self.items.build((None,))
        self.cosine = cosine
        self.item_probability = None if item_probability is None else tf.constant(item_probability, tf.float32)
        self.task = None

    def normalize(self, vectors):
        return tf.math.l2_normalize(vectors, axis=-1) if self.cosine else vectors

    def item_tower(self, ids):
        return self.normalize(self.items(ids))

    def compute_loss(self, features, training=False):
        users, items = features
        query = self.normalize(self.users(users))
        if isinstance(self.task, FullSoftmax):
            return self.task(query, items, self.normalize(self.items.embeddings))
        probability = None if self.item_probability is None else tf.gather(self.item_probability, items)
        kwargs = {"training": training} if isinstance(self.task, AdaptiveRetrieval) else {}
        return self.task(
            query,
            self.item_tower(items),
            candidate_ids=items,
            candidate_sampling_probability=probability,
            compute_metrics=False,
            **kwargs,
        )

    def vectors(self):
        """(user vectors, item vectors) as NumPy arrays, normalized as the scores use them."""
        return self.normalize(self.users.embeddings).numpy(), self.normalize(self.items.embeddings).numpy()


class FullSoftmax(tf.keras.layers.Layer):
    """The exact softmax over the whole catalogue (what sampled softmax approximates), summed over
    the batch as TFRS's loss is."""

    def __init__(self, temperature: Optional[float]):
        super().__init__()
        self.temperature = temperature

    def call(self, query, item_ids, item_table):
        logits = tf.matmul(query, item_table, transpose_b=True)
        if self.temperature is not None:
            logits = logits / self.temperature
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(item_ids, logits))


def make_task(row: Row, model: TwoTower, num_items: int, args, seed: int):
    """(the task, its callbacks) for one row."""
    temperature = args.temperature if row.cosine else None
    if row.kind == "full-softmax":
        return FullSoftmax(temperature), []
    if row.sampler is None:
        return tfrs.tasks.Retrieval(temperature=temperature), []
    if row.sampler == "midx":
        sampler = samplers.MIDX(num_items, num_codewords=args.num_codewords, seed=seed)
    else:
        sampler = samplers.Uniform(num_items, seed=seed)
    task = AdaptiveRetrieval(
        sampler,
        num_samples=args.shared_samples if row.shared else args.num_samples,
        candidate_embeddings=model.item_tower if row.cosine else model.items,
        catalogue_ids=np.arange(num_items, dtype=np.int32) if row.cosine else None,
        retrieval=tfrs.tasks.Retrieval(temperature=temperature),
        shared_negatives=row.shared,
    )
    return task, [CodebookRefresh(task, every_n_steps=args.refresh_every)] if sampler.adaptive else []


def build_row(row: Row, split: Split, args, seed: int):
    """(compiled model, shuffled batches, refresh callbacks) of one row and seed."""
    tf.keras.utils.set_random_seed(seed)
    counts = np.bincount(split.train[1], minlength=split.num_items).astype(np.float64)
    probability = (counts + 1.0) / (counts + 1.0).sum() if row.log_q else None
    model = TwoTower(split.num_users, split.num_items, args.dim, row.cosine, probability)
    model.task, callbacks = make_task(row, model, split.num_items, args, seed)
    name, learning_rate = row.optimizer or (args.optimizer, args.learning_rate)
    optimizer = {"adam": tf.keras.optimizers.Adam, "adagrad": tf.keras.optimizers.Adagrad}[name]
    model.compile(optimizer=optimizer(learning_rate))
    data = tf.data.Dataset.from_tensor_slices(split.train).shuffle(len(split.train[0]), seed=seed)
    return model, data.batch(args.batch_size), callbacks


def train_row(row: Row, split: Split, evaluation, args, seed: int) -> dict:
    """Trains one row with one seed: `Progress.result()` (best-validation test metrics, curve)."""
    model, batches, callbacks = build_row(row, split, args, seed)
    progress = Progress(model.vectors, *evaluation, args.patience, f"{row.name} (seed {seed})", args.verbose)
    model.fit(batches, epochs=args.epochs, verbose=0, callbacks=[progress, *callbacks])
    return progress.result()


def report_step_times(chosen: List[Row], split: Split, args) -> None:
    """`--step-times`: every chosen row's training step timed round by round against TFRS's
    in-batch + logQ cosine row, and its epoch estimated with the refreshes it runs."""
    reference = next(row for row in ROWS if row.kind == "tfrs-in-batch-logq" and row.cosine)
    rows = [reference] + [row for row in chosen if row != reference and row.kind != "full-softmax"]
    builds = {}
    for row in rows:
        model, batches, callbacks = build_row(row, split, args, args.seeds[0])
        refresh = callbacks[0].target.refresh_sampler if callbacks else None
        builds[row.name] = (model, batches.cache(), refresh)
    times = step_times(builds, args.step_times, 20, reference.name)
    steps = -(-len(split.train[0]) // args.batch_size)
    print(f"\nTraining step, median of {args.step_times} rounds of 20 steps ({steps} steps an epoch):")
    print("| row | step ms | × in-batch step | refresh ms | epoch s (refreshes included) | × in-batch epoch |")
    print("|---|---:|---:|---:|---:|---:|")
    base = steps * times[reference.name]["step_ms"] / 1000
    for name, time_of in times.items():
        refresh = time_of["refresh_ms"]
        epoch = steps * time_of["step_ms"] / 1000 + (
            0 if refresh is None else -(-steps // args.refresh_every) * refresh / 1000
        )
        print(
            f"| {name} | {time_of['step_ms']:.2f} | {time_of['ratio']:.2f} | "
            f"{'—' if refresh is None else f'{refresh:.0f}'} | {epoch:.1f} | {epoch / base:.2f} |"
        )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_arguments(parser, patience=4)
    parser.add_argument("--catalogue", choices=["file", "synthetic"], default=None, help="default: file if it exists")
    parser.add_argument("--num-items", type=int, default=100_000, help="synthetic catalogue size")
    parser.add_argument("--num-users", type=int, default=20_000, help="synthetic users")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.2, help="τ of the cosine rows")
    parser.add_argument("--num-samples", type=int, default=64, help="m catalogue negatives per query")
    parser.add_argument("--shared-samples", type=int, default=1024, help="m catalogue negatives shared by a batch")
    parser.add_argument("--num-codewords", type=int, default=None, help="MIDX K (default: from N)")
    parser.add_argument("--refresh-every", type=int, default=200, help="MIDX refresh every n steps")
    parser.add_argument("--optimizer", choices=["adam", "adagrad"], default="adam")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: 0.01 (adam), 0.1 (adagrad)")
    add_report_arguments(parser)
    parser.add_argument(
        "--step-times", type=int, default=0, metavar="ROUNDS", help="only time the rows' steps, in this many rounds"
    )
    args = finish_arguments(parser.parse_args(argv))
    if args.learning_rate is None:
        args.learning_rate = 0.01 if args.optimizer == "adam" else 0.1
    if args.quick:
        args.num_users, args.num_items = min(args.num_users, 2000), 20_000
    if args.catalogue is None:
        args.catalogue = "file" if args.data.exists() else "synthetic"
    if args.catalogue == "file" and not args.data.exists():
        parser.error(f"{args.data} does not exist: pass --data PATH (or set TFAS_DATA_DIR), or --catalogue synthetic.")
    return args


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    teacher = None
    if args.catalogue == "file":
        catalogue = first_users(read_catalogue(args.data), args.max_users)
    else:
        catalogue, teacher = synthetic_catalogue(args.num_users, args.num_items, 32, 20, args.seeds[0])
    chosen = choose_rows(ROWS, args.only, QUICK_ROWS if args.quick else None)
    runs: Dict[str, List[dict]] = {row.name: [] for row in chosen}
    references: Dict[str, List[dict]] = {"Popularity": []}
    if args.step_times:
        split = holdout_split(catalogue, args.seeds[0], args.validation_users)
        print(describe(catalogue, split, args.seeds[0]), flush=True)
        report_step_times(chosen, split, args)
        return []
    for seed in args.seeds:
        split = holdout_split(catalogue, seed, args.validation_users)
        print(describe(catalogue, split, seed), flush=True)
        validation_and_test = rankings(split)
        test = validation_and_test[1]
        references["Popularity"].append(test.metrics_of_scores(popularity_scorer(split)))
        if teacher is not None:
            scores = lambda users, split=split: teacher(split.catalogue_users[users])  # noqa: E731
            references.setdefault("Teacher scores (ceiling)", []).append(
                validation_and_test[1].metrics_of_scores(scores)
            )
        for row in chosen:
            runs[row.name].append(train_row(row, split, validation_and_test, args, seed))
            report_run(row.name, seed, runs[row.name][-1])
    rows = [
        reference_row(name, "popularity" if name == "Popularity" else "reference", results, args.seeds)
        for name, results in references.items()
    ]
    rows += [summarize(row.name, row.kind, runs[row.name], args.seeds, row.name == RECOMMENDED) for row in chosen]
    add_time_to_quality(rows)
    source = args.data.name if args.catalogue == "file" else "synthetic teacher"
    settings = (
        f"d={args.dim}, batch {args.batch_size}, {args.optimizer} {args.learning_rate:g}, τ={args.temperature:g}, "
        f"m={args.num_samples} per query / {args.shared_samples} shared, refresh every {args.refresh_every} steps"
    )
    print(f"\n{source}, seeds {args.seeds}; {settings}\n{table(rows)}")
    plot(rows, args.plot or RESULTS_DIR / f"tfrs_two_tower_{pathlib.Path(source).stem}.png", f"{source}: {settings}")
    if args.json is not None:
        write_json(args.json, rows, source, settings, {k: v for k, v in vars(args).items() if k != "json"})
    return rows


if __name__ == "__main__":
    main()

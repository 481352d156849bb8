"""Keras 3 two-tower retrieval in keras-rs style, on a real catalogue, with our catalogue negatives.

    python examples/keras_rs_two_tower.py                        # gowalla.txt from $TFAS_DATA_DIR, one seed
    python examples/keras_rs_two_tower.py --quick                # a slice of Gowalla, a minute
    python examples/keras_rs_two_tower.py --seeds 0,1,2 --json rows.json --export serving/

Needs Keras 3 and keras-rs (`pip install "tf_adaptive_softmax[keras-rs]"`). The model's
`compute_loss` scores the batch with keras-rs's own layers (`SamplingProbabilityCorrection` for
logQ, `RemoveAccidentalHits`) and `CatalogueNegatives` appends m negatives drawn from the whole
catalogue; evaluation and serving use `keras_rs.layers.BruteForceRetrieval`, re-indexed at every
`CodebookRefresh`. The data, split and metrics are those of `tfrs_two_tower.py` (LightGCN's
one-user-a-line files; one random held-out item per user and seed; Recall@20 / NDCG@20 over the
full catalogue, training items excluded; early stopping on validation Recall@20).

Rows (`kind` in `--json`), all with the same towers (user-id and item-id embeddings, cosine
scores, temperature `--temperature`), Adam, batches and seed:

  Popularity                               popularity          items ranked by training count
  keras-rs, in-batch + logQ                in-batch-logq       keras-rs's layers alone
  Full softmax                             full-softmax        every item scored at every step
  keras-rs + CatalogueNegatives(S, shared) adaptive            + m catalogue negatives shared by the
                                                               batch, S = Uniform or MIDX

`--export DIR` writes a serving SavedModel (user id -> top-20 item ids through the index) whose
graph has no sampler op. Results: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import keras_rs
import numpy as np
import tensorflow as tf
from catalogues import Split, describe, first_users, holdout_split, read_catalogue
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
    summarize,
    table,
    write_json,
)

from tf_adaptive_softmax import CodebookRefresh, samplers
from tf_adaptive_softmax.keras_rs import CatalogueNegatives


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    kind: str
    sampler: Optional[str] = None  # "uniform" | "midx": catalogue negatives shared by the batch


ROWS = [
    Row("keras-rs, in-batch + logQ", "in-batch-logq"),
    Row("Full softmax", "full-softmax"),
    Row("keras-rs + CatalogueNegatives(Uniform, shared)", "adaptive", "uniform"),
    Row("keras-rs + CatalogueNegatives(MIDX, shared)", "adaptive", "midx"),
]
# As in tfrs_two_tower.py: on Gowalla Uniform shared negatives ended ahead of MIDX shared.
RECOMMENDED = "keras-rs + CatalogueNegatives(Uniform, shared)"
QUICK_ROWS = ("keras-rs, in-batch + logQ", "Full softmax", RECOMMENDED)  # --quick, no --only


class TwoTower(keras.Model):
    """User-id and item-id embeddings, cosine scores over `temperature`; `call` is the query tower."""

    def __init__(self, num_users: int, num_items: int, dim: int, temperature: float, item_probability, row: Row):
        super().__init__()
        self.users = keras.layers.Embedding(num_users, dim)
        self.items = keras.layers.Embedding(num_items, dim)
        self.users.build((None,))
        self.items.build((None,))
        self.temperature, self.full_softmax = temperature, row.kind == "full-softmax"
        self.item_probability = tf.constant(item_probability, tf.float32)
        self.logq = keras_rs.layers.SamplingProbabilityCorrection()
        self.accidental_hits = keras_rs.layers.RemoveAccidentalHits()
        self.index = keras_rs.layers.BruteForceRetrieval(k=20, return_scores=False)
        self.negatives = None
        if row.sampler is not None:
            sampler = {"uniform": samplers.Uniform, "midx": samplers.MIDX}[row.sampler](num_items, seed=0)
            # The index is given the same normalized vectors as the sampler at every refresh.
            self.negatives = CatalogueNegatives(
                sampler, self.item_tower, 1024, temperature=temperature, shared_negatives=True, index=self.index
            )

    def build(self, *args):  # the towers are built above; the catalogue negatives build their own state
        self.built = True

    def item_tower(self, ids):
        return keras.ops.normalize(self.items(ids), axis=-1)

    def call(self, inputs):
        users = inputs["user"] if isinstance(inputs, dict) else inputs  # training batches, or user ids
        return keras.ops.normalize(self.users(users), axis=-1)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        items = x["item"]
        if self.full_softmax:
            logits = tf.matmul(y_pred, self.item_tower(tf.range(self.items.input_dim)), transpose_b=True)
            return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(items, logits / self.temperature))
        logits = tf.matmul(y_pred, self.item_tower(items), transpose_b=True) / self.temperature
        labels = tf.eye(tf.shape(logits)[0])
        logits = self.logq(logits, tf.gather(self.item_probability, items))
        logits = self.accidental_hits(logits, labels, items)
        if self.negatives is not None:
            logits, labels = self.negatives(
                logits, labels, y_pred, items, sampling_probability_corrected=True, training=training
            )
        return keras.losses.CategoricalCrossentropy(from_logits=True, reduction="sum")(labels, logits)

    def vectors(self):
        """(user vectors, item vectors) as NumPy arrays, as the scores use them."""
        return self(tf.range(self.users.input_dim)).numpy(), self.item_tower(tf.range(self.items.input_dim)).numpy()


def train_row(row: Row, split: Split, evaluation, args, seed: int):
    """(Progress.result(), the trained model) of one row and seed."""
    keras.utils.set_random_seed(seed)
    counts = np.bincount(split.train[1], minlength=split.num_items).astype(np.float64)
    model = TwoTower(
        split.num_users, split.num_items, args.dim, args.temperature, (counts + 1) / (counts + 1).sum(), row
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    data = tf.data.Dataset.from_tensor_slices({"user": split.train[0], "item": split.train[1]})
    data = data.shuffle(len(split.train[0]), seed=seed).batch(args.batch_size)
    refresh = [CodebookRefresh(model.negatives, every_n_steps=args.refresh_every)] if model.negatives else []
    progress = Progress(model.vectors, *evaluation, args.patience, f"{row.name} (seed {seed})", args.verbose)
    model.fit(data, epochs=args.epochs, verbose=0, shuffle=False, callbacks=[progress, *refresh])  # data is shuffled
    return progress.result(), model


def export_serving(model: TwoTower, path: pathlib.Path) -> None:
    """A SavedModel: user ids -> top-20 item ids through the BruteForceRetrieval index."""
    model.index.update_candidates(model.item_tower(tf.range(model.items.input_dim)))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(model.index)
    signature = [tf.TensorSpec([None], tf.int32, name="user")]
    archive.add_endpoint("serve", lambda users: model.index(model(users)), input_signature=signature)
    archive.write_out(str(path), verbose=False)
    print(f"serving model (user id -> top-20 item ids): {path}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_arguments(parser, patience=4)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--refresh-every", type=int, default=200, help="sampler and index refresh every n steps")
    add_report_arguments(parser)
    parser.add_argument("--export", type=pathlib.Path, default=None, help="the recommended row's serving SavedModel")
    args = finish_arguments(parser.parse_args(argv))
    if not args.data.exists():
        parser.error(f"{args.data} does not exist: pass --data PATH (or set TFAS_DATA_DIR).")
    return args


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    catalogue = first_users(read_catalogue(args.data), args.max_users)
    chosen = choose_rows(ROWS, args.only, QUICK_ROWS if args.quick else None)
    runs: Dict[str, List[dict]] = {row.name: [] for row in chosen}
    popularity: List[dict] = []
    for seed in args.seeds:
        split = holdout_split(catalogue, seed, args.validation_users)
        print(describe(catalogue, split, seed), flush=True)
        validation_and_test = rankings(split)
        popularity.append(validation_and_test[1].metrics_of_scores(popularity_scorer(split)))
        for row in chosen:
            result, model = train_row(row, split, validation_and_test, args, seed)
            runs[row.name].append(result)
            report_run(row.name, seed, result)
            if args.export is not None and row.name == RECOMMENDED and seed == args.seeds[0]:
                export_serving(model, args.export)
    rows = [reference_row("Popularity", "popularity", popularity, args.seeds)]
    rows += [summarize(row.name, row.kind, runs[row.name], args.seeds, row.name == RECOMMENDED) for row in chosen]
    add_time_to_quality(rows)
    settings = (
        f"d={args.dim}, batch {args.batch_size}, Adam {args.learning_rate:g}, τ={args.temperature:g}, "
        f"1024 shared catalogue negatives, refresh every {args.refresh_every} steps"
    )
    print(f"\n{args.data.name}, seeds {args.seeds}; {settings}\n{table(rows)}")
    plot(rows, args.plot or RESULTS_DIR / f"keras_rs_two_tower_{args.data.stem}.png", f"{args.data.name}: {settings}")
    if args.json is not None:
        write_json(args.json, rows, args.data.name, settings, {k: v for k, v in vars(args).items() if k != "json"})
    return rows


if __name__ == "__main__":
    main()

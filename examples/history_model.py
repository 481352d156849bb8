"""A history model over a real catalogue, trained through `model.compile` / `fit` with the loss layer:
the softmax over every item that sampled softmax exists for (YouTube-DNN-style candidate generation,
Covington et al., RecSys 2016).

    python examples/history_model.py                           # gowalla.txt from $TFAS_DATA_DIR, one seed
    python examples/history_model.py --data amazon-book.txt --seeds 0,1,2 --json rows.json
    python examples/history_model.py --quick                   # a slice of Gowalla, under a minute
    python examples/history_model.py --only MIDX               # rows whose name contains "MIDX"

The query is computed from the user's other training items: the mean of their input embeddings (at
most `--history` of them, a fixed random subset for longer histories; `--mlp` adds a small MLP).
The output layer, `AdaptiveSampledSoftmaxLoss`, scores the whole catalogue with the input item
table (`--tied`, the default; `--no-tied`: a table of its own) and a bias. Each training example
predicts one of the user's training items from the others (the target never in its own history);
evaluation predicts the held-out item from all the user's training items. Data, split and metrics
as `examples/tfrs_two_tower.py` (`catalogues.py`: users with < 2 items dropped, a random test item
per user and seed, a validation item for early stopping, Recall@20 / NDCG@20 over the full
catalogue with the user's known items excluded).

Rows, all with the same model, optimizer (Adam), batches, seeds and early stopping (`kind` in
`--json`): the full softmax (`full-softmax`); `tf.nn.sampled_softmax_loss` as users call it
(log-uniform, negatives shared by the batch, `tf-sampled`); Uniform, LogUniform and Unigram
(count^0.75) per query (`static`); MIDX per query and shared, and QuadraticKernel shared
(`adaptive`), refreshed by `CodebookRefresh`. Two diagnostic rows split the gap to the full
softmax into the proposal's share and sampling's own, trained only when `--only` names them
(`--only "q = p|m = 256"`): the exact proposal q = p (`samplers.Softmax`, O(N) a query) at the
same m, and MIDX with m = 256. `--save-state` writes the trained model for `benchmarks.proposal`.
Results and conclusions: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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

import tf_adaptive_softmax as tfas
from tf_adaptive_softmax import _experiments as experiments

K = tf.keras


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    kind: str
    sampler: Optional[str] = None  # a key of experiments.SAMPLERS; None: full softmax or TF's loss
    shared: bool = False
    num_samples: Optional[int] = None  # None: --num-samples (--shared-samples when shared)
    diagnostic: bool = False  # trained only when an --only text names it and no regular row


#: Where the gap to the full softmax comes from: the proposal (MIDX against the exact q = p at the
#: same m) or sampling itself (q = p against the full softmax; more negatives).
DIAGNOSTIC_ROWS = [
    Row("Exact proposal q = p (oracle, O(N) a query)", "adaptive", "softmax", diagnostic=True),
    Row("MIDX, m = 256", "adaptive", "midx_rvq", num_samples=256, diagnostic=True),
]


ROWS = [
    Row("Full softmax", "full-softmax"),
    Row("tf.nn.sampled_softmax_loss (log-uniform, shared)", "tf-sampled", shared=True),
    Row("Uniform", "static", "uniform"),
    Row("LogUniform", "static", "log_uniform"),
    Row("Unigram (count^0.75)", "static", "unigram"),
    Row("MIDX", "adaptive", "midx_rvq"),
    Row("MIDX, shared", "adaptive", "midx_rvq", shared=True),
    Row("QuadraticKernel, shared", "adaptive", "quadratic_kernel", shared=True),
    *DIAGNOSTIC_ROWS,
]
RECOMMENDED = "MIDX"
QUICK_ROWS = ("Full softmax", "tf.nn.sampled_softmax_loss (log-uniform, shared)", "MIDX")  # --quick, no --only


def histories(users: np.ndarray, split: Split, length: int, seed: int, leave_out: Optional[np.ndarray] = None):
    """[len(users), length] int32 item ids (-1 pads) of each user's training items, `leave_out[i]`
    (the example's own target) removed; at most `length` of them, a fixed random subset."""
    rng = np.random.default_rng(seed + 12345)
    order = np.argsort(split.train[0], kind="stable")
    offsets = np.searchsorted(split.train[0][order], np.arange(split.num_users + 1))
    items = split.train[1][order]
    out = np.full((len(users), length), -1, np.int32)
    for row, user in enumerate(users):
        own = items[offsets[user] : offsets[user + 1]]
        if leave_out is not None:
            own = own[own != leave_out[row]]
        if len(own) > length:
            own = rng.choice(own, length, replace=False)
        out[row, : len(own)] = own
    return out


class MeanOfItems(K.layers.Layer):
    """Mean of the item embeddings of the ids >= 0 in each row (zeros for an empty history).

    Args:
      items: the item Embedding layer (shared with the output layer when tied).
    """

    def __init__(self, items, **kwargs):
        super().__init__(**kwargs)
        self.items = items

    def call(self, ids):
        mask = tf.cast(ids >= 0, tf.float32)[..., tf.newaxis]
        embedded = self.items(tf.maximum(ids, 0)) * mask
        return tf.reduce_sum(embedded, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def build_query_model(num_items: int, length: int, dim: int, mlp: bool = False):
    """(query model: history ids [B, length] -> query [B, dim], its item Embedding layer)."""
    ids = K.Input((length,), dtype="int32", name="history")
    items = K.layers.Embedding(num_items, dim, name="items")
    query = MeanOfItems(items)(ids)
    if mlp:
        query = K.layers.Dense(dim, name="query")(K.layers.Dense(2 * dim, activation="relu")(query))
    return K.Model(ids, query, name="history_model"), items


def make_output(row: Row, num_items: int, counts: np.ndarray, args, tied) -> tfas.AdaptiveSampledSoftmaxLoss:
    """The output layer of one row; `tied`: the item Embedding whose table it shares (or None)."""
    if row.kind == "tf-sampled":
        return experiments.TFSampledSoftmax(num_items, args.shared_samples, tied_embedding=tied, name="output")
    sampler = None if row.sampler is None else experiments.make_sampler(row.sampler, num_items, counts)
    return tfas.AdaptiveSampledSoftmaxLoss(
        num_items,
        sampler,
        num_samples=row.num_samples or (args.shared_samples if row.shared else args.num_samples),
        shared_negatives=row.shared,
        tied_embedding=tied,
        name="output",
    )


def names_only_diagnostic_rows(row: Row, only: str) -> bool:
    """True when one of `only`'s texts matches `row` and no regular row: `--only MIDX` trains the
    MIDX rows of the table, `--only "q = p|m = 256"` the diagnostic ones."""
    regular = [other.name for other in ROWS if not other.diagnostic]
    texts = [text.strip() for text in (only or "").split("|")]
    return any(text in row.name and not any(text in name for name in regular) for text in texts)


def train_row(row: Row, split: Split, data, evaluation, args, seed: int) -> dict:
    """Trains one row with one seed: `Progress.result()` (best-validation test metrics, curve)."""
    (x, y), query_inputs = data
    K.utils.set_random_seed(seed)
    counts = np.bincount(split.train[1], minlength=split.num_items)
    query_model, items = build_query_model(split.num_items, args.history, args.dim, args.mlp)
    output = make_output(row, split.num_items, counts, args, items if args.tied else None)
    query_model.compile(
        optimizer=K.optimizers.Adam(args.learning_rate), loss=tfas.SampledSoftmaxLoss(output, model=query_model)
    )

    def vectors():
        # Logits h·w + b as one dot product: [h, 1]·[w, b].
        queries = query_model.predict(query_inputs, batch_size=4096, verbose=0)
        weights = output.class_embeddings.numpy()
        bias = np.zeros(len(weights), np.float32) if output.class_bias is None else output.class_bias.numpy()
        return np.c_[queries, np.ones(len(queries), np.float32)], np.c_[weights, bias]

    progress = Progress(vectors, *evaluation, args.patience, f"{row.name} (seed {seed})", args.verbose)
    callbacks = [progress]
    if row.sampler is not None:
        callbacks.append(tfas.CodebookRefresh(output, every_n_steps=args.refresh_every))
    query_model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0, shuffle=True, callbacks=callbacks)
    result = progress.result()
    if args.diagnostics and isinstance(getattr(output, "sampler", None), tfas.samplers.Sampler):
        result["proposal"] = proposal_on_test_queries(query_model, output, query_inputs, split, args, seed)
    if args.save_state is not None:
        save_state(args.save_state, query_model, output, query_inputs, split, counts, seed)
    return result


def save_state(
    path, query_model, output, query_inputs, split: Split, counts: np.ndarray, seed: int, probes: int = 4096
) -> None:
    """The trained model's output layer and queries, for `python -m benchmarks.proposal --state`:
    item table and bias, training counts, and two disjoint sets of test users' queries with their
    held-out items (`fit_*` for what a proposal may estimate from queries, `eval_*` to measure on)."""
    users = np.random.default_rng(seed).permutation(len(split.test[0]))[: 2 * probes]
    queries = query_model.predict(query_inputs[split.test[0][users]], batch_size=4096, verbose=0)
    bias = output.class_bias
    np.savez_compressed(
        path,
        class_embeddings=output.class_embeddings.numpy(),
        class_bias=np.zeros(split.num_items, np.float32) if bias is None else bias.numpy(),
        counts=counts,
        fit_queries=queries[len(users) // 2 :],
        eval_queries=queries[: len(users) // 2],
        eval_labels=split.test[1][users[: len(users) // 2]],
    )
    print(f"model state written to {path}", flush=True)


def proposal_on_test_queries(query_model, output, query_inputs, split: Split, args, seed: int) -> Dict[str, float]:
    """`proposal_diagnostics` of the trained row's proposal (refreshed on the final table) against
    the model's softmax, on 512 test users' queries (64 with `--quick`), and Uniform's KL(p‖q) on
    the same queries."""
    probes, repeats = (64, 4) if args.quick else (512, 32)
    users = np.random.default_rng(seed).choice(len(split.test[0]), min(probes, len(split.test[0])), replace=False)
    queries = query_model.predict(query_inputs[split.test[0][users]], batch_size=512, verbose=0)
    labels, table, bias = split.test[1][users], output.class_embeddings, output.class_bias
    output.refresh_sampler()
    measured = tfas.diagnostics.proposal_diagnostics(
        queries, labels, table, bias, output.sampler, args.num_samples, repeats=repeats
    )
    uniform = tfas.samplers.Uniform(split.num_items)
    measured["uniform_kl_p_q"] = tfas.diagnostics.proposal_diagnostics(
        queries, labels, table, bias, uniform, args.num_samples, repeats=1
    )["kl_p_q"]
    return measured


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_arguments(parser, patience=3)
    parser.add_argument("--history", type=int, default=50, help="at most this many history items per query")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument(
        "--tied", action=argparse.BooleanOptionalAction, default=True, help="output layer shares the item table"
    )
    parser.add_argument("--mlp", action=argparse.BooleanOptionalAction, default=False, help="an MLP after the mean")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--num-samples", type=int, default=64, help="m negatives per query")
    parser.add_argument("--shared-samples", type=int, default=1024, help="m negatives shared by a batch")
    parser.add_argument("--refresh-every", type=int, default=100, help="adaptive refresh every n steps")
    parser.add_argument(
        "--diagnostics",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="after training, the sampled rows' proposal_diagnostics (KL(p‖q), ESS) on test queries",
    )
    parser.add_argument(
        "--save-state",
        type=pathlib.Path,
        default=None,
        help="write the last trained row's output layer and test queries (.npz) for benchmarks.proposal",
    )
    add_report_arguments(parser)
    args = finish_arguments(parser.parse_args(argv))
    if not args.data.exists():
        parser.error(f"{args.data} does not exist: pass --data PATH (or set TFAS_DATA_DIR).")
    return args


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    catalogue = first_users(read_catalogue(args.data), args.max_users)
    chosen = choose_rows(ROWS, args.only, QUICK_ROWS if args.quick else None)
    chosen = [row for row in chosen if not row.diagnostic or names_only_diagnostic_rows(row, args.only)]
    runs: Dict[str, List[dict]] = {row.name: [] for row in chosen}
    popularity: List[dict] = []
    for seed in args.seeds:
        split = holdout_split(catalogue, seed, args.validation_users)
        print(describe(catalogue, split, seed), flush=True)
        x = histories(split.train[0], split, args.history, seed, leave_out=split.train[1])
        data = ((x, split.train[1]), histories(np.arange(split.num_users), split, args.history, seed))
        validation_and_test = rankings(split)
        popularity.append(validation_and_test[1].metrics_of_scores(popularity_scorer(split)))
        for row in chosen:
            runs[row.name].append(train_row(row, split, data, validation_and_test, args, seed))
            report_run(row.name, seed, runs[row.name][-1])
    rows = [reference_row("Popularity", "popularity", popularity, args.seeds)]
    rows += [summarize(row.name, row.kind, runs[row.name], args.seeds, row.name == RECOMMENDED) for row in chosen]
    add_time_to_quality(rows)
    settings = (
        f"d={args.dim}, history {args.history}, batch {args.batch_size}, Adam {args.learning_rate:g}, "
        f"m={args.num_samples} per query / {args.shared_samples} shared, refresh every {args.refresh_every} steps"
    )
    print(f"\n{args.data.name}, seeds {args.seeds}; {settings}\n{table(rows)}")
    plot(rows, args.plot or RESULTS_DIR / f"history_model_{args.data.stem}.png", f"{args.data.name}: {settings}")
    if args.json is not None:
        write_json(args.json, rows, args.data.name, settings, {k: v for k, v in vars(args).items() if k != "json"})
    return rows


if __name__ == "__main__":
    main()

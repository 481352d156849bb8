"""SASRec-style next-item recommender trained by sampled softmax over the whole catalogue.

    python examples/sequential_recommender.py     # MovieLens 100K ($TFAS_DATA_DIR/ml-100k.inter) when present
    python examples/sequential_recommender.py --quick         # about a minute
    python examples/sequential_recommender.py --sampler full  # the full-softmax baseline
    python examples/sequential_recommender.py --data interactions.csv   # user,item,timestamp (header optional)

Each user's items are sorted by timestamp; the last one is the test target, the one before it
the validation target (leave-last-out). Training examples are every earlier position: the up to
`--max-len` previous items predict the next one. The query tower is a small causal self-attention
encoder over item and position embeddings (SASRec, Kang & McAuley 2018); its last position is the
query. It compiles with `model.compile(loss=tfas.SampledSoftmaxLoss(output, model=model))`, the
Keras entry point for models whose output is the query. Recall@10 and NDCG@10 rank the held-out
item against the full catalogue with exact logits, the user's earlier items excluded (RecBole's
full-sort protocol).

Without the data file, synthetic sessions from a teacher model stand in.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from common import (
    DATA_DIR,
    add_training_arguments,
    exact_logits,
    export_serving,
    finish,
    load_interactions,
    make_output_layer,
    ranking_metrics,
    user_sequences,
)

import tf_adaptive_softmax as tfas
from tf_adaptive_softmax._experiments import EpochTimer

K = tf.keras
DEFAULT_DATA = DATA_DIR / "ml-100k.inter"


def synthetic_sessions(num_users: int = 600, num_items: int = 800, length: int = 40, seed: int = 0):
    """(users, items, timestamps): each next item follows a Markov teacher over clustered items."""
    teacher = tfas.datasets.make_teacher(num_items, 16, seed=seed)
    embeddings = teacher.class_embeddings
    logits = embeddings @ embeddings.T + teacher.class_bias
    cumulative = np.cumsum(np.exp(logits - logits.max(axis=1, keepdims=True)), axis=1)
    rng = np.random.default_rng(seed)
    users, items = [], []
    for user in range(num_users):
        item = int(rng.integers(num_items))
        for _ in range(length):
            users.append(user)
            items.append(item)
            row = cumulative[item]
            item = min(int(np.searchsorted(row, rng.random() * row[-1])), num_items - 1)
    return np.array(users, np.int32), np.array(items, np.int32), np.arange(len(users))


def histories(sequence: np.ndarray, end: int, max_len: int) -> np.ndarray:
    """The up to `max_len` items before position `end`, as ids + 1, left-padded with 0."""
    window = sequence[max(0, end - max_len) : end] + 1
    return np.pad(window, (max_len - len(window), 0))


def make_split(sequences, max_len: int):
    """Training (history, next item) pairs and per-user validation / test (history, target)."""
    train_x, train_y, valid, test = [], [], [], []
    for user, sequence in sequences.items():
        if len(sequence) < 3:
            continue
        for end in range(1, len(sequence) - 2):
            train_x.append(histories(sequence, end, max_len))
            train_y.append(sequence[end])
        valid.append((user, histories(sequence, len(sequence) - 2, max_len), sequence[-2]))
        test.append((user, histories(sequence, len(sequence) - 1, max_len), sequence[-1]))

    def stack(rows):
        return np.array([r[0] for r in rows]), np.stack([r[1] for r in rows]), np.array([r[2] for r in rows])

    return (np.stack(train_x), np.array(train_y, np.int32)), stack(valid), stack(test)


def build_query_model(num_items: int, max_len: int, dim: int, blocks: int = 2) -> K.Model:
    """Item history [B, L] (ids + 1, 0 = padding) -> query [B, d] from a causal attention encoder."""
    history = K.Input((max_len,), dtype="int32", name="history")
    items = K.layers.Embedding(num_items + 1, dim, name="item_embedding")(history)
    positions = K.layers.Embedding(max_len, dim, name="positions")(tf.range(max_len)[tf.newaxis])
    hidden = K.layers.Dropout(0.2)(K.layers.Add()([items, positions]))
    for block in range(blocks):
        attended = K.layers.MultiHeadAttention(2, dim // 2, dropout=0.2, name=f"attention_{block}")(
            hidden, hidden, use_causal_mask=True
        )
        hidden = K.layers.LayerNormalization(name=f"norm_a{block}")(K.layers.Add()([hidden, attended]))
        feed = K.layers.Dense(dim, activation="relu", name=f"ffn_in{block}")(hidden)
        feed = K.layers.Dropout(0.2)(K.layers.Dense(dim, name=f"ffn_out{block}")(feed))
        hidden = K.layers.LayerNormalization(name=f"norm_f{block}")(K.layers.Add()([hidden, feed]))
    query = K.layers.Lambda(lambda x: x[:, -1], name="last_position")(hidden)
    return K.Model(history, query, name="sasrec_query")


def evaluate(query_model, output, split, seen) -> dict:
    users, history, targets = split
    scores = exact_logits(query_model, output, history, batch_size=512)
    exclude = seen[users].copy()
    exclude[np.arange(len(targets)), targets] = False  # a re-consumed item still counts
    recall, ndcg = ranking_metrics(scores, targets, exclude=exclude)
    return {"recall_at_10": recall, "ndcg_at_10": ndcg}


class RankingHistory(K.callbacks.Callback):
    """Validation Recall@10 / NDCG@10 after every epoch (exact logits), into the epoch logs."""

    def __init__(self, query_model, output, split, seen):
        super().__init__()
        self.args = (query_model, output, split, seen)
        self.recall: List[float] = []

    def on_epoch_end(self, epoch, logs=None):
        metrics = evaluate(*self.args)
        self.recall.append(metrics["recall_at_10"])
        if logs is not None:
            logs.update({f"val_{key}": value for key, value in metrics.items()})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    add_training_arguments(parser, num_samples=64, epochs=10)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.max_len, args.dim = 2, 20, 32
    K.utils.set_random_seed(args.seed)
    if args.data.exists():
        source, (users, items, timestamps) = f"{args.data.name}", load_interactions(args.data)
    else:
        source, (users, items, timestamps) = "synthetic sessions (no data file found)", synthetic_sessions()
    num_users, num_items = int(users.max()) + 1, int(items.max()) + 1
    sequences = user_sequences(users, items, timestamps)
    train, valid, test = make_split(sequences, args.max_len)
    seen = np.zeros((num_users, num_items), bool)
    for user, sequence in sequences.items():
        seen[user, sequence[:-1]] = True
    print(
        f"{source}: {num_users} users, {num_items} items, {len(train[1])} training positions; "
        f"d={args.dim}, L={args.max_len}, sampler={args.sampler}, m={args.num_samples}",
        flush=True,
    )

    counts = np.bincount(train[1], minlength=num_items)
    query_model = build_query_model(num_items, args.max_len, args.dim)
    output = make_output_layer(args, num_items, counts, name="output")
    query_model.compile(
        optimizer=K.optimizers.Adam(args.learning_rate), loss=tfas.SampledSoftmaxLoss(output, model=query_model)
    )
    ranking = RankingHistory(query_model, output, valid, seen)
    timer = EpochTimer()  # before the ranking callback: times training only
    history = query_model.fit(
        train[0],
        train[1],
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=args.verbose,
        shuffle=True,
        callbacks=[tfas.CodebookRefresh(output, every_n_steps=args.refresh_every), timer, ranking],
    )
    metrics = {**evaluate(query_model, output, test, seen), "seconds_per_epoch": float(np.median(timer.durations))}
    if args.export is not None:
        export_serving(
            args.export, query_model, output, [tf.TensorSpec([None, args.max_len], tf.int32, name="history")]
        )
    curves = {"training loss (sampled)": history.history["loss"], "validation Recall@10": ranking.recall}
    return finish(
        "sequential_recommender",
        args,
        metrics,
        curves,
        f"SASRec, {args.sampler} m={args.num_samples}: test Recall@10 {metrics['recall_at_10']:.3f}",
    )


if __name__ == "__main__":
    main(sys.argv[1:])

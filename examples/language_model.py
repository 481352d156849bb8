"""Word-level language model with tied input/output embeddings, trained by sampled softmax.

    python examples/language_model.py          # PTB subset ($TFAS_DATA_DIR/ptb_subset.train.txt) when present
    python examples/language_model.py --quick              # about a minute
    python examples/language_model.py --arch transformer   # a small causal Transformer instead of an LSTM
    python examples/language_model.py --sampler full       # the full-softmax baseline
    python examples/language_model.py --data corpus.txt    # any text, one sentence a line

The vocabulary is built from the training text (plus `<eos>` at each line end and `<unk>`), ids
sorted by frequency (so `log_uniform` is the Zipf prior TF's sampler assumes). The model reads
windows of `--seq-len` tokens; the output layer `AdaptiveSampledSoftmaxLoss` is tied to the input
`Embedding`, takes the [batch, time, d] hidden states and the [batch, time] next tokens, and trains
with `--num-samples` negatives per position from `--sampler` (MIDX by default, refreshed every
`--refresh-every` steps). `evaluate` runs the exact full softmax, so the reported test perplexity is
exp(mean cross-entropy over every test token) whatever the training loss.

Without `--data` and without the PTB files, a synthetic corpus (a random bigram language over a
Zipfian vocabulary) stands in.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import sys
from typing import List, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from common import DATA_DIR, add_training_arguments, export_serving, finish, make_output_layer

import tf_adaptive_softmax as tfas
from tf_adaptive_softmax._experiments import EpochTimer

K = tf.keras
DEFAULT_DATA = DATA_DIR / "ptb_subset.train.txt"


def synthetic_corpus(num_lines: int = 4000, vocab_size: int = 1000, seed: int = 0) -> List[str]:
    """Lines from a random bigram language: next-word logits are 3·⟨e_w, e_v⟩ + a Zipf bias."""
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((vocab_size, 16)) / 4.0
    logits = 3.0 * embeddings @ embeddings.T - np.log(np.arange(1, vocab_size + 1))
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    cumulative = np.cumsum(probabilities / probabilities.sum(axis=1, keepdims=True), axis=1)
    lines = []
    for _ in range(num_lines):
        word, words = int(rng.integers(vocab_size)), []
        for _ in range(int(rng.integers(6, 20))):
            words.append(f"w{word}")
            word = min(int(np.searchsorted(cumulative[word], rng.random())), vocab_size - 1)
        lines.append(" ".join(words))
    return lines


def read_lines(path: pathlib.Path) -> List[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_corpus(
    data: pathlib.Path | None, synthetic: bool = False, synthetic_lines: int = 4000, synthetic_vocab: int = 1000
):
    """(train lines, test lines, description). A `.train.txt` file pairs with its `.test.txt`;
    any other file is split 90/10 by lines. Without a file (or with `synthetic`), a synthetic
    bigram corpus of `synthetic_lines` lines over `synthetic_vocab` words."""
    data = None if synthetic else data or (DEFAULT_DATA if DEFAULT_DATA.exists() else None)
    if data is None:
        lines = synthetic_corpus(synthetic_lines, synthetic_vocab)
        split = int(0.9 * len(lines))
        return lines[:split], lines[split:], "synthetic bigram corpus"
    lines = read_lines(data)
    test_path = pathlib.Path(str(data).replace(".train.", ".test."))
    if test_path != data and test_path.exists():
        return lines, read_lines(test_path), f"{data.name} / {test_path.name}"
    split = int(0.9 * len(lines))
    return lines[:split], lines[split:], f"{data.name} (90/10 line split)"


class Vocabulary:
    """Words -> ids by descending training frequency; `<unk>` for words unseen in training."""

    def __init__(self, lines: Sequence[str]):
        counts = collections.Counter(word for line in lines for word in line.split() + ["<eos>"])
        counts.setdefault("<unk>", 0)
        self.words = [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
        self.ids = {word: index for index, word in enumerate(self.words)}
        self.counts = np.array([counts[word] for word in self.words], np.float64)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, lines: Sequence[str]) -> np.ndarray:
        unk = self.ids["<unk>"]
        return np.array([self.ids.get(word, unk) for line in lines for word in line.split() + ["<eos>"]], np.int32)


def windows(stream: np.ndarray, seq_len: int):
    """Non-overlapping (inputs [n, T], next tokens [n, T]) windows of a token stream."""
    count = (len(stream) - 1) // seq_len
    inputs = stream[: count * seq_len].reshape(count, seq_len)
    targets = stream[1 : count * seq_len + 1].reshape(count, seq_len)
    return inputs, targets


def build_model(args, vocab_size: int, counts: np.ndarray):
    """(training model on [tokens, next tokens] -> per-token loss, query model tokens -> hidden,
    output layer). The output layer is tied to the input embedding."""
    seq_len, dim, arch = args.seq_len, args.dim, args.arch
    tokens = K.Input((seq_len,), dtype="int32", name="tokens")
    next_tokens = K.Input((seq_len,), dtype="int32", name="next_tokens")
    embedding = K.layers.Embedding(vocab_size, dim, name="embedding")
    hidden = embedding(tokens)
    if arch == "lstm":
        hidden = K.layers.LSTM(dim, return_sequences=True, name="lstm")(hidden)
    else:
        positions = K.layers.Embedding(seq_len, dim, name="positions")(tf.range(seq_len)[tf.newaxis])
        hidden = K.layers.Add()([hidden, positions])
        for block in range(2):
            attended = K.layers.MultiHeadAttention(4, dim // 4, name=f"attention_{block}")(
                hidden, hidden, use_causal_mask=True
            )
            hidden = K.layers.LayerNormalization(name=f"norm_a{block}")(K.layers.Add()([hidden, attended]))
            feed = K.layers.Dense(2 * dim, activation="relu", name=f"ffn_in{block}")(hidden)
            feed = K.layers.Dense(dim, name=f"ffn_out{block}")(feed)
            hidden = K.layers.LayerNormalization(name=f"norm_f{block}")(K.layers.Add()([hidden, feed]))
    output = make_output_layer(
        args, vocab_size, counts, tied_embedding=embedding, add_to_model_loss=True, name="output"
    )
    per_token_loss = output((hidden, next_tokens))
    return K.Model([tokens, next_tokens], per_token_loss), K.Model(tokens, hidden), output


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, default=None)
    parser.add_argument("--synthetic", action="store_true", help="train on the synthetic corpus, whatever the data")
    parser.add_argument("--synthetic-lines", type=int, default=4000, help="lines of the synthetic corpus")
    parser.add_argument("--synthetic-vocab", type=int, default=1000, help="words of the synthetic corpus")
    parser.add_argument("--arch", choices=["lstm", "transformer"], default="lstm")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=35)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    add_training_arguments(parser, num_samples=64, epochs=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.dim = 2, 64
    K.utils.set_random_seed(args.seed)
    train_lines, test_lines, source = load_corpus(args.data, args.synthetic, args.synthetic_lines, args.synthetic_vocab)
    if args.quick:
        train_lines, test_lines = train_lines[:3000], test_lines[:600]
    vocab = Vocabulary(train_lines)
    train = windows(vocab.encode(train_lines), args.seq_len)
    test = windows(vocab.encode(test_lines), args.seq_len)
    print(
        f"{source}: vocabulary {len(vocab)}, {train[0].size} train / {test[0].size} test tokens; "
        f"{args.arch}, d={args.dim}, sampler={args.sampler}, m={args.num_samples}",
        flush=True,
    )

    model, query_model, output = build_model(args, len(vocab), vocab.counts)
    model.compile(optimizer=K.optimizers.Adam(args.learning_rate, clipnorm=1.0))
    timer = EpochTimer()
    refresh = tfas.CodebookRefresh(output, every_n_steps=args.refresh_every)
    history = model.fit(
        list(train),
        validation_data=(list(test),),
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=args.verbose,
        callbacks=[refresh, timer],
    )
    test_cross_entropy = float(model.evaluate(list(test), batch_size=256, verbose=0))
    metrics = {
        "test_perplexity": float(np.exp(test_cross_entropy)),
        "test_cross_entropy": test_cross_entropy,
        "seconds_per_epoch": float(np.median(timer.durations)),
        # What the refresh cost (benchmarks/staleness.py compares refresh intervals with these).
        "refresh_count": refresh.refresh_count,
        "refresh_seconds": refresh.refresh_seconds,
        "fit_seconds": float(sum(timer.durations)),  # per-epoch validation included
        "training_steps": int(tf.convert_to_tensor(model.optimizer.iterations).numpy()),
    }
    if args.export is not None:
        export_serving(args.export, query_model, output, [tf.TensorSpec([None, args.seq_len], tf.int32, name="tokens")])
    curves = {
        "training loss (sampled)": history.history["loss"],
        "validation perplexity (full softmax)": list(np.exp(history.history["val_loss"])),
    }
    return finish(
        "language_model",
        args,
        metrics,
        curves,
        f"{args.arch} LM, {args.sampler} m={args.num_samples}: test perplexity {metrics['test_perplexity']:.1f}",
    )


if __name__ == "__main__":
    main(sys.argv[1:])

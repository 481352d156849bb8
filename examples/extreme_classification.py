"""Extreme multi-label classification: sparse bag-of-features input, 10^5 labels, sampled softmax.

    python examples/extreme_classification.py                # 100,000 labels (a few minutes)
    python examples/extreme_classification.py --quick        # 20,000 labels, about a minute
    python examples/extreme_classification.py --sampler full # the full-softmax baseline

The data are synthetic and known: a latent topic vector z per example; its `--labels-per-example`
labels are drawn without replacement from a softmax teacher over `--num-labels` clustered label
embeddings (Zipfian label prior), its `--features-per-example` feature ids from a softmax over
`--num-features` feature embeddings. The model averages learned feature embeddings (a bag of
features), applies an MLP to get the query, and trains `AdaptiveSampledSoftmaxLoss` with all of
an example's labels as positives (`num_true`), each negative drawn by `--sampler`. Evaluation
ranks all labels with exact logits: precision@1, @3 and @5, as the extreme-classification
literature reports.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from common import (
    add_training_arguments,
    exact_logits,
    export_serving,
    finish,
    make_sampler,
    precision_at_k,
)

import tf_adaptive_softmax as tfas
from tf_adaptive_softmax._experiments import EpochTimer

K = tf.keras


def make_data(num_examples, num_labels, num_features, labels_per_example, features_per_example, seed=0):
    """(feature ids [n, F] int32, label ids [n, T] int32) from the latent-topic teacher."""
    teacher = tfas.datasets.make_teacher(num_labels, 32, seed=seed)
    rng = np.random.default_rng(seed + 1)
    feature_embeddings = tf.constant(rng.standard_normal((num_features, 32)).astype(np.float32))
    topics = rng.standard_normal((num_examples, 32)).astype(np.float32)
    label_embeddings, label_bias = tf.constant(teacher.class_embeddings), tf.constant(teacher.class_bias)
    features, labels = [], []
    chunk = max(1, 20_000_000 // num_labels)
    for index, start in enumerate(range(0, num_examples, chunk)):
        z = tf.constant(topics[start : start + chunk])
        label_logits = tf.matmul(z, label_embeddings, transpose_b=True) + label_bias
        # Gumbel top-k: `labels_per_example` distinct labels drawn without replacement.
        uniform = tf.random.stateless_uniform(tf.shape(label_logits), seed=[seed, 2 * index], minval=1e-20)
        labels.append(tf.math.top_k(label_logits - tf.math.log(-tf.math.log(uniform)), labels_per_example)[1])
        feature_logits = tf.matmul(z, feature_embeddings, transpose_b=True)
        features.append(
            tf.random.stateless_categorical(
                feature_logits, features_per_example, seed=[seed, 2 * index + 1], dtype=tf.int32
            )
        )
    return tf.concat(features, 0).numpy(), tf.concat(labels, 0).numpy().astype(np.int32)


def build_query_model(num_features: int, features_per_example: int, dim: int) -> K.Model:
    feature_ids = K.Input((features_per_example,), dtype="int32", name="feature_ids")
    bag = K.layers.GlobalAveragePooling1D()(K.layers.Embedding(num_features, dim, name="features")(feature_ids))
    hidden = K.layers.Dense(2 * dim, activation="relu")(bag)
    return K.Model(feature_ids, K.layers.Dense(dim, name="query")(hidden), name="bag_of_features")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-labels", type=int, default=100_000)
    parser.add_argument("--num-features", type=int, default=5_000)
    parser.add_argument("--train-examples", type=int, default=60_000)
    parser.add_argument("--test-examples", type=int, default=3_000)
    parser.add_argument("--labels-per-example", type=int, default=3)
    parser.add_argument("--features-per-example", type=int, default=24)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    add_training_arguments(parser, num_samples=100, epochs=4)
    args = parser.parse_args(argv)
    if args.quick:
        args.num_labels, args.train_examples, args.test_examples, args.epochs = 20_000, 20_000, 1_000, 4
    K.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    x, y = make_data(
        args.train_examples + args.test_examples,
        args.num_labels,
        args.num_features,
        args.labels_per_example,
        args.features_per_example,
        seed=args.seed,
    )
    (x_train, y_train), (x_test, y_test) = (
        (x[: args.train_examples], y[: args.train_examples]),
        (x[args.train_examples :], y[args.train_examples :]),
    )
    print(
        f"Synthetic extreme classification: {args.num_labels} labels, {args.num_features} features, "
        f"{args.train_examples} train / {args.test_examples} test examples ({time.perf_counter() - start:.0f} s "
        f"to generate); sampler={args.sampler}, m={args.num_samples}",
        flush=True,
    )

    counts = np.bincount(y_train.ravel(), minlength=args.num_labels)
    query_model = build_query_model(args.num_features, args.features_per_example, args.dim)
    output = tfas.AdaptiveSampledSoftmaxLoss(
        args.num_labels,
        make_sampler(args.sampler, args.num_labels, counts),
        num_samples=args.num_samples,
        logq_correction=args.logq_correction,
        shared_negatives=args.shared_negatives,
        name="output",
    )
    query_model.compile(
        optimizer=K.optimizers.Adam(args.learning_rate), loss=tfas.SampledSoftmaxLoss(output, model=query_model)
    )
    precision_curve, timer = [], EpochTimer()

    class Precision(K.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            value = precision_at_k(exact_logits(query_model, output, x_test), y_test, ks=(1,))["precision_at_1"]
            precision_curve.append(value)
            if logs is not None:
                logs["val_precision_at_1"] = value

    history = query_model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=args.verbose,
        shuffle=True,
        callbacks=[tfas.CodebookRefresh(output, every_n_steps=args.refresh_every), timer, Precision()],
    )
    metrics = {
        **precision_at_k(exact_logits(query_model, output, x_test), y_test),
        "seconds_per_epoch": float(np.median(timer.durations)),
    }
    if args.export is not None:
        export_serving(
            args.export,
            query_model,
            output,
            [tf.TensorSpec([None, args.features_per_example], tf.int32, name="feature_ids")],
        )
    curves = {"training loss (sampled)": history.history["loss"], "test precision@1": precision_curve}
    return finish(
        "extreme_classification",
        args,
        metrics,
        curves,
        f"{args.num_labels} labels, {args.sampler} m={args.num_samples}: P@1 {metrics['precision_at_1']:.3f}",
    )


if __name__ == "__main__":
    main(sys.argv[1:])

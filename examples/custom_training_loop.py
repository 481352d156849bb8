"""A custom training loop (`tf.GradientTape`) using a sampler and the estimator directly, for
training code that does not go through `Model.fit`.

    python examples/custom_training_loop.py            # N = 20,000 classes, a few minutes
    python examples/custom_training_loop.py --quick    # about a minute

The data come from a known softmax teacher (`tf_adaptive_softmax.datasets.make_teacher`). The
train step is one XLA-compiled function (`jit_compile=True`): draw negatives with
`sampler.sample`, compute `estimator.sampled_softmax_loss`, apply gradients. Every
`--refresh-every` steps `sampler.refresh(W, b)` rebuilds the adaptive state; because the state
lives in variables, the compiled step sees it without retracing. The sampler and the seed stream
go into the `tf.train.Checkpoint` with the weights, so a restored loop resumes the same draws.
Evaluation uses the exact full softmax.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from common import add_training_arguments, finish, make_sampler

import tf_adaptive_softmax as tfas

K = tf.keras


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-classes", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--train-examples", type=int, default=200_000)
    parser.add_argument("--test-examples", type=int, default=5_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--checkpoint", default=None, help="directory for a tf.train.Checkpoint after each epoch")
    add_training_arguments(parser, num_samples=32, epochs=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.num_classes, args.train_examples, args.epochs = 5_000, 50_000, 2
    K.utils.set_random_seed(args.seed)
    teacher = tfas.datasets.make_teacher(args.num_classes, args.dim, seed=args.seed)
    (x_train, y_train), (x_test, y_test) = tfas.datasets.train_test_split(
        teacher, args.train_examples, args.test_examples
    )
    print(
        f"Teacher: N={args.num_classes}, d={args.dim}, {args.train_examples} train examples; "
        f"sampler={args.sampler}, m={args.num_samples}; Bayes floor {teacher.cross_entropy(x_test, y_test):.3f}",
        flush=True,
    )

    query_tower = K.Sequential(
        [K.Input((args.dim,)), K.layers.Dense(2 * args.dim, activation="relu"), K.layers.Dense(args.dim)]
    )
    class_embeddings = tf.Variable(tf.random.uniform([args.num_classes, args.dim], -0.05, 0.05), name="W")
    class_bias = tf.Variable(tf.zeros([args.num_classes]), name="b")
    sampler = make_sampler(args.sampler, args.num_classes, np.bincount(y_train, minlength=args.num_classes))
    optimizer = K.optimizers.Adam(args.learning_rate)
    variables = query_tower.trainable_variables + [class_embeddings, class_bias]
    if sampler is not None:
        sampler.build_state(args.dim)
    checkpoint = tf.train.Checkpoint(
        tower=query_tower,
        W=class_embeddings,
        b=class_bias,
        optimizer=optimizer,
        **({"sampler": sampler} if sampler is not None else {}),
    )

    @tf.function(jit_compile=True)
    def train_step(features, labels):
        with tf.GradientTape() as tape:
            query = query_tower(features, training=True)
            if sampler is None:
                loss = tfas.estimator.full_softmax_loss(query, labels, class_embeddings, class_bias)
            else:
                sampled_ids, sampled_log_q = sampler.sample(query, args.num_samples)
                # The positive is corrected by its own log q too ("standard"; "negatives_only": eq. 3).
                true_log_q = sampler.log_prob(query, labels) if args.logq_correction == "standard" else None
                loss = tfas.estimator.sampled_softmax_loss(
                    query,
                    labels,
                    sampled_ids,
                    sampled_log_q,
                    class_embeddings,
                    class_bias,
                    true_log_q=true_log_q,
                    logq_correction=args.logq_correction,
                )
            loss = tf.reduce_mean(loss)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    refresh = tf.function(lambda: sampler.refresh(class_embeddings, class_bias)) if sampler is not None else None

    def test_cross_entropy() -> float:
        losses = [
            tfas.estimator.full_softmax_loss(
                query_tower(x_test[i : i + 1024]), y_test[i : i + 1024], class_embeddings, class_bias
            )
            for i in range(0, len(y_test), 1024)
        ]
        return float(tf.reduce_mean(tf.concat(losses, 0)))

    steps_per_epoch = len(y_train) // args.batch_size
    step, train_curve, test_curve, seconds = 0, [], [], []
    for epoch in range(args.epochs):
        print(f"Epoch {epoch + 1}/{args.epochs}")
        progress = K.utils.Progbar(steps_per_epoch, verbose=args.verbose)
        order = np.random.default_rng(args.seed + epoch).permutation(len(y_train))
        start, total = time.perf_counter(), 0.0
        for batch in range(steps_per_epoch):
            if refresh is not None and step % args.refresh_every == 0:
                refresh()
            rows = order[batch * args.batch_size : (batch + 1) * args.batch_size]
            loss = float(train_step(x_train[rows], y_train[rows]))
            total += loss
            step += 1
            progress.update(batch + 1, [("loss", loss)])
        seconds.append(time.perf_counter() - start)
        train_curve.append(total / steps_per_epoch)
        test_curve.append(test_cross_entropy())
        print(f"test cross-entropy (full softmax): {test_curve[-1]:.4f}", flush=True)
        if args.checkpoint:
            checkpoint.write(os.path.join(args.checkpoint, "ckpt"))
    metrics = {"test_cross_entropy": test_curve[-1], "seconds_per_epoch": float(np.median(seconds))}
    curves = {"training loss (sampled)": train_curve, "test cross-entropy (full softmax)": test_curve}
    return finish(
        "custom_training_loop",
        args,
        metrics,
        curves,
        f"custom loop, {args.sampler} m={args.num_samples}: test CE {metrics['test_cross_entropy']:.3f}",
    )


if __name__ == "__main__":
    main(sys.argv[1:])

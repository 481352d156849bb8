"""Parameter-server step time against one process (tf_keras; each configuration in a fresh process).

A model whose output layer holds N = 10^6 classes (d = 64) trains with `fit` for a few epochs of
`--steps` steps, B = 256, m = 128, in one process and on an in-process cluster on localhost (2
workers, 2 parameter servers, the class table and bias sharded by `FixedShardsPartitioner(2)`).
Methods: the full softmax (every step reads the whole table from the servers and sends a dense
[N, d] gradient back), `tf.nn.sampled_softmax_loss` as users call it (m log-uniform rows shared by
the batch, the sharded table passed as its list of row blocks), Uniform and MIDX per query (B·m
rows read), MIDX shared (m rows). The last
epoch's seconds per step are reported, with the bytes of class rows a step reads.

All processes of the cluster share this machine's cores, so the ratios show the cost of the RPC
round trips and of the table traffic, not the speed-up of more machines.

    TF_USE_LEGACY_KERAS=1 python -m benchmarks.parameter_server            # full table
    TF_USE_LEGACY_KERAS=1 python -m benchmarks.parameter_server --quick    # N = 10^5, fewer steps
    TF_USE_LEGACY_KERAS=1 python -m benchmarks.parameter_server --methods tf_sampled --tag tf_sampled
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks import timing

METHODS = ("full", "tf_sampled", "uniform", "midx", "midx_shared")
MODES = ("single", "parameter_server")


def _one_configuration(args) -> dict:
    import numpy as np
    import portpicker
    import tensorflow as tf

    import tf_adaptive_softmax as tfas

    K = tf.keras
    n, d, batch, m = args.num_classes, args.dim, args.batch, args.num_samples

    if args.mode == "parameter_server":
        spec = tf.train.ClusterSpec(
            {
                "worker": [f"localhost:{portpicker.pick_unused_port()}" for _ in range(2)],
                "ps": [f"localhost:{portpicker.pick_unused_port()}" for _ in range(2)],
            }
        )
        config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=3)
        for index in range(2):
            tf.distribute.Server(spec, job_name="worker", task_index=index, config=config, protocol="grpc")
            tf.distribute.Server(spec, job_name="ps", task_index=index, protocol="grpc")
        strategy = tf.distribute.ParameterServerStrategy(
            tf.distribute.cluster_resolver.SimpleClusterResolver(spec, rpc_layer="grpc"),
            variable_partitioner=tf.distribute.experimental.partitioners.FixedShardsPartitioner(2),
        )
    else:
        strategy = tf.distribute.get_strategy()

    with strategy.scope():
        sampler = {
            "full": None,
            "tf_sampled": None,
            "uniform": tfas.samplers.Uniform(n, seed=0),
            "midx": tfas.samplers.MIDX(n, seed=0),
            "midx_shared": tfas.samplers.MIDX(n, seed=0),
        }[args.method]
        if args.method == "tf_sampled":
            output = tfas._experiments.TFSampledSoftmax(n, num_samples=m)
        else:
            output = tfas.AdaptiveSampledSoftmaxLoss(
                n, sampler, num_samples=m, shared_negatives=args.method == "midx_shared"
            )
        features = K.Input((d,))
        model = K.Model(features, K.layers.Dense(d)(features))
        model.compile(optimizer=K.optimizers.Adagrad(0.1), loss=tfas.SampledSoftmaxLoss(output, model=model))
        output.build_for_dim(d)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * 8, d)).astype("float32")
    y = rng.integers(0, n, batch * 8).astype("int32")
    dataset = lambda context=None: tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch)  # noqa: E731
    data = dataset() if args.mode == "single" else K.utils.experimental.DatasetCreator(dataset)

    epoch_seconds = []

    class EpochTimer(K.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.start)

    # The sampler is refreshed once before training (an epoch refresh would add k-means to the step).
    output.refresh_sampler()
    model.fit(data, epochs=args.epochs, steps_per_epoch=args.steps, verbose=0, callbacks=[EpochTimer()])
    rows = {"full": n, "tf_sampled": m, "uniform": batch * m, "midx": batch * m, "midx_shared": m}[args.method]
    return {
        "mode": args.mode,
        "method": args.method,
        "step_ms": 1000 * epoch_seconds[-1] / args.steps,
        "rows_read_per_step": rows,
        "megabytes_read_per_step": rows * d * 4 / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-classes", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="N = 10^5, 8 steps, 2 epochs")
    parser.add_argument("--methods", default=",".join(METHODS), help="any of " + ", ".join(METHODS))
    parser.add_argument("--tag", default=None, help="names the results file parameter_server_TAG")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # a child process: one configuration
        print("RESULT " + json.dumps(_one_configuration(argparse.Namespace(**json.loads(args.worker)))))
        return
    if args.quick:
        args.num_classes, args.steps, args.epochs = 100_000, 8, 2

    sizes = {flag: getattr(args, flag) for flag in ("num_classes", "dim", "batch", "num_samples", "steps", "epochs")}
    rows = []
    for method in [m for m in args.methods.split(",") if m]:
        if method not in METHODS:
            raise SystemExit(f"Unknown method {method!r}; choose from {METHODS}.")
        for mode in MODES:
            row = timing.run_worker(
                "benchmarks.parameter_server", {"mode": mode, "method": method, **sizes}, timeout=1800
            )
            print(row, flush=True)
            rows.append(row)
    single = {row["method"]: row.get("step_ms") for row in rows if row["mode"] == "single"}
    lines = [
        f"Parameter servers vs one process: N = {args.num_classes:,}, d = {args.dim}, B = {args.batch}, "
        f"m = {args.num_samples}; {timing.machine()}; in-process cluster (2 workers, 2 PS) on the same cores.",
        "",
        "| method | MB of class rows read per step | one process ms/step | parameter servers ms/step | ratio |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if row["mode"] != "parameter_server" or "step_ms" not in row or single.get(row["method"]) is None:
            continue
        lines.append(
            f"| {row['method']} | {row['megabytes_read_per_step']:.2f} | {single[row['method']]:.1f} | "
            f"{row['step_ms']:.1f} | {row['step_ms'] / single[row['method']]:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    name = "parameter_server_quick" if args.quick else "parameter_server"
    name = f"parameter_server_{args.tag}" if args.tag else name
    timing.RESULTS.mkdir(exist_ok=True)
    (timing.RESULTS / f"{name}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    (timing.RESULTS / f"{name}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()

"""Draw speed of every sampler: sample() and sample_shared(), graph mode against XLA.

python -m benchmarks.draw_speed                   # N = 10^5 and 10^6 (about a minute on 2 cores)
python -m benchmarks.draw_speed --sizes 100000    # one size
python -m benchmarks.draw_speed --tag before      # names the results file draw_speed_before.md

B = 256 queries, m = 128 draws per query (per batch for sample_shared), d = 64, MIDX with K = 64.
Each call is timed as the median of repeated calls of a compiled function, graph mode and XLA
alternating per sampler, so every ratio is taken within one run. The XLA / graph column is the
goal "no slower than 1.1x" of the speed targets.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from benchmarks.timing import time_call, write_results
from tf_adaptive_softmax import samplers

BATCH, NUM_SAMPLES, DIM = 256, 128, 64


def _samplers(num_classes: int, counts: np.ndarray):
    return {
        "Uniform": samplers.Uniform(num_classes, seed=0),
        "LogUniform": samplers.LogUniform(num_classes, seed=0),
        "Unigram": samplers.Unigram(counts, power=0.75, seed=0),
        "MIDX pq": samplers.MIDX(num_classes, num_codewords=64, quantizer="pq", seed=0),
        "MIDX rvq": samplers.MIDX(num_classes, num_codewords=64, quantizer="rvq", seed=0),
        "QuadraticKernel": samplers.QuadraticKernel(num_classes, seed=0),
    }


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    queries = tf.constant(rng.standard_normal((BATCH, DIM)).astype(np.float32))
    rows = []
    for num_classes in [int(n) for n in args.sizes.split(",")]:
        embeddings = tf.constant(rng.standard_normal((num_classes, DIM)).astype(np.float32) / 8)
        counts = rng.zipf(1.3, num_classes).astype(np.float64)
        for name, sampler in _samplers(num_classes, counts).items():
            if sampler.adaptive:
                tf.function(lambda s=sampler: s.refresh(embeddings))()
            else:
                sampler.build_state(DIM)
            for method in ("sample", "sample_shared"):
                draw = getattr(sampler, method)
                times = {}
                for mode in ("graph", "xla"):
                    compiled = tf.function(lambda q, f=draw: f(q, NUM_SAMPLES), jit_compile=mode == "xla")
                    times[mode] = time_call(lambda c=compiled: c(queries), repeats=args.repeats, warmup=2)
                row = {
                    "N": num_classes,
                    "sampler": name,
                    "method": method,
                    "graph_ms": times["graph"]["median_s"] * 1e3,
                    "xla_ms": times["xla"]["median_s"] * 1e3,
                    "graph_spread_ms": [times["graph"]["min_s"] * 1e3, times["graph"]["max_s"] * 1e3],
                    "xla_spread_ms": [times["xla"]["min_s"] * 1e3, times["xla"]["max_s"] * 1e3],
                }
                row["xla_over_graph"] = row["xla_ms"] / row["graph_ms"]
                rows.append(row)
                print(
                    f"N={num_classes:,} {name} {method}: graph {row['graph_ms']:.2f} ms, XLA {row['xla_ms']:.2f} ms "
                    f"({row['xla_over_graph']:.2f}x)",
                    flush=True,
                )
    lines = [
        "| N | sampler | call | graph ms (min–max) | XLA ms (min–max) | XLA / graph |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for row in rows:
        g, x = row["graph_spread_ms"], row["xla_spread_ms"]
        lines.append(
            f"| {row['N']:,} | {row['sampler']} | {row['method']}() | {row['graph_ms']:.2f} ({g[0]:.2f}–{g[1]:.2f}) "
            f"| {row['xla_ms']:.2f} ({x[0]:.2f}–{x[1]:.2f}) | {row['xla_over_graph']:.2f} |"
        )
    header = f"Draw speed, B={BATCH}, m={NUM_SAMPLES}, d={DIM}, MIDX K=64. Command: `python -m benchmarks.draw_speed"
    header += "".join(f" {a}" for a in (argv or [])) + "`\n\n"
    write_results("draw_speed" + (f"_{args.tag}" if args.tag else ""), rows, header + "\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])

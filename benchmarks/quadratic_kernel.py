"""QuadraticKernel speed: sample() across N and d against the cost of full logits, refresh at 10^6.

    python benchmarks/quadratic_kernel.py            # N up to 10^6
    python benchmarks/quadratic_kernel.py --quick    # N up to 10^5, d=32
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

import tensorflow as tf  # noqa: E402

from timing import time_call, write_results  # noqa: E402
from tf_adaptive_softmax import samplers  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    dims = [32] if args.quick else [32, 64]
    batch, num_samples = 256, 128
    rows = []
    for dim in dims:
        queries = tf.random.normal([batch, dim])
        for n in sizes:
            embeddings = tf.random.normal([n, dim], stddev=dim ** -0.5)
            sampler = samplers.QuadraticKernel(n, alpha=100.0, seed=0)
            refresh = tf.function(lambda e: sampler.refresh(e))
            refresh_time = time_call(lambda: refresh(embeddings), repeats=1, warmup=1)
            sample = tf.function(lambda q: sampler.sample(q, num_samples))
            timing = time_call(lambda: sample(queries), repeats=7)
            logits = tf.function(lambda q: tf.matmul(q, embeddings, transpose_b=True))
            full = time_call(lambda: logits(queries), repeats=7)
            rows.append({"d": dim, "N": n, "leaf": sampler.leaf, **timing, "full_logits_s": full["median_s"],
                         "refresh_s": refresh_time["median_s"], "state_bytes": sampler.state_bytes()})
            print(f"d={dim} N={n}: sample {timing['median_s'] * 1e3:.1f} ms, full logits "
                  f"{full['median_s'] * 1e3:.1f} ms, refresh {refresh_time['median_s']:.2f}s", flush=True)
    lines = ["| d | N | leaf | sample() median ms (min–max) | growth vs N=10^4 | full logits ms | sample / full logits | refresh s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        base = next(r for r in rows if r["d"] == row["d"] and r["N"] == sizes[0])
        lines.append(
            f"| {row['d']} | {row['N']:,} | {row['leaf']} | {row['median_s'] * 1e3:.1f} "
            f"({row['min_s'] * 1e3:.1f}–{row['max_s'] * 1e3:.1f}) | {row['median_s'] / base['median_s']:.2f} | "
            f"{row['full_logits_s'] * 1e3:.1f} | {row['median_s'] / row['full_logits_s']:.2f} | {row['refresh_s']:.2f} |"
        )
    header = f"QuadraticKernel, B={batch}, m={num_samples}, graph mode; full logits = one [B, d] x [d, N] matmul.\n\n"
    write_results("quadratic_kernel" + ("_quick" if args.quick else ""), rows, header + "\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])

"""QuadraticKernel speed: sample() across N and d against the cost of full logits, refresh at 10^6.

python -m benchmarks.quadratic_kernel            # N up to 10^6
python -m benchmarks.quadratic_kernel --quick    # N up to 10^5, d=32
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

from benchmarks.timing import time_call, write_results
from tf_adaptive_softmax import samplers


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
            embeddings = tf.random.normal([n, dim], stddev=dim**-0.5)
            sampler = samplers.QuadraticKernel(n, alpha=100.0, seed=0)
            refresh = tf.function(lambda e: sampler.refresh(e))
            refresh_time = time_call(lambda: refresh(embeddings), repeats=1, warmup=1)
            timings = {}
            for mode, jit in (("graph", False), ("xla", True)):
                for key, fn in (
                    ("sample", lambda q: sampler.sample(q, num_samples)),
                    ("shared", lambda q: sampler.sample_shared(q, num_samples)),
                    ("logits", lambda q: tf.matmul(q, embeddings, transpose_b=True)),
                ):
                    compiled = tf.function(fn, jit_compile=jit)
                    timings[f"{key}_{mode}"] = time_call(lambda: compiled(queries))
            rows.append(
                {
                    "d": dim,
                    "N": n,
                    "leaf": sampler.leaf,
                    **timings,
                    "refresh_s": refresh_time["median_s"],
                    "state_bytes": sampler.state_bytes(),
                }
            )
            print(
                f"d={dim} N={n} leaf={sampler.leaf}: "
                + ", ".join(f"{key} {value['median_s'] * 1e3:.1f} ms" for key, value in timings.items())
                + f", refresh {refresh_time['median_s']:.2f}s",
                flush=True,
            )

    def ms(row, key):
        return row[key]["median_s"] * 1e3

    lines = [
        "| d | N | leaf | mode | sample() ms (min–max) | growth vs N=10^4 | full logits ms | "
        "sample / full logits | sample_shared() ms | refresh s |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = next(r for r in rows if r["d"] == row["d"] and r["N"] == sizes[0])
        for mode in ("graph", "xla"):
            sample = row[f"sample_{mode}"]
            lines.append(
                f"| {row['d']} | {row['N']:,} | {row['leaf']} | {mode} | {ms(row, f'sample_{mode}'):.1f} "
                f"({sample['min_s'] * 1e3:.1f}–{sample['max_s'] * 1e3:.1f}) | "
                f"{ms(row, f'sample_{mode}') / ms(base, f'sample_{mode}'):.2f} | {ms(row, f'logits_{mode}'):.1f} | "
                f"{ms(row, f'sample_{mode}') / ms(row, f'logits_{mode}'):.2f} | {ms(row, f'shared_{mode}'):.1f} | "
                f"{row['refresh_s']:.2f} |"
            )
    header = (
        f"QuadraticKernel, B={batch}, m={num_samples} (per query; `sample_shared`: m for the whole batch); "
        "full logits = one [B, d] x [d, N] matmul, in the same mode.\n\n"
    )
    write_results("quadratic_kernel" + ("_quick" if args.quick else ""), rows, header + "\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])

"""MIDX speed and memory: sample() across N (flat in N?), refresh() at N = 10^6, state bytes.

python -m benchmarks.midx            # N up to 10^6 (a few minutes on 2 cores)
python -m benchmarks.midx --quick    # N up to 10^5
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


def clustered_embeddings(n: int, d: int, seed: int = 0) -> tf.Tensor:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, d)).astype(np.float32)
    return tf.constant(centres[rng.integers(0, 256, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    batch, num_samples, dim = 256, 128, 64
    queries = tf.random.normal([batch, dim])
    rows = []
    for n in sizes:
        embeddings = clustered_embeddings(n, dim)
        for quantizer in ("pq", "rvq"):
            sampler = samplers.MIDX(n, num_codewords=64, quantizer=quantizer, seed=0)
            refresh = tf.function(lambda e: sampler.refresh(e))
            refresh_time = time_call(lambda: refresh(embeddings), repeats=1, warmup=1)
            print(f"N={n} {quantizer}: refresh (K=64) {refresh_time['median_s']:.2f}s", flush=True)
            for mode, jit in (("graph", False), ("xla", True)):
                sample = tf.function(lambda q: sampler.sample(q, num_samples), jit_compile=jit)
                timing = time_call(lambda: sample(queries), repeats=15)
                rows.append(
                    {
                        "N": n,
                        "quantizer": quantizer,
                        "mode": mode,
                        **timing,
                        "refresh_s": refresh_time["median_s"],
                        "state_bytes": sampler.state_bytes(),
                    }
                )
                print(f"  sample {mode}: {timing['median_s'] * 1e3:.2f} ms", flush=True)
    refresh_rows = []
    if not args.quick:
        embeddings = clustered_embeddings(1_000_000, dim)
        for k in (64, 256):
            sampler = samplers.MIDX(1_000_000, num_codewords=k, quantizer="rvq", seed=0)
            refresh = tf.function(lambda e: sampler.refresh(e))
            cold = time_call(lambda: refresh(embeddings), repeats=1, warmup=0)
            warm = time_call(lambda: refresh(embeddings), repeats=2, warmup=0)
            refresh_rows.append(
                {
                    "K": k,
                    "first_refresh_s": cold["median_s"],
                    "warm_refresh_s": warm["median_s"],
                    "state_bytes": sampler.state_bytes(),
                }
            )
            print(f"refresh N=1e6 K={k}: first {cold['median_s']:.1f}s, warm {warm['median_s']:.1f}s", flush=True)
    lines = [
        "| N | quantizer | mode | sample() median ms (min–max) | ratio to N=10^4 | state bytes / class |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for row in rows:
        base = next(
            r for r in rows if r["N"] == sizes[0] and r["quantizer"] == row["quantizer"] and r["mode"] == row["mode"]
        )
        lines.append(
            f"| {row['N']:,} | {row['quantizer']} | {row['mode']} | {row['median_s'] * 1e3:.2f} "
            f"({row['min_s'] * 1e3:.2f}–{row['max_s'] * 1e3:.2f}) | {row['median_s'] / base['median_s']:.2f} | "
            f"{row['state_bytes'] / row['N']:.1f} |"
        )
    if refresh_rows:
        lines += [
            "",
            "| refresh at N=10^6, d=64, rvq | first (k-means++ + 10 Lloyd) s | warm-started s | state MB |",
            "|---|---:|---:|---:|",
        ]
        for row in refresh_rows:
            lines.append(
                f"| K={row['K']} | {row['first_refresh_s']:.1f} | {row['warm_refresh_s']:.1f} | "
                f"{row['state_bytes'] / 2**20:.1f} |"
            )
    header = f"MIDX, B={batch}, m={num_samples}, d={dim}, K=64, graph mode vs XLA (jit_compile=True).\n\n"
    write_results("midx" + ("_quick" if args.quick else ""), rows + refresh_rows, header + "\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])

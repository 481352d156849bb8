"""Where a MIDX refresh's time goes, at N = 10^5, 10^6 and 10^7 classes.

    python -m benchmarks.refresh_parts                          # about 5 minutes on 2 cores
    python -m benchmarks.refresh_parts --sizes 100000,1000000   # a subset

One process; for each N a clustered class table (1,000 centres, d = 64, a tf.Variable), MIDX rvq
with K = 64 and the default 1024·K = 65,536-class k-means sample. Each part is timed on its own as
a graph function (median of 3 after a warm-up): drawing the training sample, one Lloyd iteration
on it, assigning all N classes to one codebook (chunked nearest centroid), sorting the classes into
buckets with their offsets and weights (the index). Then whole warm refreshes (the layer's path:
one compiled graph function) after the table drifted by 2% of its spread, with
`KMeansOptions(tolerance=0.0)` (all 10 Lloyd iterations, the previous default) and with the
default tolerance, and the Lloyd iterations such a warm start runs per codebook.
Results: `results/refresh_parts.{md,json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.timing import RESULTS, machine, time_call

NAME = "refresh_parts"
DIM, CODEWORDS, DRIFT = 64, 64, 0.02


def clustered_table(num_classes: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, DIM)).astype(np.float32)
    table = centres[rng.integers(0, 1000, num_classes)]
    # float32 noise, added in place: at 10^7 float64 temporaries exhausted 24 GB.
    table += 0.5 * rng.standard_normal(table.shape, dtype=np.float32)
    return table


def measure(num_classes: int) -> dict:
    import tensorflow as tf

    from tf_adaptive_softmax import _quantization as quantization
    from tf_adaptive_softmax import _refresh, samplers
    from tf_adaptive_softmax.samplers.midx._index import build_bucket_index

    table = tf.Variable(clustered_table(num_classes))
    seed = tf.constant([1, 2])
    sample_size = quantization.default_sample_size(CODEWORDS)
    sample = tf.function(lambda: quantization._training_sample(table, sample_size, seed))
    points = sample()
    centroids = quantization.random_rows(points, CODEWORDS, seed)
    codes = tf.function(lambda: quantization.nearest_centroid(table, centroids))
    codes1 = codes()
    codes2 = tf.random.stateless_uniform([num_classes], seed, 0, CODEWORDS, tf.int32)
    lloyd = tf.function(lambda: quantization._lloyd(points, centroids, 1, seed)[0])
    index = tf.function(lambda: build_bucket_index(codes1, codes2, tf.zeros([num_classes]), CODEWORDS, False).offsets)
    parts = {
        "sample_s": time_call(sample, repeats=3, warmup=1)["median_s"],
        "lloyd_iteration_s": time_call(lloyd, repeats=3, warmup=1)["median_s"],
        "assign_one_codebook_s": time_call(codes, repeats=3, warmup=1)["median_s"],
        "bucket_index_s": time_call(index, repeats=3, warmup=1)["median_s"],
    }
    drift = tf.random.Generator.from_seed(3)
    spread = float(tf.math.reduce_std(table))
    for label, tolerance in (("all_iterations", 0.0), ("default_tolerance", samplers.KMeansOptions().tolerance)):
        table.assign(clustered_table(num_classes))
        sampler = samplers.MIDX(
            num_classes, num_codewords=CODEWORDS, kmeans=samplers.KMeansOptions(tolerance=tolerance), seed=0
        )
        owner = _refresh.SamplerTarget(sampler, table)
        start = time.perf_counter()
        owner.refresh_sampler()
        parts[f"{label}_first_s"] = time.perf_counter() - start
        warm, ran = [], []
        for _ in range(3):
            start_codebook = sampler.codebooks[0]
            table.assign_add(DRIFT * spread * drift.normal(table.shape))
            start = time.perf_counter()
            owner.refresh_sampler()
            warm.append(time.perf_counter() - start)
            # Codebook 1's iterations from the same warm start, replayed on a sample of the same size
            # (the refresh's own count stays inside its graph).
            replay = quantization._training_sample(table, sample_size, seed)
            ran.append(int(quantization._lloyd(replay, start_codebook, 10, seed, tolerance)[1]))
        parts[f"{label}_warm_s"] = statistics.median(warm)
        parts[f"{label}_iterations"] = statistics.median(ran)
    return {"num_classes": num_classes, **parts}


def table_markdown(rows: list) -> str:
    lines = [
        "| N | sample | one Lloyd iteration | assign one codebook | bucket index | warm refresh, tolerance 0 "
        "(iterations) | warm refresh, default (iterations) | speed-up | first refresh |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['num_classes']:,} | {r['sample_s']:.3f} | {r['lloyd_iteration_s']:.3f} | "
            f"{r['assign_one_codebook_s']:.3f} | {r['bucket_index_s']:.3f} | {r['all_iterations_warm_s']:.3f} "
            f"({r['all_iterations_iterations']:g}) | {r['default_tolerance_warm_s']:.3f} "
            f"({r['default_tolerance_iterations']:g}) | "
            f"{r['all_iterations_warm_s'] / r['default_tolerance_warm_s']:.2f}x | "
            f"{r['default_tolerance_first_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="N values")
    parser.add_argument("--tag", default=None, help="suffix of the result files")
    args = parser.parse_args(argv)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows.append(measure(size))
        print(json.dumps(rows[-1]), flush=True)
    name = NAME + (f"_{args.tag}" if args.tag else "")
    markdown = (
        f"# Where a MIDX refresh's time goes\n\nMachine: {machine()}. Command: `python -m benchmarks.refresh_parts "
        f"--sizes {args.sizes}`. Seconds (median of 3); d = {DIM}, K = {CODEWORDS}, rvq, k-means sample "
        f"65,536; warm refreshes after a drift of {DRIFT:.0%} of the table's spread; iterations: Lloyd "
        "iterations of codebook 1's warm start (the cap is 10).\n\n" + table_markdown(rows) + "\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    (RESULTS / f"{name}.md").write_text(markdown)
    print("\n" + markdown)


if __name__ == "__main__":
    main()

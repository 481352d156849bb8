"""Per-query adaptive training steps against a per-query Uniform step, timed interleaved.

python benchmarks/step_ratio.py                          # N = 10^5 and 10^6, graph mode and XLA
python benchmarks/step_ratio.py --sizes 100000 --rounds 40 --tag quick

The steps are `run.py`'s (`make_train_step`: the output layer's forward, backward and SGD on the
rows touched; B = 256, m = 128, d = 64, MIDX K = 64). `run.py` times one method after another,
so drift of this VM over a minute (it has measured the same step at 1.8 and 6.7 s per epoch in
consecutive processes) lands in the ratios; here every round calls each step of a size and mode
once, in turn, and a ratio is the median over rounds of (step / the same round's Uniform step).
This is the measurement of the goal "a per-query MIDX step at most 1.25x a Uniform step".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

from run import make_train_step
from timing import write_results

BATCH, NUM_SAMPLES, DIM = 256, 128, 64
BASELINE = "uniform"


def _finish(result) -> None:
    getattr(result, "numpy", lambda: None)()


def measure(num_classes: int, jit: bool, methods: list, rounds: int, warmup: int = 3) -> list:
    """One row per method: median ms and the median of its per-round ratio to the Uniform step."""
    steps = {method: make_train_step(method, num_classes, DIM, BATCH, NUM_SAMPLES, jit=jit) for method in methods}
    for step in steps.values():
        for _ in range(warmup):
            _finish(step())
    seconds = {method: [] for method in methods}
    for _ in range(rounds):
        for method, step in steps.items():
            start = time.perf_counter()
            _finish(step())
            seconds[method].append(time.perf_counter() - start)
    rows = []
    for method in methods:
        ratios = [t / u for t, u in zip(seconds[method], seconds[BASELINE])]
        rows.append(
            {
                "N": num_classes,
                "mode": "xla" if jit else "graph",
                "method": method,
                "median_ms": statistics.median(seconds[method]) * 1e3,
                "ratio_to_uniform": statistics.median(ratios),
                "ratio_quartiles": statistics.quantiles(ratios, n=4)[::2],
            }
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--methods", default="midx_pq,midx_rvq,midx_rvq_learned")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    methods = [BASELINE] + [m for m in args.methods.split(",") if m and m != BASELINE]
    rows = []
    for num_classes in [int(n) for n in args.sizes.split(",")]:
        for jit in (False, True):
            for row in measure(num_classes, jit, methods, args.rounds):
                rows.append(row)
                low, high = row["ratio_quartiles"]
                print(
                    f"N={num_classes:,} {row['mode']} {row['method']}: {row['median_ms']:.2f} ms, "
                    f"{row['ratio_to_uniform']:.2f}x Uniform (quartiles {low:.2f}-{high:.2f})",
                    flush=True,
                )
    lines = [
        "| N | mode | step | ms (median) | / Uniform step (median, quartiles) |",
        "|---:|---|---|---:|---:|",
    ]
    for row in rows:
        low, high = row["ratio_quartiles"]
        lines.append(
            f"| {row['N']:,} | {row['mode']} | {row['method']} | {row['median_ms']:.2f} "
            f"| {row['ratio_to_uniform']:.2f} ({low:.2f}–{high:.2f}) |"
        )
    header = (
        f"Training steps interleaved round by round, B={BATCH}, m={NUM_SAMPLES}, d={DIM}, MIDX K=64, "
        f"{args.rounds} rounds. Command: `python benchmarks/step_ratio.py{''.join(' ' + a for a in (argv or []))}`\n\n"
    )
    write_results("step_ratio" + (f"_{args.tag}" if args.tag else ""), rows, header + "\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Per-query adaptive training steps against a per-query Uniform step, timed interleaved.

python -m benchmarks.step_ratio                          # N = 10^5 and 10^6, graph mode and XLA
python -m benchmarks.step_ratio --sizes 100000 --rounds 40 --tag quick

The steps are `run.py`'s (`make_train_step`: the output layer's forward, backward and SGD on the
rows touched; B = 256, m = 128, d = 64, MIDX K = 64). `run.py` times one method after another,
so drift of this VM over a minute (it has measured the same step at 1.8 and 6.7 s per epoch in
consecutive processes) lands in the ratios; here every round calls each step of a size and mode
once, in turn, and a ratio is the median over rounds of (step / the same round's Uniform step).
This is the measurement of the goal "a per-query MIDX step at most 1.25x a Uniform step". What
users have today runs in the same process: `tf.nn.sampled_softmax_loss` in the rounds (graph
mode only: TF's candidate samplers have no XLA kernel), the full softmax alone after them.
TFRS's in-batch softmax is not an output-layer step; its comparisons are in
`examples/tfrs_two_tower.py`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.run import make_train_step
from benchmarks.timing import optional, write_results

BATCH, NUM_SAMPLES, DIM = 256, 128, 64
BASELINE = "uniform"
#: What users have today, timed in the same run (the full softmax alone, after the rounds).
REFERENCES = ("full", "tf_sampled")
#: Calls of the full softmax's step (2 s each at N = 10^6 on 2 cores).
ALONE_ROUNDS = 10


def _finish(result) -> None:
    getattr(result, "numpy", lambda: None)()


def measure(num_classes: int, jit: bool, methods: list, rounds: int, warmup: int = 3) -> list:
    """One row per method: median ms and the median of its per-round ratio to the Uniform step.

    The full softmax is timed after the rounds, alone (`ALONE_ROUNDS` calls): between the small
    steps its pass over the whole table and its [B, N] logits left their caches cold (MIDX
    measured 1.22–1.38x Uniform with it in the rounds, 1.09–1.25x without). Its ratio is of
    medians.
    """
    steps = {method: make_train_step(method, num_classes, DIM, BATCH, NUM_SAMPLES, jit=jit) for method in methods}
    for step in steps.values():
        for _ in range(warmup):
            _finish(step())
    seconds = {method: [] for method in methods}
    interleaved = [method for method in methods if method != "full"]
    for _ in range(rounds):
        for method in interleaved:
            seconds[method].append(_timed(steps[method]))
    if "full" in steps:
        seconds["full"] = [_timed(steps["full"]) for _ in range(min(rounds, ALONE_ROUNDS))]
    uniform_ms = statistics.median(seconds[BASELINE]) * 1e3
    full_ms = statistics.median(seconds["full"]) * 1e3 if "full" in seconds else None
    rows = []
    for method in methods:
        median_ms = statistics.median(seconds[method]) * 1e3
        if method in interleaved:
            ratios = [t / u for t, u in zip(seconds[method], seconds[BASELINE])]
            ratio, quartiles = statistics.median(ratios), statistics.quantiles(ratios, n=4)[::2]
        else:
            ratio = median_ms / uniform_ms
            quartiles = [min(seconds[method]) * 1e3 / uniform_ms, max(seconds[method]) * 1e3 / uniform_ms]
        rows.append(
            {
                "N": num_classes,
                "mode": "xla" if jit else "graph",
                "method": method,
                "median_ms": median_ms,
                "ratio_to_uniform": ratio,
                "ratio_quartiles": quartiles,
                "speedup_vs_full": None if full_ms is None else full_ms / median_ms,
            }
        )
    return rows


def _timed(step) -> float:
    start = time.perf_counter()
    _finish(step())
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--methods", default="midx_pq,midx_rvq,midx_rvq_learned")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--tag", default="")
    parser.add_argument("--no-references", action="store_true", help="leave out the full softmax and TF's loss")
    args = parser.parse_args(argv)
    adaptive = [m for m in args.methods.split(",") if m and m not in (BASELINE, *REFERENCES)]
    methods = [BASELINE, *(() if args.no_references else REFERENCES), *adaptive]
    rows = []
    for num_classes in [int(n) for n in args.sizes.split(",")]:
        for jit in (False, True):
            # TF's candidate samplers have no XLA kernel.
            in_mode = [m for m in methods if not (jit and m == "tf_sampled")]
            for row in measure(num_classes, jit, in_mode, args.rounds):
                rows.append(row)
                low, high = row["ratio_quartiles"]
                print(
                    f"N={num_classes:,} {row['mode']} {row['method']}: {row['median_ms']:.2f} ms, "
                    f"{row['ratio_to_uniform']:.2f}x Uniform (quartiles {low:.2f}-{high:.2f})",
                    flush=True,
                )
    lines = [
        "| N | mode | step | ms (median) | / Uniform step (median, quartiles) | x full softmax |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for row in rows:
        low, high = row["ratio_quartiles"]
        lines.append(
            f"| {row['N']:,} | {row['mode']} | {row['method']} | {row['median_ms']:.2f} "
            f"| {row['ratio_to_uniform']:.2f} ({low:.2f}–{high:.2f}) | {optional(row['speedup_vs_full'], '.1f')} |"
        )
    header = (
        f"Training steps interleaved round by round, B={BATCH}, m={NUM_SAMPLES}, d={DIM}, MIDX K=64, "
        f"{args.rounds} rounds (the full softmax: {ALONE_ROUNDS} calls after them, its range min–max). "
        f"Command: `python -m benchmarks.step_ratio{''.join(' ' + a for a in (argv or []))}`\n\n"
    )
    write_results("step_ratio" + (f"_{args.tag}" if args.tag else ""), rows, header + "\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Sampler refresh at scale: time and peak memory of MIDX and QuadraticKernel refreshes at N = 10^6
and 10^7 classes, and the KL evidence behind k-means' default training-sample size.

    python -m benchmarks.refresh_scale                       # both sections (about 30 min on 2 cores)
    python -m benchmarks.refresh_scale --sections refresh    # time and memory only
    python -m benchmarks.refresh_scale --sizes 1000000 --modes function   # a quick subset
    python -m benchmarks.refresh_scale --rewrite             # re-render the .md from the .json

Section `refresh`: d = 64, K = 64 codewords (MIDX pq / rvq x uniform / unigram residual, 10 Lloyd
iterations) and QuadraticKernel (default leaf size), each configuration in a fresh process, in
the three ways a refresh is called:

* `eager`: `sampler.refresh(table)` with the table a tf.Variable, op by op;
* `layer`: `AdaptiveSampledSoftmaxLoss.refresh_sampler()` (what `CodebookRefresh` calls: one
  compiled graph function, `refresh.CompiledRefresh`), the table the layer's own weight;
* `function`: `sampler.refresh(table)` inside the user's own `tf.function`;
* `layer_after_step`: `layer` once W has been read sparsely, as every training step does (the
  sampled rows' lookup, the optimizer's row updates). TensorFlow then keeps the variable in
  copy-on-read mode, where a dense read of W copies the whole table: MIDX reads it with gathers
  of row blocks and avoids the copy; QuadraticKernel, whose snapshot needs the table whole, pays it.

The first call (tracing, and k-means++ seeding for MIDX) and a second, warm-started one are timed;
peak memory is the rise of the process's peak resident set (Linux VmHWM, reset just before the
call) over its resident set before it: what the refresh adds beyond the class table and the
sampler state, which exist before it. Every configuration runs twice, in fresh processes:

* with TensorFlow's default allocator (oneDNN on, x86): the timings, and the process's peak. This
  allocator pools memory and never returns it, so the warm call's peak is counted from the
  resident set before the *first* call (what the process holds after two refreshes);
* with an allocator that returns freed memory (`TF_ENABLE_ONEDNN_OPTS=0`, glibc with a fixed
  1 MB mmap threshold): the live peak of each call, the first and the warm one alike.

Section `kl`: KL(p‖q) of MIDX (include_bias=True, K = 64, d = 64) to the synthetic teacher's
softmax at N = 10^5 and 10^6, with k-means trained on 64·K, 256·K, 1024·K points or on all
of them (full-data k-means), for three sampler seeds, after a first and a second (warm-started)
refresh: the evidence for `quantization.default_sample_size` (1024·K).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.timing import RESULTS, machine, measured, memory_mb
from benchmarks.timing import optional as _fmt
from benchmarks.timing import run_worker as timing_run_worker

NAME = "refresh_scale"
SAMPLERS = ["midx_pq_uniform", "midx_pq_unigram", "midx_rvq_uniform", "midx_rvq_unigram", "quadratic_kernel"]
MODES = ["eager", "layer", "function", "layer_after_step"]
GOAL_PEAK_MB = 1024.0
GOAL_FIRST_S, GOAL_WARM_S = 60.0, 40.0
#: Worker environments: TensorFlow's default pooling allocator, and one that returns freed memory
#: to the system, so that the resident set follows the live tensors.
ALLOCATORS = {
    "pooling": {},
    "returning": {"TF_ENABLE_ONEDNN_OPTS": "0", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)},
}


# --------------------------------------------------------------------------------------------
# One refresh configuration, in a worker process.
def make_sampler(name: str, num_classes: int, num_codewords: int):
    import numpy as np

    from tf_adaptive_softmax import samplers

    if name == "quadratic_kernel":
        return samplers.QuadraticKernel(num_classes, seed=0)
    _, quantizer, residual = name.split("_")
    # Zipf counts, as in the teacher: the unigram residual's in-bucket weights.
    counts = 1.0 / np.arange(1, num_classes + 1) if residual == "unigram" else None
    return samplers.MIDX(
        num_classes, num_codewords=num_codewords, quantizer=quantizer, residual=residual, counts=counts, seed=0
    )


def refresh_call(spec: dict, sampler):
    """The refresh as `spec["mode"]` calls it, with the [N, d] table built outside the measurement.

    The table is made in NumPy and handed to TensorFlow, which keeps it in NumPy's buffer: with
    oneDNN on (TensorFlow's default on x86) TensorFlow's CPU allocator is a pool that never gives
    memory back, so a table built by TensorFlow ops would leave gigabytes of free pool behind,
    into which the refresh's temporaries would fit unseen by the resident-set measurement.
    """
    import numpy as np
    import tensorflow as tf

    from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss
    from tf_adaptive_softmax._keras import raw_variable

    n, d = spec["N"], spec["d"]
    values = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    values *= 0.05
    if spec["mode"].startswith("layer"):
        # The layer copies the values into its weight; handing them over by `pop` lets the
        # NumPy copy go, so only one table is resident.
        handover = {"values": values}
        del values
        layer = AdaptiveSampledSoftmaxLoss(
            n, sampler, num_samples=128, embeddings_initializer=lambda shape, dtype=None: handover.pop("values")
        )
        layer.build_for_dim(d)
        if spec["mode"] == "layer_after_step":
            # A training step reads sampled rows of W sparsely (and the optimizer updates them
            # sparsely), which switches the variable to copy-on-read: every later dense read,
            # such as the refresh's, copies the whole table.
            tf.gather(raw_variable(layer.class_embeddings), [0])
        return lambda: bool(layer.refresh_sampler())
    table = tf.Variable(values, trainable=False)
    sampler.build_state(d)
    if spec["mode"] == "eager":
        return lambda: bool(sampler.refresh(table))
    in_function = tf.function(lambda: sampler.refresh(table))
    return lambda: bool(in_function())


def refresh_worker(spec: dict) -> dict:
    sampler = make_sampler(spec["sampler"], spec["N"], spec["K"])
    call = refresh_call(spec, sampler)
    row = dict(spec, table_mb=spec["N"] * spec["d"] * 4 / 2**20, rss_before_mb=memory_mb("VmRSS"))
    _, row["first_s"], row["first_peak_mb"] = measured(call)
    rss_before_warm = memory_mb("VmRSS")
    _, row["warm_s"], row["warm_rise_mb"] = measured(call)
    # The warm call reuses memory the allocator kept from the first one, which its rise over the
    # RSS just before it does not see: its peak is also counted from the RSS before the first call.
    if row["warm_rise_mb"] is not None:
        row["warm_peak_mb"] = row["warm_rise_mb"] + rss_before_warm - row["rss_before_mb"]
    else:
        row["warm_peak_mb"] = None
    row["state_mb"] = sampler.state_bytes() / 2**20
    row["process_peak_mb"] = memory_mb("VmHWM")
    return row


# --------------------------------------------------------------------------------------------
# KL of the MIDX proposal against the training-sample size, in a worker process per (N, quantizer).
def kl_worker(spec: dict) -> list:
    import tensorflow as tf

    from benchmarks.num_codewords import TeacherKL
    from tf_adaptive_softmax import datasets, samplers

    n, d, k = spec["N"], spec["d"], spec["K"]
    teacher = datasets.make_teacher(n, d, seed=0)
    weights, bias = tf.constant(teacher.class_embeddings), tf.constant(teacher.class_bias)
    kl_to_teacher = TeacherKL(weights, bias)
    uniform_kl, _ = kl_to_teacher(None)
    rows = []
    for per_centroid in spec["points_per_centroid"]:
        size = n if per_centroid == "full" else min(n, int(per_centroid) * k)
        for seed in spec["seeds"]:
            sampler = samplers.MIDX(
                n,
                num_codewords=k,
                quantizer=spec["quantizer"],
                include_bias=True,
                kmeans=samplers.KMeansOptions(sample_size=size),
                seed=seed,
            )
            refresh = sampler.compiled_refresh(lambda: (weights, bias))
            row = {**spec, "points_per_centroid": per_centroid, "sample_size": size, "seed": seed}
            row.pop("seeds")
            row["uniform_kl"] = uniform_kl
            _, row["first_refresh_s"], _ = measured(lambda: refresh("raise"))
            row["kl_first"], _ = kl_to_teacher(sampler)
            _, row["warm_refresh_s"], _ = measured(lambda: refresh("raise"))
            row["kl_warm"], _ = kl_to_teacher(sampler)
            rows.append(row)
            print(
                f"  KL N={n:,} {spec['quantizer']} sample={size:,} seed={seed}: first {row['kl_first']:.4f}, "
                f"warm {row['kl_warm']:.4f}",
                file=sys.stderr,
                flush=True,
            )
    return rows


# --------------------------------------------------------------------------------------------
def run_worker(spec: dict, timeout: float, allocator: str = "pooling"):
    """Runs one configuration in a fresh process with the given allocator (`timing.run_worker`)."""
    return timing_run_worker("benchmarks.refresh_scale", spec, timeout, env={**os.environ, **ALLOCATORS[allocator]})


def measure_refresh(spec: dict, timeout: float, live_memory: bool) -> dict:
    """Times and process peaks with the default allocator; live peaks with a returning one."""
    row = run_worker(spec, timeout)
    if live_memory and "skipped" not in row:
        live = run_worker(spec, timeout, allocator="returning")
        if "skipped" in live:
            row["live_skipped"] = live["skipped"]
        else:
            row["live_first_peak_mb"], row["live_warm_peak_mb"] = live["first_peak_mb"], live["warm_rise_mb"]
    return row


def _live_peak(row: dict):
    peaks = [row.get("live_first_peak_mb"), row.get("live_warm_peak_mb")]
    return None if None in peaks else max(peaks)


def refresh_table(rows: list) -> str:
    lines = [
        "| N | sampler | call | first s | warm s | live peak MB first / warm | process peak MB first / after warm "
        "| table MB | state MB |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['N']:,} | {r['sampler']} | {r['mode']} |"
        if "skipped" in r:
            lines.append(f"{head} skipped: {r['skipped']} | | | | | |")
            continue
        lines.append(
            f"{head} {r['first_s']:.1f} | {r['warm_s']:.1f} | {_fmt(r.get('live_first_peak_mb'), ',.0f')} / "
            f"{_fmt(r.get('live_warm_peak_mb'), ',.0f')} | {_fmt(r['first_peak_mb'], ',.0f')} / "
            f"{_fmt(r['warm_peak_mb'], ',.0f')} | {r['table_mb']:,.0f} | {r['state_mb']:,.0f} |"
        )
    return "\n".join(lines)


def refresh_goals(rows: list) -> str:
    """The goals at N = 10^7: peak beyond the table <= 1 GB in every call mode; MIDX first
    refresh <= 60 s and warm <= 40 s."""
    lines = []
    for r in rows:
        if r["N"] != 10_000_000:
            continue
        label = f"- {r['sampler']} {r['mode']}:"
        if "skipped" in r:
            lines.append(f"{label} not measured ({r['skipped']})")
            continue
        live = _live_peak(r)
        process = max(r["first_peak_mb"] or 0.0, r["warm_peak_mb"] or 0.0)
        parts = [
            f"live peak +{_fmt(live, ',.0f')} MB "
            f"({'—' if live is None else 'met' if live <= GOAL_PEAK_MB else 'missed'}, goal <= 1,024 MB)",
            f"process peak +{process:,.0f} MB ({'met' if process <= GOAL_PEAK_MB else 'missed'})",
        ]
        if r["sampler"].startswith("midx"):
            for call, goal in (("first", GOAL_FIRST_S), ("warm", GOAL_WARM_S)):
                seconds = r[f"{call}_s"]
                parts.append(f"{call} {seconds:.1f} s ({'met' if seconds <= goal else 'missed'}, goal {goal:.0f} s)")
        lines.append(f"{label} " + "; ".join(parts))
    return "\n".join(lines) or "- (N = 10^7 not in this run)"


def kl_table(rows: list) -> str:
    import statistics

    lines = [
        "| N | quantizer | k-means trains on | KL first refresh (mean ± sd over seeds) | KL after a warm refresh "
        "| first refresh s | KL(p‖Uniform) |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    groups = {}
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['N']:,} | {r['quantizer']} | skipped: {r['skipped']} | | | | |")
            continue
        groups.setdefault((r["N"], r["quantizer"], str(r["points_per_centroid"]), r["sample_size"]), []).append(r)
    for (n, quantizer, per_centroid, size), group in groups.items():
        first = [r["kl_first"] for r in group]
        warm = [r["kl_warm"] for r in group]

        def spread(values):
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.4f} ± {sd:.4f}"

        label = "all N points" if per_centroid == "full" else f"{per_centroid}·K = {size:,} points"
        seconds = statistics.mean(r["first_refresh_s"] for r in group)
        lines.append(
            f"| {n:,} | {quantizer} | {label} | {spread(first)} | {spread(warm)} | {seconds:.1f} | "
            f"{group[0]['uniform_kl']:.3f} |"
        )
    return "\n".join(lines)


def write(payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(payload, indent=2))
    text = [
        "# Sampler refresh at scale",
        "",
        f"Machine: {payload['machine']}. Command: `{payload['command']}`. Timings were taken "
        f"{payload.get('conditions', 'as the machine was')}.",
        "",
        "## Time and peak memory of one refresh (d = 64, K = 64, 10 Lloyd iterations)",
        "",
        "Peak MB: rise of the process's peak resident set (VmHWM, reset before the call) over its "
        "resident set before the call, each configuration in fresh processes; the class table and "
        "the sampler state exist before the call. Live peak: with an allocator that returns freed "
        "memory (`TF_ENABLE_ONEDNN_OPTS=0`), what each call holds at its peak. Process peak: with "
        "TensorFlow's default pooling allocator (the timings' run), counted from the resident set "
        "before the first refresh, so the second figure is what the process holds after both. "
        "eager = `sampler.refresh(table)`; layer = `AdaptiveSampledSoftmaxLoss.refresh_sampler()`; "
        "function = `sampler.refresh` inside a user's `tf.function`; layer_after_step = layer once "
        "W was read sparsely as in training (TensorFlow then copies W on the refresh's dense read). "
        "First = tracing + k-means++ seeding; warm = warm-started from the first.",
        "",
        refresh_table(payload.get("refresh_rows", [])),
        "",
        "Goals at N = 10^7:",
        refresh_goals(payload.get("refresh_rows", [])),
        "",
        "## KL(p‖q) against k-means' training-sample size (teacher, d = 64, K = 64, include_bias=True)",
        "",
        kl_table(payload.get("kl_rows", [])),
        "",
    ]
    (RESULTS / f"{NAME}.md").write_text("\n".join(text))
    print(f"wrote {RESULTS / (NAME + '.md')} and {NAME}.json")


def _row_key(row: dict) -> tuple:
    return (row["N"], row["d"], row["K"], row["sampler"], row["mode"])


def _row_order(row: dict) -> tuple:
    return (row["N"], SAMPLERS.index(row["sampler"]), MODES.index(row["mode"]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="refresh,kl")
    parser.add_argument("--sizes", default="1000000,10000000", help="refresh: N values")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--codewords", type=int, default=64)
    parser.add_argument("--kl-sizes", default="100000,1000000", help="kl: N values")
    parser.add_argument("--kl-points-per-centroid", default="64,256,1024,full")
    parser.add_argument("--kl-seeds", default="0,1,2")
    parser.add_argument("--conditions", default="on a machine shared with other jobs (indicative)")
    parser.add_argument(
        "--no-live-memory", action="store_true", help="skip the second run of each configuration (live peaks)"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    parser.add_argument("--rewrite", action="store_true", help="only re-render the .md from the .json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        result = kl_worker(spec) if spec.get("section") == "kl" else refresh_worker(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return
    path = RESULTS / f"{NAME}.json"
    payload = json.loads(path.read_text()) if path.exists() else {}
    if args.rewrite:
        write(payload)
        return
    sections = args.sections.split(",")
    begin = time.perf_counter()

    def log(message):
        print(f"[{(time.perf_counter() - begin) / 60:5.1f} min] {message}", flush=True)

    command = "python -m benchmarks.refresh_scale" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    # A run of a subset replaces only its own rows: the table keeps every configuration's latest.
    payload.update(machine=machine(), conditions=args.conditions)
    payload["command"] = command if "command" not in payload else f"{payload['command']}`, then `{command}"
    if "refresh" in sections:
        rows = []
        for n in (int(v) for v in args.sizes.split(",")):
            for name in args.samplers.split(","):
                for mode in args.modes.split(","):
                    spec = {"N": n, "d": args.dim, "K": args.codewords, "sampler": name, "mode": mode}
                    # One process at a time: at 10^7 each holds several GB.
                    row = measure_refresh(spec, args.timeout, live_memory=not args.no_live_memory)
                    rows.append(row)
                    if "skipped" in row:
                        log(f"refresh N={n:,} {name} {mode}: skipped ({row['skipped']})")
                    else:
                        log(
                            f"refresh N={n:,} {name} {mode}: first {row['first_s']:.1f} s, warm "
                            f"{row['warm_s']:.1f} s; live peak +{_fmt(row.get('live_first_peak_mb'), '.0f')} / "
                            f"+{_fmt(row.get('live_warm_peak_mb'), '.0f')} MB; process +"
                            f"{_fmt(row['first_peak_mb'], '.0f')} / +{_fmt(row['warm_peak_mb'], '.0f')} MB"
                        )
        measured_keys = {_row_key(row) for row in rows}
        kept = [row for row in payload.get("refresh_rows", []) if _row_key(row) not in measured_keys]
        payload["refresh_rows"] = sorted(kept + rows, key=_row_order)
    if "kl" in sections:
        rows = []
        per_centroid = [v if v == "full" else int(v) for v in args.kl_points_per_centroid.split(",")]
        seeds = [int(v) for v in args.kl_seeds.split(",")]
        for n in (int(v) for v in args.kl_sizes.split(",")):
            for quantizer in ("pq", "rvq"):
                spec = {"section": "kl", "N": n, "d": args.dim, "K": args.codewords, "quantizer": quantizer}
                result = run_worker({**spec, "points_per_centroid": per_centroid, "seeds": seeds}, 4 * args.timeout)
                rows.extend(result if isinstance(result, list) else [result])
                log(f"kl N={n:,} {quantizer}: done")
        payload["kl_rows"] = rows
    payload["seconds"] = time.perf_counter() - begin
    write(payload)


if __name__ == "__main__":
    main(sys.argv[1:])

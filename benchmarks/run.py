"""The benchmark runner: speed and scale of the output layer, and bias against sample size.

    python -m benchmarks.run --quick        # under 5 minutes on 2 cores
    python -m benchmarks.run                # the full grid (hours on 2 cores; see --sections)
    python -m benchmarks.run --sections speed --sizes 10000,1000000

Sections (each writes JSON, a markdown table and PNG plots under benchmarks/results/, with the
machine; `--quick` writes `*_quick.*` files so it never overwrites a full run, and `--tag` names
partial runs):

* `speed`: one training step of the output layer alone on a fixed query batch (forward, backward,
  SGD update of the touched rows; the query gets its gradient too): full softmax,
  `tf.nn.sampled_softmax_loss` (its log-uniform sampler, negatives shared by the batch), and our
  Uniform, MIDX (pq, rvq) and QuadraticKernel, each with per-query negatives and with negatives
  shared by the batch (`+shared`), in graph mode and under XLA.
  Steps/s (median of repeated timings, with min-max), the ratio to the full softmax measured in the
  same run, and the peak memory of the configuration: resident-set growth over the process's
  resident size before it (Linux VmHWM, reset before each configuration; the variables, the
  sampler state, the compiled step and its activations).
* `bias`: the synthetic teacher task (`tf_adaptive_softmax._experiments`' student, same optimizer,
  steps and seed for every row): exact test cross-entropy after training with each sampler at
  each m, against full-softmax training. Every row corrects the positive by log(m·q) (the
  default); a sampler name with `+eq3` (e.g. `uniform+eq3`) trains with it uncorrected
  (`logq_correction="negatives_only"`, Blanc & Rendle's eq. 3); with `+shared` (e.g.
  `quadratic_kernel+shared`, also in `speed`) it draws m negatives shared by the batch from the
  batch mixture (`shared_negatives=True`). Suffixes combine: `midx_rvq+shared+eq3`.
* `ptb`: the word-level LSTM language model of `examples/language_model.py` on the PTB subset in
  the data folder (`--data-dir`, default `$TFAS_DATA_DIR`): test perplexity against m.
* `ml100k`: the SASRec-style model of `examples/sequential_recommender.py` on MovieLens 100K:
  Recall@10 / NDCG@10 over the full catalogue against m.

The real-data sections skip (and say so) when the data folder is not set or lacks the file.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = pathlib.Path(__file__).resolve().parent

import numpy as np
import tensorflow as tf

from benchmarks.timing import RESULTS, machine, memory_mb, reset_peak_memory, time_call
from tf_adaptive_softmax import _experiments as experiments
from tf_adaptive_softmax import datasets, estimator, samplers
from tf_adaptive_softmax._experiments import pyplot, save_figure

SPEED_METHODS = [
    "full",
    "tf_sampled",
    "uniform",
    "midx_pq",
    "midx_rvq",
    "quadratic_kernel",
    "uniform+shared",
    "midx_pq+shared",
    "midx_rvq+shared",
    "quadratic_kernel+shared",
]
BIAS_SAMPLERS = ["tf_sampled", "uniform", "log_uniform", "unigram", "midx_pq", "midx_rvq", "quadratic_kernel"]
LEARNING_RATE = 0.05


def variant(name: str):
    """'<sampler>[+eq3][+shared]' -> (sampler, logq_correction, shared_negatives).

    The positive is corrected by default; `+eq3` trains with it uncorrected (Blanc & Rendle's
    eq. 3). `+cp` (the explicit default) is still accepted, for the names of earlier results."""
    base, *options = name.split("+")
    unknown = set(options) - {"cp", "eq3", "shared"}
    if unknown or {"cp", "eq3"} <= set(options):
        raise ValueError(f"Bad suffixes {options} in {name!r}; use +eq3 (or +cp) and/or +shared.")
    return base, "negatives_only" if "eq3" in options else "standard", "shared" in options


# -- speed ---------------------------------------------------------------------------------
def _speed_sampler(method: str, num_classes: int) -> Optional[samplers.Sampler]:
    return {
        "uniform": lambda: samplers.Uniform(num_classes, seed=0),
        "midx_pq": lambda: samplers.MIDX(num_classes, num_codewords=64, quantizer="pq", seed=0),
        "midx_rvq": lambda: samplers.MIDX(num_classes, num_codewords=64, quantizer="rvq", seed=0),
        "midx_pq_learned": lambda: samplers.MIDX(
            num_classes, num_codewords=64, quantizer="pq", learn_codebooks=True, seed=0
        ),
        "midx_rvq_learned": lambda: samplers.MIDX(
            num_classes, num_codewords=64, quantizer="rvq", learn_codebooks=True, seed=0
        ),
        "quadratic_kernel": lambda: samplers.QuadraticKernel(num_classes, seed=0),
    }.get(method, lambda: None)()


def _sgd(variable: tf.Variable, gradient) -> None:
    """Plain SGD that touches only the rows a sparse (IndexedSlices) gradient names."""
    if isinstance(gradient, tf.IndexedSlices):
        variable.scatter_sub(tf.IndexedSlices(LEARNING_RATE * gradient.values, gradient.indices))
    else:
        variable.assign_sub(LEARNING_RATE * gradient)


def make_train_step(
    method: str,
    num_classes: int,
    dim: int,
    batch: int,
    num_samples: int,
    jit: bool,
    weights_ready: Optional[Callable[[], None]] = None,
):
    """A compiled training step of the output layer alone (it holds the sampler it draws from).

    `weights_ready()`, if given, is called once W and b exist (before the sampler's refresh), so
    a caller can measure memory beyond them."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((num_classes, dim), dtype=np.float32)
    values *= 0.05  # in place: at N = 10^7 every copy of W is 2.4 GB
    weights = tf.Variable(values, name="W")
    del values
    bias = tf.Variable(tf.zeros([num_classes]), name="b")
    query = tf.Variable(rng.standard_normal((batch, dim), dtype=np.float32), name="query")
    labels = tf.constant(rng.integers(0, num_classes, batch), tf.int32)
    if weights_ready is not None:
        weights_ready()
    base, _, shared = variant(method)
    sampler = _speed_sampler(base, num_classes)
    if sampler is not None:
        sampler.build_state(dim)
        if sampler.adaptive:
            tf.function(lambda: sampler.refresh(weights, bias))()

    def loss_fn():
        if method == "full":
            return estimator.full_softmax_loss(query, labels, weights, bias)
        if method == "tf_sampled":
            return tf.nn.sampled_softmax_loss(
                weights, bias, tf.cast(labels[:, tf.newaxis], tf.int64), query, num_samples, num_classes
            )
        # As the loss layer does: the positive is corrected by default, its log q comes with the draw.
        if shared:
            ids, log_q = sampler.sample_shared(query, num_samples)
            true_log_q = sampler.mixture_log_prob(query, labels[:, tf.newaxis])
        else:
            ids, log_q, true_log_q = sampler.sample_with_log_prob(query, num_samples, labels[:, tf.newaxis])
        if not sampler.has_auxiliary_loss:
            return estimator.sampled_softmax_loss(query, labels, ids, log_q, weights, bias, true_log_q=true_log_q)
        # Learned codebooks: the loss layer's work, the sampler's own loss included.
        positives = labels[:, tf.newaxis]
        logits = estimator.sampled_softmax_logits(query, positives, ids, log_q, weights, bias, true_log_q=true_log_q)
        if shared:
            ids = tf.broadcast_to(ids, [batch, num_samples])
        auxiliary = sampler.auxiliary_loss(query, tf.concat([positives, ids], 1), logits, tf.gather(weights, positives))
        return estimator._multi_positive_cross_entropy(logits, 1) + auxiliary

    trained = [weights, bias, query] + ([] if sampler is None else list(sampler.trainable_weights))

    @tf.function(jit_compile=jit)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn())
        for variable, gradient in zip(trained, tape.gradient(loss, trained)):
            _sgd(variable, gradient)
        return loss

    return step


def run_speed(args) -> List[dict]:
    rows = []
    sizes = [int(n) for n in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    sample_sizes = [int(m) for m in args.speed_samples.split(",")]
    configs = [(n, d, m) for n in sizes for d in dims for m in sample_sizes]
    for index, (n, d, m) in enumerate(configs, 1):
        for method in args.speed_method_list:
            for mode in ("graph", "xla"):
                label = f"[speed {index}/{len(configs)}] N={n:,} d={d} m={m} {method} {mode}"
                if method == "full" and m != sample_sizes[0]:
                    continue  # the full softmax does not depend on m
                config = {"N": n, "d": d, "m": m, "method": method, "mode": mode}
                if method == "tf_sampled" and mode == "xla":
                    rows.append({**config, "skipped": "TF's candidate samplers have no XLA kernel"})
                    continue
                if method == "full" and n * args.batch * 4 * 3 > args.memory_budget_gb * 2**30:
                    rows.append({**config, "skipped": "the [B, N] logits exceed the memory budget"})
                    continue
                memory = {}

                def weights_ready():
                    # Memory is counted beyond W and b: what the method adds (refresh, step).
                    reset_peak_memory()
                    memory["baseline"] = memory_mb("VmRSS")

                start = time.perf_counter()
                try:
                    step = make_train_step(method, n, d, args.batch, m, jit=mode == "xla", weights_ready=weights_ready)
                    timing = time_call(step, repeats=args.repeats, warmup=2)
                except (tf.errors.OpError, ValueError) as error:  # reported, not fatal
                    rows.append({**config, "skipped": f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"})
                    print(f"{label}: skipped ({rows[-1]['skipped']})", flush=True)
                    continue
                row = {
                    **config,
                    "steps_per_s": 1.0 / timing["median_s"],
                    "median_ms": timing["median_s"] * 1e3,
                    "min_ms": timing["min_s"] * 1e3,
                    "max_ms": timing["max_s"] * 1e3,
                    "peak_rss_mb": max(0.0, memory_mb() - memory["baseline"]),
                    "setup_s": time.perf_counter() - start,
                }
                rows.append(row)
                # The step's closures hold W (2.4 GB at N = 10^7) in reference cycles: free them
                # before the next configuration builds its own.
                del step
                gc.collect()
                print(
                    f"{label}: {row['median_ms']:.1f} ms/step ({row['min_ms']:.1f}-{row['max_ms']:.1f}), "
                    f"peak memory +{row['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    _add_speed_ratios(rows)
    return rows


def _add_speed_ratios(rows: List[dict]) -> None:
    full = {(r["N"], r["d"], r["mode"]): r["median_ms"] for r in rows if r["method"] == "full" and "median_ms" in r}
    full_graph = {
        (r["N"], r["d"]): r["median_ms"]
        for r in rows
        if r["method"] == "full" and r["mode"] == "graph" and "median_ms" in r
    }
    for row in rows:
        if "median_ms" not in row:
            continue
        reference = full.get((row["N"], row["d"], row["mode"])) or full_graph.get((row["N"], row["d"]))
        row["speedup_vs_full"] = reference / row["median_ms"] if reference else None


def speed_table(rows: List[dict]) -> str:
    lines = [
        "| N | d | m | method | mode | ms / step (min-max) | steps/s | x full softmax | peak MB beyond W, b |",
        "|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "skipped" in r:
            if r["method"] == "tf_sampled" and r["mode"] == "xla" and r["m"] != rows[0]["m"]:
                continue
            lines.append(
                f"| {r['N']:,} | {r['d']} | {r['m']} | {r['method']} | {r['mode']} | skipped: {r['skipped']} | | | |"
            )
            continue
        ratio = "—" if r.get("speedup_vs_full") is None else f"{r['speedup_vs_full']:.1f}x"
        lines.append(
            f"| {r['N']:,} | {r['d']} | {r['m'] if r['method'] != 'full' else '—'} | {r['method']} | "
            f"{r['mode']} | {r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f}) | "
            f"{r['steps_per_s']:.1f} | {ratio} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def speed_targets(rows: List[dict]) -> str:
    """The speed goals at d=64, m=128, per N and per mode: per-query MIDX at most 1.25x a Uniform
    step drawn the same way and (at N=10^6) at least 100x faster than the full softmax;
    QuadraticKernel per query at least 5x faster than the full softmax; XLA at most 1.1x graph."""
    times = {
        (r["N"], r["method"], r["mode"]): r["median_ms"]
        for r in rows
        if r["d"] == 64 and (r["m"] == 128 or r["method"] == "full") and "median_ms" in r
    }
    lines = []
    for n, method, mode in sorted(times):
        own = times[(n, method, mode)]
        parts = []
        full = times.get((n, "full", mode))
        if full and method != "full":
            goal = {"midx_pq": 100, "midx_rvq": 100, "quadratic_kernel": 5}.get(method) if n == 1_000_000 else None
            parts.append(f"{full / own:.1f}x faster than the full softmax" + (f" (goal >= {goal}x)" if goal else ""))
        uniform = times.get((n, "uniform+shared" if method.endswith("+shared") else "uniform", mode))
        if method.startswith("midx") and uniform:
            parts.append(f"{own / uniform:.2f}x a Uniform step drawn the same way (goal <= 1.25x)")
        graph = times.get((n, method, "graph"))
        if mode == "xla" and graph:
            parts.append(f"XLA {own / graph:.2f}x graph mode (goal <= 1.1x)")
        if parts and method != "uniform":
            lines.append(f"- N={n:,} {method} {mode}: " + "; ".join(parts))
    return "\n".join(lines) or "- (d = 64, m = 128 not in this run)"


# -- bias ----------------------------------------------------------------------------------
def _gap_table(rows: List[dict], metric: str, higher_is_better: bool, fmt: str = ".3f") -> str:
    full = next(r[metric] for r in rows if r["sampler"] == "full")
    sample_sizes = sorted({r["m"] for r in rows if r["sampler"] != "full"})
    lines = [
        "| sampler | " + " | ".join(f"m={m}" for m in sample_sizes) + " |",
        "|---|" + "---:|" * len(sample_sizes),
        f"| full softmax | {format(full, fmt)} (every m) |" + " |" * (len(sample_sizes) - 1),
    ]
    for name in dict.fromkeys(r["sampler"] for r in rows if r["sampler"] != "full"):
        cells = []
        for m in sample_sizes:
            row = next((r for r in rows if r["sampler"] == name and r["m"] == m), None)
            cells.append("" if row is None else format(row[metric], fmt))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(_two_percent_summary(rows, metric, higher_is_better))
    return "\n".join(lines)


def _two_percent_summary(rows: List[dict], metric: str, higher_is_better: bool) -> str:
    """Smallest m within 2% of the full softmax, per sampler (the issue's target)."""
    full = next(r[metric] for r in rows if r["sampler"] == "full")
    lines = [f"Smallest m within 2% of the full softmax ({metric} {full:.4g}):"]
    for name in dict.fromkeys(r["sampler"] for r in rows if r["sampler"] != "full"):
        ok = [
            r["m"]
            for r in rows
            if r["sampler"] == name and (r[metric] >= full * 0.98 if higher_is_better else r[metric] <= full * 1.02)
        ]
        lines.append(f"- {name}: {min(ok) if ok else 'none of the m tried'}")
    return "\n".join(lines)


def _grid(args, runner: Callable[[Optional[str], int], dict], section: str, names: List[str]) -> List[dict]:
    sample_sizes = [int(m) for m in args.bias_samples.split(",")]
    runs = [("full", 0)] + [(name, m) for name in names for m in sample_sizes]
    rows = []
    for index, (name, m) in enumerate(runs, 1):
        start = time.perf_counter()
        metrics = runner(name, m)
        rows.append({"sampler": name, "m": m, **metrics, "seconds": time.perf_counter() - start})
        # Long grids are interrupted: keep what has run so far.
        partial = args.results_dir / f"partial_{section.split()[0]}{getattr(args, 'suffix', '')}.json"
        partial.write_text(json.dumps(rows, indent=1))
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        print(
            f"[{section} {index}/{len(runs)}] {name}" + (f" m={m}" if m else "") + f": {shown} "
            f"({rows[-1]['seconds']:.0f} s)",
            flush=True,
        )
    return rows


def run_teacher_bias(args, num_classes: int) -> List[dict]:
    teacher = datasets.make_teacher(num_classes, 32, seed=0, frequency_sorted_ids=not args.unsorted_ids)
    train, test = datasets.train_test_split(teacher, args.teacher_examples, 5_000)
    counts = np.bincount(train[1], minlength=num_classes).astype(np.float64)

    def runner(name, m):
        base, logq_correction, shared = variant(name)
        tf_sampled = base == "tf_sampled"  # tf.nn.sampled_softmax_loss: log-uniform, shared by the batch
        sampler = None if base in ("full", "tf_sampled") else experiments.make_sampler(base, num_classes, counts)
        result = experiments.train_and_evaluate(
            train,
            test,
            num_classes,
            sampler,
            max(m, 1),
            args.bias_epochs,
            256,
            3e-3,
            jit_compile=False,
            verbose=0,
            logq_correction=logq_correction,
            shared_negatives=shared,
            tf_sampled=tf_sampled,
        )
        return {"test_cross_entropy": result["test_cross_entropy"], "seconds_per_epoch": result["seconds_per_epoch"]}

    layout = "ids in no particular order" if args.unsorted_ids else "ids sorted by frequency"
    rows = _grid(args, runner, f"teacher N={num_classes:,} ({layout})", args.bias_sampler_list)
    floor = teacher.cross_entropy(*test)
    for row in rows:
        row["bayes_floor"] = floor
    return rows


def run_example_bias(args, script: str, extra: List[str]) -> List[dict]:
    """Runs `examples/<script>.py` once per (sampler, m) in a fresh process; reads its --json."""
    scratch = pathlib.Path(tempfile.mkdtemp())

    def runner(name, m):
        base, logq_correction, shared = variant(name)
        argv = extra + [
            "--sampler",
            base,
            "--num-samples",
            str(max(m, 1)),
            "--verbose",
            "0",
            "--plot",
            str(scratch / "curves.png"),
            "--json",
            str(scratch / "metrics.json"),
        ]
        argv += ["--logq-correction", logq_correction] + (["--shared-negatives"] if shared else [])
        subprocess.run([sys.executable, str(HERE.parent / "examples" / f"{script}.py"), *argv], check=True)
        metrics = json.loads((scratch / "metrics.json").read_text())
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    return _grid(args, runner, script, args.real_sampler_list)


# -- plots ---------------------------------------------------------------------------------
def plot_speed(rows: List[dict], path: pathlib.Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    timed = [r for r in rows if "median_ms" in r]
    dim = timed[0]["d"]
    sample_sizes = sorted({r["m"] for r in timed if r["method"] != "full"})
    m = 128 if 128 in sample_sizes else sample_sizes[len(sample_sizes) // 2]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for axis, mode in zip(axes, ("graph", "xla")):
        for color, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
            points = sorted(
                (r["N"], r["steps_per_s"])
                for r in timed
                if r["method"] == method and r["mode"] == mode and r["d"] == dim and (r["m"] == m or method == "full")
            )
            if points:
                axis.plot(*zip(*points), marker="o", color=f"C{color}", label=method)
        axis.set(xscale="log", yscale="log", xlabel="N (classes)", title=f"{mode}: d={dim}, B=256, m={m}")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("training steps / s")
    axes[0].legend(fontsize=7, loc="lower left")  # graph mode has every method (TF's has no XLA kernel)
    figure.suptitle(f"Output-layer training step ({machine()})", fontsize=9)
    save_figure(figure, path)


def plot_bias(rows: List[dict], metric: str, label: str, path: pathlib.Path, title: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    full = next(r[metric] for r in rows if r["sampler"] == "full")
    for name in dict.fromkeys(r["sampler"] for r in rows if r["sampler"] != "full"):
        points = sorted((r["m"], r[metric]) for r in rows if r["sampler"] == name)
        axis.plot(*zip(*points), marker="o", label=name)
    axis.axhline(full, color="black", linestyle="--", label="full softmax")
    axis.set(xscale="log", xlabel="m (samples per query)", ylabel=label, title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(figure, path)


# -- main ----------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a run under 5 minutes on 2 cores")
    parser.add_argument(
        "--tag", default=None, help="suffix of the result files (default: 'quick' with --quick, none otherwise)"
    )
    parser.add_argument("--sections", default="speed,bias,ptb,ml100k")
    parser.add_argument("--results-dir", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="speed: N values")
    parser.add_argument("--dims", default="64,128", help="speed: d values")
    parser.add_argument("--speed-samples", default="32,128,512", help="speed: m values")
    parser.add_argument(
        "--speed-methods",
        default=",".join(SPEED_METHODS),
        help="speed: methods ('+shared': negatives shared by the batch)",
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--memory-budget-gb", type=float, default=8.0)
    parser.add_argument("--teacher-sizes", default="20000,100000", help="bias: teacher N values")
    parser.add_argument("--teacher-examples", type=int, default=200_000)
    parser.add_argument("--bias-epochs", type=int, default=3)
    parser.add_argument("--bias-samples", default="5,10,20,50,100,200", help="bias: m values")
    parser.add_argument("--bias-samplers", default=",".join(BIAS_SAMPLERS))
    parser.add_argument(
        "--unsorted-ids",
        action="store_true",
        help="bias: teacher ids in no particular order (an item catalogue) instead of sorted "
        "by frequency (a vocabulary: log-uniform's best case)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="folder with ptb_subset.train.txt and ml-100k.inter (default: $TFAS_DATA_DIR)"
    )
    parser.add_argument("--real-samplers", default="uniform,log_uniform,midx_rvq,quadratic_kernel")
    parser.add_argument("--real-epochs", type=int, default=3)
    parser.add_argument("--real-args", default="", help="extra flags for the example scripts, e.g. '--dim 64'")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.dims, args.speed_samples, args.repeats = "10000,100000", "64", "128", 5
        args.speed_methods = ",".join(m for m in SPEED_METHODS if "midx_pq" not in m)
        args.teacher_sizes, args.teacher_examples, args.bias_epochs = "5000", 40_000, 2
        args.bias_samples, args.bias_samplers = "5,20,100", "uniform,midx_rvq,quadratic_kernel"
        args.sections = ",".join(s for s in args.sections.split(",") if s in ("speed", "bias"))
    args.bias_sampler_list = [s for s in args.bias_samplers.split(",") if s]
    args.speed_method_list = [s for s in args.speed_methods.split(",") if s]
    for name in args.speed_method_list + args.bias_sampler_list:
        variant(name)  # fails fast on a misspelt suffix
    args.real_sampler_list = [s for s in args.real_samplers.split(",") if s]
    return args


def main(argv=None) -> Dict[str, List[dict]]:
    args = parse_args(argv)
    tag = args.tag if args.tag is not None else ("quick" if args.quick else "")
    suffix = args.suffix = f"_{tag}" if tag else ""
    args.results_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    header = f"Machine: {machine()}; TensorFlow {tf.__version__}. Command: `{command.strip()}`\n\n"
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    results: Dict[str, List[dict]] = {}
    report: List[str] = []
    data = experiments.data_dir(args.data_dir) or pathlib.Path("TFAS_DATA_DIR-is-not-set")
    if "speed" in sections:
        rows = results["speed"] = run_speed(args)
        plot_speed(rows, args.results_dir / f"speed{suffix}.png")
        report += [
            "## Speed: one output-layer training step (B=256, SGD)",
            "",
            speed_table(rows),
            "",
            "Goals at d=64, m=128 (per N and mode):",
            speed_targets(rows),
            "",
            f"![speed](speed{suffix}.png)",
            "",
        ]
    if "bias" in sections:
        for n in (int(v) for v in args.teacher_sizes.split(",")):
            rows = results[f"bias_teacher_{n}"] = run_teacher_bias(args, n)
            plot_bias(
                rows,
                "test_cross_entropy",
                "test cross-entropy (exact)",
                args.results_dir / f"bias_teacher_{n}{suffix}.png",
                f"Teacher task, N={n:,}",
            )
            layout = "ids in no particular order" if args.unsorted_ids else "ids sorted by frequency"
            report += [
                f"## Bias: teacher task, N={n:,}, {layout} (test cross-entropy, lower is better; Bayes floor "
                f"{rows[0]['bayes_floor']:.3f})",
                "",
                _gap_table(rows, "test_cross_entropy", False),
                "",
                f"![bias](bias_teacher_{n}{suffix}.png)",
                "",
            ]
    for section, script, metric, label, higher, extra in (
        (
            "ptb",
            "language_model",
            "test_perplexity",
            "test perplexity",
            False,
            ["--data", str(data / "ptb_subset.train.txt"), "--epochs", str(args.real_epochs)],
        ),
        (
            "ml100k",
            "sequential_recommender",
            "recall_at_10",
            "Recall@10",
            True,
            ["--data", str(data / "ml-100k.inter"), "--epochs", str(args.real_epochs)],
        ),
    ):
        if section not in sections:
            continue
        extra = extra + args.real_args.split()
        if not data.exists():
            report += [f"## {section}: skipped (no data folder: --data-dir or $TFAS_DATA_DIR)", ""]
            print(f"{section}: skipped, {data} is absent")
            continue
        rows = results[section] = run_example_bias(args, script, extra)
        plot_bias(rows, metric, label, args.results_dir / f"bias_{section}{suffix}.png", f"{script}: {label} vs m")
        report += [
            f"## Bias: {script} ({label})",
            "",
            _gap_table(rows, metric, higher, ".4f"),
            "",
            f"![bias](bias_{section}{suffix}.png)",
            "",
        ]
    (args.results_dir / f"run{suffix}.json").write_text(
        json.dumps({"machine": machine(), "command": command, "results": results}, indent=1)
    )
    (args.results_dir / f"run{suffix}.md").write_text(header + "\n".join(report))
    print("\n" + header + "\n".join(report))
    print(f"wrote {args.results_dir / ('run' + suffix + '.md')}")
    return results


if __name__ == "__main__":
    main()

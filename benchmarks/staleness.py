"""Staleness: how often must an adaptive proposal be refreshed?

MIDX (k-means, `midx_rvq`) and QuadraticKernel (`quadratic_kernel`) build their proposal q from a
snapshot of the class embeddings; between two refreshes the model moves on and q goes stale. This
script trains the same model with the proposal refreshed every 10, 100 and 1,000 steps and only at
epoch starts (`CodebookRefresh(every_n_steps=None)`), beside what users have today, trained the same way
with nothing to refresh (the full softmax, `tf.nn.sampled_softmax_loss` with `--tf-samples` shared
negatives, Uniform), and reports quality against refresh cost:

    TFAS_DATA_DIR=/path/to/data python -m benchmarks.staleness   # teacher + PTB (about 15 min on 2 quiet cores)
    python -m benchmarks.staleness --quick    # teacher N = 5,000, 1 epoch, every 10 steps / epoch (< 1 min)
    python -m benchmarks.staleness --sections teacher --epochs 3   # one task, other settings
    python -m benchmarks.staleness --rewrite staleness   # re-render results/staleness.md from the .json

Tasks (same m, optimizer, batches, epochs and seed for every row of a task):

1. `teacher`: the synthetic teacher of the demo (`datasets.make_teacher`, N = 100,000 classes, d = 32,
   ids in no particular order; 200,000 training examples, i.e. 782 steps an epoch, 2 epochs), the
   demo's student trained by `experiments.train_and_evaluate` (m = 20 per query, positive corrected,
   batch 256, Adam 3e-3, graph mode). Per row: the exact full-softmax test cross-entropy and
   accuracy@1 at the end; KL(p‖q) of the model's softmax p to the proposal q
   (`diagnostics.ProposalDiagnostics`' numbers, on a fixed probe batch of test queries) at a few
   training steps drawn at random within equal strata of the run (the same steps for every row, so
   each schedule is seen at representative ages of its snapshot), averaged; the number of
   refreshes, the seconds spent refreshing (the first refresh's tracing and k-means++ seeding
   included) and the training seconds (exact evaluations and KL probes excluded), and their ratio.
2. `ptb`: the LSTM language model of `examples/language_model.py` on the PTB subset in the data
   folder (`--data-dir`, default `$TFAS_DATA_DIR`), run as `python -m benchmarks.run --sections ptb`
   runs it (one process a row, its `--json` read back), with `--refresh-every`. Per row: exact test
   cross-entropy and perplexity, refreshes, refresh seconds and fit seconds (the example's epoch
   timer, which includes its per-epoch validation). No KL: the example has no probe hook. Skipped,
   and said so, when the data is absent.

A schedule "every n steps" with n at least the run's number of steps refreshes only at epoch starts
(its step-0 refresh is the first epoch's): it is reported as the epoch-only row, not run again.
Results: `results/staleness.{json,md}` (`--quick`: `results/staleness_quick.*`); prose written
below the marker line of the .md is kept across re-runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = pathlib.Path(__file__).resolve().parent

import numpy as np

from benchmarks.timing import RESULTS, machine, write_markdown_keeping_prose
from benchmarks.timing import optional as _fmt
from tf_adaptive_softmax import _experiments as experiments
from tf_adaptive_softmax import datasets, samplers
from tf_adaptive_softmax.diagnostics import ProposalDiagnostics

NAME = "staleness"
ADAPTIVE_SAMPLERS = "midx_rvq,quadratic_kernel"
SCHEDULES = "10,100,1000,epoch"
# The example's --refresh-every is a step count: one larger than any run leaves only the step-0
# refresh, which the first epoch's refresh already makes, i.e. the epoch-only schedule.
EPOCH_ONLY_STEPS = 2**31 - 1

#: What users have today, trained the same way with nothing to refresh: the full softmax, TF's
#: sampled softmax (log-uniform, shared, as users call it) and Uniform.
REFERENCES = ("full", "tf_sampled", "uniform")

Schedule = Optional[int]  # refresh every n steps (and at epoch starts); None: at epoch starts only


def parse_schedules(text: str) -> List[Schedule]:
    """'10,100,epoch' -> [10, 100, None]."""
    schedules: List[Schedule] = []
    for item in (s.strip() for s in text.split(",")):
        if item:
            schedules.append(None if item == "epoch" else int(item))
    return schedules


def schedule_label(every: Schedule) -> str:
    return "epoch only" if every is None else f"every {every:,} steps"


def probe_steps(total_steps: int, points: int, seed: int = 0) -> List[int]:
    """`points` training steps (1-based, after the step), one drawn at random in each of `points`
    equal strata of the run: the phase relative to a refresh schedule is then uniform, so the mean
    KL over them estimates the time-average staleness rather than the age at a fixed phase."""
    rng = np.random.default_rng(seed)
    points = max(1, min(points, total_steps))
    steps = {min(total_steps, int((j + rng.random()) * total_steps / points) + 1) for j in range(points)}
    return sorted(steps)


class SteppedProposalDiagnostics(ProposalDiagnostics):
    """`ProposalDiagnostics` measured after chosen training steps instead of at epoch ends.

    The measurement runs after the step and before any refresh due at the next one (the refresh
    callback acts at batch begin). Its wall seconds are kept in `seconds`, so that a caller can
    take them out of the training time.
    """

    def __init__(self, *args, steps: Sequence[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = set(steps)
        #: One dict a measurement: {"step", "kl_p_q", "kl_q_p", "ess_ratio", ...}.
        self.points: List[dict] = []
        self.seconds = 0.0
        self._step = 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step not in self.steps:
            return
        start = time.perf_counter()
        stats: Dict[str, float] = {}
        super().on_epoch_end(self._step, stats)  # the epoch-end measurement (its seed: the step)
        self.points.append({"step": self._step, **{key.split("/", 1)[-1]: value for key, value in stats.items()}})
        self.seconds += time.perf_counter() - start

    def on_epoch_end(self, epoch, logs=None):
        pass  # measured at `steps` only


# --------------------------------------------------------------------------------------------
# Task 1: the synthetic teacher, in process.
def teacher_section(args, log: Callable[[str], None]) -> dict:
    n = args.num_classes
    teacher = datasets.make_teacher(n, args.dim, num_clusters=args.num_clusters, seed=0, frequency_sorted_ids=False)
    train, test = datasets.train_test_split(teacher, args.train_examples, args.test_examples)
    counts = np.bincount(train[1], minlength=n).astype(np.float64)
    probe = (test[0][: args.probe_size], test[1][: args.probe_size])
    steps_per_epoch = math.ceil(args.train_examples / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    kl_steps = probe_steps(total_steps, args.kl_points, seed=args.seed)
    section = {
        "N": n,
        "d": args.dim,
        "train_examples": args.train_examples,
        "test_examples": args.test_examples,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "kl_steps": kl_steps,
        "num_clusters": args.num_clusters,
        "num_codewords": args.num_codewords,
        "bayes_floor": teacher.cross_entropy(*test),
        "rows": [],
    }
    runs = [(name, None, None) for name in args.reference_list]
    runs += [
        (name, every, kmeans)
        for name in args.sampler_list
        for every in args.schedule_list
        for kmeans in (args.kmeans_list if name.startswith("midx") else [None])
    ]
    for index, (name, every, kmeans) in enumerate(runs, 1):
        label = name if kmeans is None else f"{name}, k-means {kmeans[0]} it. / tolerance {kmeans[1]:g}"
        row = {"sampler": label, "schedule": schedule_label(every), "every_n_steps": every}
        if every is not None and every >= total_steps:
            section["rows"].append({**row, "same_as": "epoch only"})
            log(f"teacher [{index}/{len(runs)}] {label}, {row['schedule']}: = epoch only ({total_steps} steps)")
            continue
        probes: List[SteppedProposalDiagnostics] = []

        def with_probe(query_model, output) -> list:
            probes.append(SteppedProposalDiagnostics(output, query_model, *probe, repeats=1, steps=kl_steps))
            return probes

        tf_sampled = name == "tf_sampled"
        options = None if kmeans is None else samplers.KMeansOptions(iterations=kmeans[0], tolerance=kmeans[1])
        result = experiments.train_and_evaluate(
            train,
            test,
            n,
            None if tf_sampled else experiments.make_sampler(name, n, counts, args.num_codewords, options),
            args.tf_samples if tf_sampled else args.num_samples,
            args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            refresh_every=every,
            tf_sampled=tf_sampled,
            # KL(p‖q) needs a proposal to read: the full softmax and TF's sampler have none here.
            callbacks=None if name in ("full", "tf_sampled") else with_probe,
        )
        probe_seconds = probes[0].seconds if probes else 0.0
        training_seconds = result["training_seconds"] - probe_seconds
        kl = [point["kl_p_q"] for point in probes[0].points] if probes else []
        row.update(
            test_cross_entropy=result["test_cross_entropy"],
            accuracy_at_1=result["accuracy_at_1"],
            refresh_count=result["refresh_count"],
            refresh_seconds=result["refresh_seconds"],
            training_seconds=training_seconds,
            refresh_share=result["refresh_seconds"] / max(training_seconds, 1e-9),
            kl_mean=float(np.mean(kl)) if kl else None,
            kl_points=probes[0].points if probes else [],
            probe_seconds=probe_seconds,
        )
        section["rows"].append(row)
        log(
            f"teacher [{index}/{len(runs)}] {label}, {row['schedule']}: test CE {row['test_cross_entropy']:.4f}, "
            f"mean KL {_fmt(row['kl_mean'], '.3f')}, {row['refresh_count']} refreshes "
            f"{row['refresh_seconds']:.1f} s of {training_seconds:.1f} s ({row['refresh_share']:.1%})"
        )
    return section


# --------------------------------------------------------------------------------------------
# Task 2: PTB, through examples/language_model.py (one process a row, as benchmarks/run.py does).
def run_language_model(argv: List[str], scratch: pathlib.Path, timeout: float) -> dict:
    """The example's final metrics (its --json), or {"skipped": why}."""
    command = [sys.executable, str(HERE.parent / "examples" / "language_model.py"), *argv]
    command += ["--verbose", "0", "--plot", str(scratch / "curves.png"), "--json", str(scratch / "metrics.json")]
    # The example imports the package: this checkout's, whatever else is installed.
    path = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": path}
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"over the {timeout:.0f} s limit per run"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"skipped": f"failed (exit {done.returncode}): {tail[0][:200]}"}
    metrics = json.loads((scratch / "metrics.json").read_text())
    metrics.pop("curves", None)
    return metrics


def ptb_section(args, log: Callable[[str], None]) -> dict:
    folder = experiments.data_dir(args.data_dir)
    data = folder / "ptb_subset.train.txt" if folder else None
    if data is None or not data.exists():
        where = "no data folder (--data-dir or $TFAS_DATA_DIR)" if folder is None else f"{data} is absent"
        log(f"ptb: skipped, {where}")
        return {"skipped": where}
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="staleness_ptb_"))
    common = ["--data", str(data), "--num-samples", str(args.num_samples), "--epochs", str(args.ptb_epochs)]
    common += ["--seed", str(args.seed), *shlex.split(args.ptb_args)]
    section: dict = {"data": str(data), "epochs": args.ptb_epochs, "example_args": args.ptb_args, "rows": []}
    runs = [(name, [None]) for name in args.reference_list] + [(name, args.schedule_list) for name in args.sampler_list]
    count = sum(len(schedules) for _, schedules in runs)
    index = 0
    for name, schedules in runs:
        # Epoch-only first: its step count tells which step schedules would refresh at epochs only.
        ordered = sorted(schedules, key=lambda every: -1 if every is None else every)
        steps: Optional[int] = None
        rows = []
        for every in ordered:
            index += 1
            row = {"sampler": name, "schedule": schedule_label(every), "every_n_steps": every}
            if every is not None and steps is not None and every >= steps:
                rows.append({**row, "same_as": "epoch only"})
                log(f"ptb [{index}/{count}] {name}, {row['schedule']}: = epoch only ({steps} steps)")
                continue
            argv = common + ["--sampler", name, "--refresh-every", str(every or EPOCH_ONLY_STEPS)]
            if name == "tf_sampled":
                argv += ["--num-samples", str(args.tf_samples)]  # the last flag wins
            start = time.perf_counter()
            row.update(run_language_model(argv, scratch, args.timeout))
            row["wall_seconds"] = time.perf_counter() - start
            rows.append(row)
            if "skipped" in row:
                log(f"ptb [{index}/{count}] {name}, {row['schedule']}: skipped ({row['skipped']})")
                continue
            steps = steps or row.get("training_steps")
            row["refresh_share"] = row["refresh_seconds"] / max(row["fit_seconds"], 1e-9)
            log(
                f"ptb [{index}/{count}] {name}, {row['schedule']}: test perplexity {row['test_perplexity']:.1f}, "
                f"{row['refresh_count']} refreshes {row['refresh_seconds']:.1f} s of {row['fit_seconds']:.1f} s "
                f"({row['wall_seconds']:.0f} s wall)"
            )
        section["rows"] += sorted(rows, key=lambda r: math.inf if r["every_n_steps"] is None else r["every_n_steps"])
    return section


# --------------------------------------------------------------------------------------------
def _resolved(rows: List[dict]) -> List[dict]:
    """Rows with the "same as epoch only" ones carrying the epoch-only row's numbers."""
    epoch = {r["sampler"]: r for r in rows if r["every_n_steps"] is None and "skipped" not in r}
    return [{**epoch[r["sampler"]], **r} if "same_as" in r and r["sampler"] in epoch else r for r in rows]


def advice(rows: List[dict], tolerance: float) -> List[str]:
    """Per adaptive sampler: the sparsest schedule whose test cross-entropy is within `tolerance`
    (relative) of its most frequent schedule's."""
    lines = []
    usable = [r for r in _resolved(rows) if "test_cross_entropy" in r and r["sampler"] not in REFERENCES]
    for name in dict.fromkeys(r["sampler"] for r in usable):
        own = [r for r in usable if r["sampler"] == name]
        own.sort(key=lambda r: math.inf if r["every_n_steps"] is None else r["every_n_steps"])
        best = own[0]["test_cross_entropy"]
        sparsest = next(r for r in reversed(own) if r["test_cross_entropy"] <= best * (1 + tolerance))
        lines.append(
            f"- {name}: {sparsest['schedule']} ({sparsest['test_cross_entropy']:.4f} against "
            f"{best:.4f} {own[0]['schedule']}; {sparsest.get('refresh_share', 0.0):.1%} of training time refreshing)"
        )
    return lines


def teacher_table(section: dict) -> str:
    lines = [
        "| sampler | refresh | refreshes | refresh s | train s | refresh share | mean KL(p‖q) | test cross-entropy "
        "| accuracy@1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        if "same_as" in r:
            lines.append(
                f"| {r['sampler']} | {r['schedule']} | = {r['same_as']} (n ≥ the run's {section['total_steps']:,} "
                "steps) | | | | | | |"
            )
            continue
        lines.append(
            f"| {r['sampler']} | {'—' if r['sampler'] in REFERENCES else r['schedule']} | {r['refresh_count']} | "
            f"{r['refresh_seconds']:.2f} | {r['training_seconds']:.1f} | {r['refresh_share']:.1%} | "
            f"{_fmt(r['kl_mean'], '.3f')} | {r['test_cross_entropy']:.4f} | {r['accuracy_at_1']:.3f} |"
        )
    return "\n".join(lines)


def ptb_table(section: dict) -> str:
    lines = [
        "| sampler | refresh | refreshes | refresh s | fit s (with validation) | refresh share | test cross-entropy "
        "| test perplexity |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        schedule = "—" if r["sampler"] in REFERENCES else r["schedule"]
        if "same_as" in r:
            lines.append(f"| {r['sampler']} | {schedule} | = {r['same_as']} (n ≥ the run's steps) | | | | | |")
        elif "skipped" in r:
            lines.append(f"| {r['sampler']} | {schedule} | skipped: {r['skipped']} | | | | | |")
        else:
            lines.append(
                f"| {r['sampler']} | {schedule} | {r['refresh_count']} | {r['refresh_seconds']:.2f} | "
                f"{r['fit_seconds']:.1f} | {r['refresh_share']:.1%} | {r['test_cross_entropy']:.4f} | "
                f"{r['test_perplexity']:.1f} |"
            )
    return "\n".join(lines)


def render(payload: dict) -> str:
    args = argparse.Namespace(**payload["args"])
    text = [
        "# Staleness: how often must an adaptive proposal be refreshed?",
        "",
        f"Machine: {payload['machine']} (shared with other jobs: timings are indicative).  ",
        f"Command: `{payload['command']}` ({payload['seconds'] / 60:.1f} min).",
    ]
    teacher = payload.get("teacher")
    if teacher:
        text += [
            "",
            f"## Teacher N = {teacher['N']:,}, d = {teacher['d']}"
            + (f", {teacher['num_clusters']:,} class clusters" if teacher.get("num_clusters") else "")
            + (f", MIDX K = {teacher['num_codewords']}" if teacher.get("num_codewords") else "")
            + " (ids in no particular order)",
            "",
            f"{teacher['train_examples']:,} train / {teacher['test_examples']:,} test examples, {args.epochs} "
            f"epoch(s) of {teacher['steps_per_epoch']:,} steps (batch {args.batch_size}, Adam {args.learning_rate:g}), "
            f"m = {args.num_samples} per query, standard logQ, graph mode, seed {args.seed}; "
            "`CodebookRefresh` also refreshes at every epoch start. Mean KL(p‖q): the model's softmax p "
            f"against the proposal q on {args.probe_size} test queries, after steps {teacher['kl_steps']} "
            "(one at random in each equal stratum of the run; the same for every row). Train s: training "
            "wall seconds, refreshes included, exact evaluations and KL probes excluded; refresh share = "
            f"refresh s / train s. Exact test cross-entropy over all N classes; Bayes floor "
            f"{teacher['bayes_floor']:.3f}.",
            "",
            teacher_table(teacher),
            "",
            f"Sparsest schedule within {args.tolerance:.1%} of the most frequent one's test cross-entropy:",
            *advice(teacher["rows"], args.tolerance),
        ]
    ptb = payload.get("ptb")
    if ptb is not None:
        text += ["", "## PTB subset: LSTM language model (`examples/language_model.py`)", ""]
        if "skipped" in ptb:
            text.append(f"Skipped: {ptb['skipped']}.")
        else:
            text += [
                f"`{ptb['data']}`, {ptb['epochs']} epochs, m = {args.num_samples}, the example's other defaults "
                f"with `{ptb['example_args'] or '(none)'}`. Fit s: the example's epoch timer (its per-epoch "
                "validation included); test cross-entropy: the exact full softmax over the vocabulary.",
                "",
                ptb_table(ptb),
                "",
                f"Sparsest schedule within {args.tolerance:.1%} of the most frequent one's test cross-entropy:",
                *advice(ptb["rows"], args.tolerance),
            ]
    return "\n".join(text)


def write(name: str, payload: dict, out_dir: pathlib.Path) -> pathlib.Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / f"{name}.md"
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2))
    write_markdown_keeping_prose(md_path, render(payload))
    print(f"wrote {md_path} and {name}.json")
    return md_path


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="N = 5,000, 1 epoch, every 10 steps and epoch only, teacher only"
    )
    parser.add_argument("--sections", default="teacher,ptb", help="teacher and/or ptb")
    parser.add_argument("--samplers", default=ADAPTIVE_SAMPLERS, help="adaptive samplers (experiments.SAMPLERS)")
    parser.add_argument("--schedules", default=SCHEDULES, help="refresh every n steps; 'epoch': epoch starts only")
    parser.add_argument("--num-samples", type=int, default=20, help="m per query")
    parser.add_argument(
        "--tf-samples", type=int, default=512, help="m of tf.nn.sampled_softmax_loss (shared by the batch, as the demo)"
    )
    parser.add_argument("--references", default=",".join(REFERENCES), help="reference rows ('' for none)")
    parser.add_argument("--num-codewords", type=int, default=None, help="MIDX K (default: its N-based default)")
    parser.add_argument(
        "--kmeans",
        default="",
        help="teacher: MIDX rows once per ITERATIONS:TOLERANCE pair, e.g. 10:0,10:0.1 (default: KMeansOptions())",
    )
    parser.add_argument("--num-clusters", type=int, default=None, help="teacher class clusters (default ~sqrt(N))")
    parser.add_argument("--num-classes", type=int, default=100_000, help="teacher N")
    parser.add_argument("--dim", type=int, default=32, help="teacher d")
    parser.add_argument("--train-examples", type=int, default=200_000)
    parser.add_argument("--test-examples", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=2, help="teacher epochs, the same for every row")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--probe-size", type=int, default=64, help="test queries of the KL probe")
    parser.add_argument("--kl-points", type=int, default=12, help="KL measurements per training run")
    parser.add_argument("--ptb-epochs", type=int, default=2, help="PTB epochs, the same for every row")
    parser.add_argument("--ptb-args", default="--dim 64", help="other flags for examples/language_model.py")
    parser.add_argument("--data-dir", default=None, help="folder with ptb_subset.train.txt (default $TFAS_DATA_DIR)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per PTB run")
    parser.add_argument("--tolerance", type=float, default=0.01, help="relative test cross-entropy tolerance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(RESULTS), help="where the .md and .json go")
    parser.add_argument("--tag", default=None, help="suffix of the result files (default: 'quick' with --quick)")
    parser.add_argument(
        "--rewrite", metavar="NAME", help="only re-render results/NAME.md from results/NAME.json (no measurement)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        # Explicit flags after --quick still count where they differ from the defaults.
        defaults = parser.parse_args([])
        quick = {"num_classes": 5_000, "train_examples": 20_000, "test_examples": 2_000, "epochs": 1}
        quick.update(schedules="10,epoch", sections="teacher", kl_points=4)
        for key, value in quick.items():
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
    args.sampler_list = [s for s in args.samplers.split(",") if s]
    args.reference_list = [s for s in args.references.split(",") if s]
    args.schedule_list = parse_schedules(args.schedules)
    args.kmeans_list = [
        (int(it), float(tol)) for it, tol in (pair.split(":") for pair in args.kmeans.split(",") if pair)
    ] or [None]
    unknown = sorted(set(args.sampler_list) - set(experiments.SAMPLERS))
    if unknown:
        raise SystemExit(f"Unknown sampler(s) {unknown}; choose from {sorted(experiments.SAMPLERS)}.")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out_dir = pathlib.Path(args.out_dir)
    if args.rewrite:
        write(args.rewrite, json.loads((out_dir / f"{args.rewrite}.json").read_text()), out_dir)
        return {}
    tag = args.tag if args.tag is not None else ("quick" if args.quick else "")
    command = "python -m benchmarks.staleness" + "".join(f" {shlex.quote(a)}" for a in argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    begin = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - begin) / 60:5.1f} min] {message}", flush=True)

    payload: dict = {"machine": machine(), "command": command}
    lists = ("sampler_list", "schedule_list", "reference_list", "kmeans_list")
    stored_args = {k: v for k, v in vars(args).items() if k not in lists}
    if "teacher" in sections:
        payload["teacher"] = teacher_section(args, log)
    if "ptb" in sections:
        payload["ptb"] = ptb_section(args, log)
    payload.update(seconds=time.perf_counter() - begin, args=stored_args)
    write(NAME + (f"_{tag}" if tag else ""), payload, out_dir)
    print("\n" + render(payload))
    return payload


if __name__ == "__main__":
    main()

"""MIDX codebook size K: KL(p‖q) and test cross-entropy against refresh (and draw) cost.

The sweep behind `MIDX`'s default `num_codewords` (`samplers.midx._default_num_codewords`).

    python -m benchmarks.num_codewords            # N = 10^4, 10^5, 10^6 (about 30 minutes on 2 shared cores)
    python -m benchmarks.num_codewords --quick    # N = 10^4 only, K = 16 and 64 (under 2 minutes)
    python -m benchmarks.num_codewords --rewrite num_codewords   # re-render the .md from the .json

Two parts, both on the synthetic teacher (`datasets.make_teacher(N, d, seed=0)`):

1. Proposal quality and refresh cost (every N). The teacher's class embeddings and Zipf bias play
   the trained model: a `MIDX(N, K, quantizer, include_bias=True)` is refreshed from them with the
   graph function `CodebookRefresh` uses (`sampler.compiled_refresh`): the first call (tracing +
   k-means++ seeding + 10 Lloyd iterations per codebook) and a second, warm-started one are timed,
   with the peak resident-memory increase of each (Linux VmHWM, reset before the call). KL(p‖q) is
   averaged over 256 probe queries x ~ N(0, I), with p = softmax(x Wᵀ + b) over all N classes and
   q = exp(sampler.log_prob(x, all ids)), computed 32,768 classes at a time. Uniform's KL
   (log q = −log N) is the reference. The cost of one `sample(m=20)` + `log_prob` of the positives
   for a batch of 256 queries is timed too (graph mode). Every configuration runs in its own
   process, so its memory and first-call numbers do not depend on what ran before.
2. Test cross-entropy (N = 10^4 and 10^5). A student (Dense relu 2d -> Dense d query tower and an
   `AdaptiveSampledSoftmaxLoss`, m = 20, the standard logQ, `CodebookRefresh(every_n_steps=100)`)
   is trained on 50k teacher examples for 2 epochs (batch 256, Adam 3e-3, graph mode, seed 0) with
   each (quantizer, K), with Uniform and with the full softmax; the exact full-softmax test
   cross-entropy on 5k test examples is reported with the refresh's share of the training time.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import timing
from benchmarks.timing import RESULTS, machine, measured, memory_mb

NAME = "num_codewords"
CHUNK_CLASSES = 1 << 15
PROBE_QUERIES = 256
NUM_SAMPLES = 20


# --------------------------------------------------------------------------------------------
class TeacherKL:
    """KL(p‖q) of a proposal q to the teacher's softmax p = softmax(x Wᵀ + b), averaged over probe
    queries x ~ N(0, I); p and q are computed `CHUNK_CLASSES` classes at a time, so memory stays
    O(queries x chunk) at any N. Also used by `refresh_scale.py --sections kl`."""

    def __init__(self, weights, bias, num_queries: int = PROBE_QUERIES, seed: int = 12345):
        import numpy as np
        import tensorflow as tf

        self.weights, self.bias = weights, bias
        self.num_classes, dim = weights.shape
        self.queries = tf.constant(np.random.default_rng(seed).standard_normal((num_queries, dim)).astype(np.float32))
        self.starts = list(range(0, self.num_classes, CHUNK_CLASSES))
        self._chunk_logits = tf.function(self._logits)
        # log Z of the teacher's softmax for every probe query, chunk by chunk.
        log_z = tf.fill([num_queries], -np.inf)
        for start, stop in self._chunks():
            logits = self._chunk_logits(start, stop)
            log_z = tf.reduce_logsumexp(tf.stack([log_z, tf.reduce_logsumexp(logits, 1)]), 0)
        self.log_z = log_z

    def _logits(self, start, stop):
        import tensorflow as tf

        return tf.matmul(self.queries, self.weights[start:stop], transpose_b=True) + self.bias[start:stop]

    def _chunks(self):
        import tensorflow as tf

        for start in self.starts:
            yield tf.constant(start), tf.constant(min(self.num_classes, start + CHUNK_CLASSES))

    def __call__(self, sampler) -> tuple:
        """(KL(p‖q) in nats, the teacher's entropy): q = `sampler`'s log_prob, or Uniform if None."""
        import numpy as np
        import tensorflow as tf

        queries, log_z, n = self.queries, self.log_z, self.num_classes

        @tf.function
        def chunk_kl_terms(start, stop):
            log_p = self._chunk_logits(start, stop) - log_z[:, tf.newaxis]
            p = tf.exp(log_p)
            if sampler is None:
                log_q = tf.fill(tf.shape(log_p), -float(np.log(n)))
            else:
                ids = tf.broadcast_to(tf.range(start, stop)[tf.newaxis], tf.shape(log_p))
                log_q = sampler.log_prob(queries, ids)
            return tf.reduce_sum(p * log_p, 1), tf.reduce_sum(p * log_q, 1)

        negative_entropy = np.zeros(queries.shape[0])
        cross = np.zeros(queries.shape[0])
        for start, stop in self._chunks():
            a, b = chunk_kl_terms(start, stop)
            negative_entropy += a.numpy()
            cross += b.numpy()
        return float(np.mean(negative_entropy - cross)), float(-np.mean(negative_entropy))


# --------------------------------------------------------------------------------------------
# Part 1: one (N, d, quantizer, K) configuration, in a worker process.
def worker(spec: dict) -> dict:
    import numpy as np
    import tensorflow as tf

    from benchmarks.timing import time_call
    from tf_adaptive_softmax import datasets, samplers

    n, d, quantizer, k = spec["N"], spec["d"], spec["quantizer"], spec["K"]
    teacher = datasets.make_teacher(n, d, seed=0)
    weights, bias = tf.constant(teacher.class_embeddings), tf.constant(teacher.class_bias)
    kl_to_teacher = TeacherKL(weights, bias)

    row = dict(spec)
    sampler = None
    if quantizer != "uniform":
        sampler = samplers.MIDX(n, num_codewords=k, quantizer=quantizer, include_bias=True, seed=0)
        refresh = sampler.compiled_refresh(lambda: (weights, bias))
        _, row["first_refresh_s"], row["first_refresh_peak_mb"] = measured(lambda: bool(refresh("raise")))
        _, row["warm_refresh_s"], row["warm_refresh_peak_mb"] = measured(lambda: bool(refresh("raise")))
        row["state_mb"] = sampler.state_bytes() / 2**20
        sizes = sampler.bucket_sizes.numpy()
        row["nonempty_buckets"] = int((sizes > 0).sum())
        row["largest_bucket"] = int(sizes.max())

    start_time = time.perf_counter()
    row["kl_p_q"], row["teacher_entropy"] = kl_to_teacher(sampler)
    row["kl_s"] = time.perf_counter() - start_time
    if sampler is not None:
        queries = kl_to_teacher.queries
        labels = tf.constant(np.random.default_rng(1).integers(0, n, (PROBE_QUERIES, 1)), tf.int32)
        draw = tf.function(lambda q: (sampler.sample(q, NUM_SAMPLES), sampler.log_prob(q, labels)))
        row["sample_ms"] = 1e3 * time_call(lambda: draw(queries)[0], repeats=9, warmup=2)["median_s"]
    row["process_peak_mb"] = memory_mb("VmHWM")
    return row


def run_worker(spec: dict, timeout: float) -> dict:
    return timing.run_worker("benchmarks.num_codewords", spec, timeout)


# --------------------------------------------------------------------------------------------
# Part 2: train a student with each sampler; exact test cross-entropy.
def train_student(train, test, num_classes, sampler, args) -> dict:
    import numpy as np
    import tensorflow as tf

    from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, CodebookRefresh, SampledSoftmaxLoss

    K = tf.keras  # the flavour the package resolved (Keras 3, or tf_keras with TF_USE_LEGACY_KERAS=1)

    (x_train, y_train), (x_test, y_test) = train, test
    K.backend.clear_session()
    K.utils.set_random_seed(args.seed)
    dim = x_train.shape[1]
    features = K.Input((dim,))
    hidden = K.layers.Dense(2 * dim, activation="relu")(features)
    model = K.Model(features, K.layers.Dense(dim)(hidden))
    output = AdaptiveSampledSoftmaxLoss(num_classes, sampler, num_samples=NUM_SAMPLES)
    model.compile(optimizer=K.optimizers.Adam(args.learning_rate), loss=SampledSoftmaxLoss(output, model=model))
    refresh = CodebookRefresh(output, every_n_steps=100)
    start = time.perf_counter()
    model.fit(
        x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0, shuffle=True, callbacks=[refresh]
    )
    fit_seconds = time.perf_counter() - start

    @tf.function(input_signature=[tf.TensorSpec([None, dim], tf.float32), tf.TensorSpec([None], tf.int32)])
    def example_losses(x, y):
        logits = output.logits(model(x, training=False))
        return tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits), tf.argmax(logits, 1, tf.int32) == y

    losses, hits = [], []
    for i in range(0, len(y_test), 256):  # [256, N] logits at a time
        loss, hit = example_losses(x_test[i : i + 256], y_test[i : i + 256])
        losses.append(loss.numpy())
        hits.append(hit.numpy())
    return {
        "test_cross_entropy": float(np.mean(np.concatenate(losses))),
        "accuracy_at_1": float(np.mean(np.concatenate(hits))),
        "fit_s": fit_seconds,
        "refresh_s": refresh.refresh_seconds,
        "refresh_count": refresh.refresh_count,
        "refresh_share": refresh.refresh_seconds / fit_seconds,
    }


def training_sweep(n, args, ks, quantizers, log) -> list:
    from tf_adaptive_softmax import datasets, samplers

    teacher = datasets.make_teacher(n, args.dim, seed=0)
    train, test = datasets.train_test_split(teacher, args.train_examples, args.test_examples)
    floor = teacher.cross_entropy(*test)
    references = [name for name in ("full softmax", "uniform") if name.split()[0] in args.references.split(",")]
    runs = [(name, None) for name in references] + [(q, k) for q in quantizers for k in ks]
    rows = []
    for index, (name, k) in enumerate(runs, 1):
        if name == "full softmax":
            sampler = None
        elif name == "uniform":
            sampler = samplers.Uniform(n, seed=args.seed + 1)
        else:
            sampler = samplers.MIDX(n, num_codewords=k, quantizer=name, include_bias=True, seed=args.seed + 1)
        metrics = train_student(train, test, n, sampler, args)
        row = {"N": n, "d": args.dim, "sampler": name, "K": k, "bayes_floor": floor, **metrics}
        rows.append(row)
        log(
            f"  train N={n:,} [{index}/{len(runs)}] {name}{'' if k is None else f' K={k}'}: "
            f"test CE {row['test_cross_entropy']:.4f} (floor {floor:.4f}), fit {row['fit_s']:.1f} s, "
            f"refresh {row['refresh_share']:.1%} ({row['refresh_count']}x)"
        )
        del sampler
    return rows


# --------------------------------------------------------------------------------------------
_fmt = timing.optional


def kl_tables(rows) -> str:
    lines = []
    groups = sorted({(r["N"], r["d"]) for r in rows})
    for n, d in groups:
        group = [r for r in rows if r["N"] == n and r["d"] == d]
        uniform = next((r for r in group if r["quantizer"] == "uniform" and "kl_p_q" in r), None)
        lines += [
            "",
            f"**N = {n:,}, d = {d}** (teacher entropy {group[0].get('teacher_entropy', float('nan')):.3f} nats; "
            f"KL(p‖Uniform) = {_fmt(uniform and uniform['kl_p_q'], '.3f')})",
            "",
            "| quantizer | K | KL(p‖q) | KL / KL(Uniform) | first refresh s | warm refresh s | peak MB first / warm "
            "| sample+log_prob ms (B=256, m=20) | non-empty buckets | largest bucket | state MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in group:
            if r["quantizer"] == "uniform":
                continue
            if "skipped" in r:
                lines.append(f"| {r['quantizer']} | {r['K']} | skipped: {r['skipped']} | | | | | | | | |")
                continue
            ratio = r["kl_p_q"] / uniform["kl_p_q"] if uniform else None
            lines.append(
                f"| {r['quantizer']} | {r['K']} | {r['kl_p_q']:.3f} | {_fmt(ratio, '.3f')} | "
                f"{r['first_refresh_s']:.2f} | {r['warm_refresh_s']:.2f} | "
                f"{_fmt(r['first_refresh_peak_mb'], '.0f')} / {_fmt(r['warm_refresh_peak_mb'], '.0f')} | "
                f"{r['sample_ms']:.1f} | {r['nonempty_buckets']:,} / {r['K'] ** 2:,} | {r['largest_bucket']:,} | "
                f"{r['state_mb']:.1f} |"
            )
    return "\n".join(lines)


def training_tables(rows) -> str:
    lines = []
    for n in sorted({r["N"] for r in rows}):
        group = [r for r in rows if r["N"] == n]
        full = next((r for r in group if r["sampler"] == "full softmax"), None)
        lines += [
            "",
            f"**N = {n:,}, d = {group[0]['d']}** (Bayes floor {group[0]['bayes_floor']:.3f})",
            "",
            "| training loss | K | test cross-entropy | gap to full softmax | accuracy@1 | fit s | refreshes "
            "| refresh share of fit |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in group:
            lines.append(
                f"| {r['sampler']} | {r['K'] or '—'} | {r['test_cross_entropy']:.4f} | "
                f"{_fmt(full and r['test_cross_entropy'] - full['test_cross_entropy'], '+.4f')} | "
                f"{r['accuracy_at_1']:.3f} | "
                f"{r['fit_s']:.1f} | {r['refresh_count']} | {r['refresh_share']:.1%} |"
            )
    return "\n".join(lines)


def rule_table(sizes) -> str:
    try:
        from tf_adaptive_softmax.samplers.midx import _default_num_codewords
    except ImportError:  # older library: no rule yet
        return "(no `_default_num_codewords` in this version of the library)"

    cells = [
        f"| N | {' | '.join(f'{n:,}' for n in sizes)} |",
        "|---|" + "---:|" * len(sizes),
        f"| default K | {' | '.join(str(_default_num_codewords(n)) for n in sizes)} |",
    ]
    return "\n".join(cells)


def write(name, args, command, kl_rows, train_rows, seconds, machine_line=None) -> None:
    machine_line = machine_line or machine()
    out_dir = pathlib.Path(getattr(args, "out_dir", None) or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / f"{name}.md"
    payload = {
        "machine": machine_line,
        "command": command,
        "seconds": seconds,
        "args": vars(args),
        "kl_rows": kl_rows,
        "training_rows": train_rows,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2))
    text = [
        "# MIDX codebook size K: proposal quality against refresh cost",
        "",
        f"Machine: {machine_line} (shared with other jobs: timings are indicative).  ",
        f"Command: `{command}` ({seconds / 60:.1f} min).",
        "",
        "## KL(p‖q) of the proposal to the teacher's softmax, refresh and draw cost",
        "",
        "Refresh = `sampler.compiled_refresh` (the graph function `CodebookRefresh` calls), "
        "include_bias=True, 10 Lloyd iterations per codebook; first = tracing + k-means++ seeding, "
        "warm = warm-started from the previous codebooks. Peak MB = increase of the process's peak "
        "RSS over its RSS before the call (each configuration in a fresh process). KL over "
        f"{PROBE_QUERIES} probe queries x ~ N(0, I).",
        kl_tables(kl_rows),
    ]
    if train_rows:
        text += [
            "",
            "## Test cross-entropy of a student trained with each proposal",
            "",
            f"{args.train_examples:,} train / {args.test_examples:,} test examples, {args.epochs} epochs, "
            f"batch {args.batch_size}, Adam {args.learning_rate:g}, m = {NUM_SAMPLES}, standard logQ, "
            f"CodebookRefresh(every_n_steps=100) (plus each epoch start), graph mode, seed {getattr(args, 'seed', 0)}. "
            "Exact "
            "full-softmax cross-entropy on the test split.",
            training_tables(train_rows),
        ]
    text += [
        "",
        "## The default rule (`samplers.midx._default_num_codewords`)",
        "",
        rule_table([1_000, 10_000, 100_000, 1_000_000, 10_000_000]),
    ]
    timing.write_markdown_keeping_prose(md_path, "\n".join(text))
    print(f"wrote {md_path} and {name}.json")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 10^4 only, K = 16 and 64, small training")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="N values for the KL sweep")
    parser.add_argument("--train-sizes", default="10000,100000", help="N values for the training sweep")
    parser.add_argument("--codewords", default="16,32,64,128,256")
    parser.add_argument("--quantizers", default="rvq,pq")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--extra-dim", type=int, default=64, help="also sweep this d at N = 10^5 (0: no)")
    parser.add_argument("--train-examples", type=int, default=50_000)
    parser.add_argument("--test-examples", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--references", default="full,uniform", help="reference runs in the training sweep")
    parser.add_argument("--seed", type=int, default=0, help="training seed (student, shuffling, sampler)")
    parser.add_argument("--out-dir", default=str(RESULTS), help="where the .md and .json go")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per KL configuration")
    parser.add_argument(
        "--rewrite", metavar="NAME", help="only re-render results/NAME.md from results/NAME.json (no measurement)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if args.rewrite:
        saved = json.loads((RESULTS / f"{args.rewrite}.json").read_text())
        write(
            args.rewrite,
            argparse.Namespace(**saved["args"]),
            saved["command"],
            saved["kl_rows"],
            saved["training_rows"],
            saved["seconds"],
            saved["machine"],
        )
        return
    if args.quick:
        args.sizes, args.train_sizes, args.codewords, args.extra_dim = "10000", "10000", "16,64", 0
        args.train_examples, args.test_examples, args.epochs = 10_000, 2_000, 1
    command = "python -m benchmarks.num_codewords" + "".join(f" {shlex.quote(a)}" for a in (argv or []))
    ks = [int(k) for k in args.codewords.split(",")]
    quantizers = args.quantizers.split(",")
    begin = time.perf_counter()

    def log(message):
        print(f"[{(time.perf_counter() - begin) / 60:5.1f} min] {message}", flush=True)

    groups = [(int(n), args.dim) for n in args.sizes.split(",") if n]
    if args.extra_dim and 100_000 in [n for n, _ in groups]:
        groups.insert(next(i for i, g in enumerate(groups) if g[0] == 100_000) + 1, (100_000, args.extra_dim))
    kl_rows = []
    for n, d in groups:
        specs = [{"N": n, "d": d, "quantizer": "uniform", "K": None}]
        specs += [{"N": n, "d": d, "quantizer": q, "K": k} for q in quantizers for k in ks if k <= n]
        for spec in specs:
            row = run_worker(spec, args.timeout)
            kl_rows.append(row)
            if "skipped" in row:
                log(f"KL N={n:,} d={d} {spec['quantizer']} K={spec['K']}: skipped ({row['skipped']})")
            elif spec["quantizer"] == "uniform":
                log(f"KL N={n:,} d={d} uniform: {row['kl_p_q']:.3f}")
            else:
                log(
                    f"KL N={n:,} d={d} {row['quantizer']} K={row['K']}: {row['kl_p_q']:.3f}; refresh first "
                    f"{row['first_refresh_s']:.2f} s (+{_fmt(row['first_refresh_peak_mb'], '.0f')} MB), warm "
                    f"{row['warm_refresh_s']:.2f} s; sample {row['sample_ms']:.1f} ms; process peak "
                    f"{row['process_peak_mb']:.0f} MB"
                )
    train_rows = []
    for n in [int(n) for n in args.train_sizes.split(",") if n]:
        train_rows += training_sweep(n, args, ks, quantizers, log)
    write(NAME + ("_quick" if args.quick else ""), args, command, kl_rows, train_rows, time.perf_counter() - begin)


if __name__ == "__main__":
    main(sys.argv[1:])

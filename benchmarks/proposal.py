"""How close MIDX's proposal q gets to the model's softmax p, knob by knob, at a fixed model state.

python -m benchmarks.proposal                                   # the clustered teachers (about 20 minutes)
python -m benchmarks.proposal --teachers 20000:300:1 --quick    # one teacher, fewer rows
python -m benchmarks.proposal --teachers "" --state gowalla_state.npz --name gowalla
    # a trained model: `examples/history_model.py --only "Full softmax" --save-state gowalla_state.npz`

A state is a softmax p(i | h) ∝ exp(⟨h, w_i⟩ + b_i) and two disjoint sets of queries: `fit`
queries, the only ones a proposal may learn from (query statistics), and `eval` queries, on which
every number is measured. The clustered teachers (`datasets.make_teacher`, ids shuffled, h ~ N(0, I))
are their own model; `--state` reads a trained one. Per proposal, averaged over the eval queries:

* KL(p‖q), split by MIDX's bucket partition into the error *between* buckets, Σ_b P_b log(P_b/Q_b),
  and the error *within* them (the rest), and by popularity: the q mass on the 1% most frequent
  classes against p's;
* ESS/m = 1 / Σ_i p_i²/q_i, the effective sample size per draw of importance weights p/q;
* the bias of the sampled log-partition, E[log((1/m) Σ_j exp(s_j)/q(j))] − log Z, at m draws:
  the error sampled softmax makes in the loss (0 when q = p; it shrinks with m).

Library rows are `samplers.MIDX` options (after three refreshes on the state, as after 300 steps
of training at the default cadence). Rows marked "(prototype)" are proposals this script computes
in NumPy to see whether they are worth building; their cost is stated, not measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from benchmarks.timing import write_results
from tf_adaptive_softmax import _quantization, datasets, samplers
from tf_adaptive_softmax._ops.random import sub_seed

SAMPLE_SIZES = (5, 10, 20, 50)


@dataclasses.dataclass
class State:
    """A model's softmax and its queries (see the module docstring)."""

    name: str
    class_embeddings: np.ndarray  # [N, d]
    class_bias: np.ndarray  # [N]
    counts: np.ndarray  # [N] training label counts
    fit_queries: np.ndarray  # [B, d]
    eval_queries: np.ndarray  # [B, d]

    @property
    def num_classes(self) -> int:
        return len(self.class_bias)

    def logits(self, queries: np.ndarray) -> np.ndarray:
        return queries.astype(np.float64) @ self.class_embeddings.T.astype(np.float64) + self.class_bias

    @functools.cached_property
    def eval_logits(self) -> np.ndarray:
        """[B, N] logits of the eval queries: every proposal is measured against the same p."""
        return self.logits(self.eval_queries)

    @functools.cached_property
    def eval_log_p(self) -> np.ndarray:
        return _normalized(self.eval_logits)


def teacher_state(num_classes: int, clusters: int, zipf: float, probes: int, seed: int = 0) -> State:
    """A shuffled-id clustered teacher; counts from 200,000 of its draws."""
    teacher = datasets.make_teacher(
        num_classes, 32, num_clusters=clusters, zipf_exponent=zipf, seed=seed, frequency_sorted_ids=False
    )
    _, labels = teacher.sample(200_000, seed=seed + 1)
    rng = np.random.default_rng(seed + 2)
    fit, evaluate = (rng.standard_normal((probes, 32)).astype(np.float32) for _ in range(2))
    name = f"teacher N={num_classes:,}, {clusters} clusters, Zipf {zipf:g}"
    return State(
        name,
        teacher.class_embeddings,
        teacher.class_bias,
        np.bincount(labels, minlength=num_classes),
        fit,
        evaluate,
    )


def saved_state(path: str, name: str, probes: int) -> State:
    """A trained model written by `examples/history_model.py --save-state`."""
    saved = np.load(path)
    return State(
        name,
        saved["class_embeddings"],
        saved["class_bias"],
        saved["counts"],
        saved["fit_queries"][:probes],
        saved["eval_queries"][:probes],
    )


def _normalized(log_q: np.ndarray) -> np.ndarray:
    return log_q - np.logaddexp.reduce(log_q, axis=1, keepdims=True)


def _midx(state: State, refreshes: int = 3, **options) -> samplers.MIDX:
    sampler = samplers.MIDX(state.num_classes, include_bias=options.pop("include_bias", True), seed=0, **options)
    for _ in range(refreshes):
        sampler.refresh(state.class_embeddings, state.class_bias)
    return sampler


def _library_log_q(sampler: samplers.Sampler, queries: np.ndarray, chunk: int = 64) -> np.ndarray:
    ids = tf.tile(tf.range(sampler.num_classes)[tf.newaxis], [chunk, 1])
    parts = []
    for start in range(0, len(queries), chunk):
        rows = tf.constant(queries[start : start + chunk])
        parts.append(sampler.log_prob(rows, ids[: rows.shape[0]]).numpy().astype(np.float64))
    return _normalized(np.concatenate(parts))


def _quantized(sampler: samplers.MIDX) -> np.ndarray:
    """q̂_i, the embedding MIDX scores class i with: c¹ + c² (rvq) or [c¹; c²] (pq)."""
    codes = sampler.codes.numpy()
    first, second = (codebook.numpy() for codebook in sampler.codebooks)
    return _quantization.reconstruct(first, second, codes[:, 0], codes[:, 1], sampler.quantizer).numpy()


def _static_log_weight(sampler: samplers.MIDX, state: State) -> np.ndarray:
    """log w_i, MIDX's in-bucket weight (the bias with include_bias, log counts^power with unigram)."""
    if sampler.weighted:
        return sampler.class_log_weight.numpy().astype(np.float64)
    return np.zeros(state.num_classes)


# -- prototypes: the same q(i | h) ∝ exp(⟨h, q̂_i⟩) · w_i with other q̂ or w ------------------------
def gaussian_weights(base: samplers.MIDX, quantized: np.ndarray, state: State) -> np.ndarray:
    """log w_i + ⟨μ, r_i⟩ + ½ r_iᵀ Σ r_i: the in-bucket weight times E_h[exp(⟨h, r_i⟩)] for Gaussian
    queries (mean μ, covariance Σ of the fit queries), r_i = w_i − q̂_i the class's residual. Cost:
    a refresh adds O(N·d²) (Σ from queries the owner would track); draws unchanged."""
    residual = state.class_embeddings - quantized
    mean = state.fit_queries.mean(0)
    covariance = np.cov(state.fit_queries.T)
    correction = residual @ mean + 0.5 * np.einsum("nd,de,ne->n", residual, covariance, residual)
    return _static_log_weight(base, state) + correction


def oracle_weights(base: samplers.MIDX, quantized: np.ndarray, state: State, iterations: int = 30) -> np.ndarray:
    """The in-bucket weights that best match p on the fit queries (moment matching: E_h q_i = E_h p_i,
    the stationary point of E_h KL(p‖q) over static weights): a bound on what any query-independent
    in-bucket weighting can reach. Not buildable (it reads p on the fit queries)."""
    scores = state.fit_queries @ quantized.T
    target = np.log(np.exp(_normalized(state.logits(state.fit_queries))).mean(0) + 1e-300)
    log_weight = _static_log_weight(base, state)
    for _ in range(iterations):
        log_q = _normalized(scores + log_weight)
        log_weight = log_weight + target - np.log(np.exp(log_q).mean(0) + 1e-300)
    return log_weight


def third_codebook(quantized: np.ndarray, state: State, num_codewords: int) -> np.ndarray:
    """q̂ + c³ with a third k-means codebook on the rvq residuals w − q̂ (K³ cells): the draw's
    first marginal then costs O(K³) per query instead of O(K²)."""
    residual = tf.constant(state.class_embeddings - quantized)
    seed = sub_seed(tf.constant([0, 3]), 3)
    start = _quantization.kmeans_plus_plus(residual, num_codewords, seed)
    centroids, codes = _quantization.kmeans(residual, start, 10, seed)
    return quantized + tf.gather(centroids, codes).numpy()


# -- measurements ----------------------------------------------------------------------------
def measure(state: State, log_q: np.ndarray, buckets: np.ndarray, head: np.ndarray, seed: int = 0) -> Dict:
    """The module docstring's numbers for one proposal (log q [B, N] on the eval queries)."""
    logits, log_p = state.eval_logits, state.eval_log_p
    p, q = np.exp(log_p), np.exp(log_q)
    kl = np.sum(p * (log_p - log_q), axis=1)
    num_buckets = int(buckets.max()) + 1
    between = np.zeros(len(p))
    for row in range(len(p)):
        mass_p = np.bincount(buckets, p[row], num_buckets)
        mass_q = np.bincount(buckets, q[row], num_buckets)
        used = mass_p > 0
        between[row] = np.sum(mass_p[used] * np.log(mass_p[used] / np.maximum(mass_q[used], 1e-300)))
    ess = 1.0 / np.sum(p * p / np.maximum(q, 1e-300), axis=1)
    log_z = np.logaddexp.reduce(logits, axis=1)
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(q, axis=1)
    bias = {}
    for m in SAMPLE_SIZES:
        estimates = []
        for row in range(len(p)):
            ids = np.minimum(np.searchsorted(cumulative[row], rng.random(4 * m) * cumulative[row, -1]), len(q[row]) - 1)
            ratios = (logits[row, ids] - log_q[row, ids]).reshape(4, m)
            estimates.append(np.logaddexp.reduce(ratios, axis=1) - math.log(m) - log_z[row])
        bias[m] = float(np.mean(estimates))
    return {
        "kl": float(kl.mean()),
        "kl_between": float(between.mean()),
        "kl_within": float((kl - between).mean()),
        "head_q": float(q[:, head].sum(1).mean()),
        "head_p": float(p[:, head].sum(1).mean()),
        "ess_ratio": float(ess.mean()),
        "log_z_bias": bias,
    }


def proposals(state: State, quick: bool) -> Tuple[List[tuple], samplers.MIDX]:
    """((name, kind, cost, log q [B, N] on the eval queries) of every row, the default MIDX)."""
    n, eval_queries = state.num_classes, state.eval_queries
    k = samplers.MIDX(n).num_codewords
    base = _midx(state)
    quantized = _quantized(base)
    base_scores = eval_queries @ quantized.T
    uniform_log_q = np.full((len(eval_queries), n), -math.log(n))
    unigram_log_q = _library_log_q(samplers.Unigram(state.counts + 1.0, power=0.75), eval_queries)
    midx_log_q = _library_log_q(base, eval_queries)
    rows: List[tuple] = [
        ("Uniform", "static", "O(1) a draw", uniform_log_q),
        ("Unigram (count^0.75)", "static", "O(1) a draw", unigram_log_q),
        (
            "LogUniform (tf.nn.sampled_softmax_loss's proposal)",
            "static",
            "O(1) a draw",
            _library_log_q(samplers.LogUniform(n), eval_queries),
        ),
        (
            f"MIDX rvq K={k}, include_bias (default)",
            "library",
            "O(K·d + K²) a query",
            midx_log_q,
        ),
    ]
    variants: Dict[str, Callable[[], samplers.MIDX]] = {
        f"K={k // 2}": lambda: _midx(state, num_codewords=k // 2),
        f"K={2 * k}": lambda: _midx(state, num_codewords=2 * k),
        "pq": lambda: _midx(state, quantizer="pq"),
        "no include_bias": lambda: _midx(state, include_bias=False),
        "residual unigram (counts), no bias": lambda: _midx(
            state, include_bias=False, residual="unigram", counts=state.counts + 1.0
        ),
        "k-means 1 iteration a refresh": lambda: _midx(state, kmeans=samplers.KMeansOptions(iterations=1)),
        "k-means all 10 iterations": lambda: _midx(state, kmeans=samplers.KMeansOptions(tolerance=0.0)),
        "k-means sample 128·K": lambda: _midx(state, kmeans=samplers.KMeansOptions(sample_size=128 * k)),
        "one refresh (cold)": lambda: _midx(state, refreshes=1),
    }
    if quick:
        variants = {key: variants[key] for key in list(variants)[:2]}
    for name, build in variants.items():
        rows.append((f"MIDX {name}", "library", "", _library_log_q(build(), eval_queries)))
    mixture = np.logaddexp(math.log(0.9) + midx_log_q, math.log(0.1) + unigram_log_q)
    rows += [
        ("0.9·MIDX + 0.1·Unigram (defensive mixture)", "prototype", "2 draws, both log q", mixture),
        (
            "MIDX + Gaussian in-bucket weights",
            "prototype",
            "as MIDX; refresh +O(N·d²)",
            _normalized(base_scores + gaussian_weights(base, quantized, state)),
        ),
        (
            "MIDX + best static in-bucket weights (bound)",
            "prototype",
            "not buildable (reads p)",
            _normalized(base_scores + oracle_weights(base, quantized, state)),
        ),
    ]
    equal_cost = max(2, round(k ** (2 / 3)))
    small = _midx(state, num_codewords=equal_cost)
    rows.append(
        (
            f"3 rvq codebooks, K={equal_cost} (K³ ≈ {k}² cells: equal draw cost)",
            "prototype",
            "O(K·d + K³) a query",
            _normalized(
                eval_queries @ third_codebook(_quantized(small), state, equal_cost).T + _static_log_weight(small, state)
            ),
        )
    )
    if not quick:
        rows.append(
            (
                f"3 rvq codebooks, K={k} (K× the draw cost)",
                "prototype",
                "O(K·d + K³) a query",
                _normalized(eval_queries @ third_codebook(quantized, state, k).T + _static_log_weight(base, state)),
            )
        )
    rows.append(("exact softmax q = p", "reference", "O(N·d) a query", state.eval_log_p))
    return rows, base


def run_state(state: State, quick: bool) -> List[dict]:
    started = time.perf_counter()
    rows, base = proposals(state, quick)
    buckets = base.class_bucket.numpy()
    head = np.argsort(-state.counts, kind="stable")[: max(1, state.num_classes // 100)]
    results = []
    for name, kind, cost, log_q in rows:
        results.append(
            {"state": state.name, "proposal": name, "kind": kind, "cost": cost, **measure(state, log_q, buckets, head)}
        )
        row = results[-1]
        print(f"  {name}: KL {row['kl']:.3f} (within {row['kl_within']:.3f}), ESS/m {row['ess_ratio']:.3f}", flush=True)
    print(f"{state.name}: {time.perf_counter() - started:.0f} s", flush=True)
    return results


def table(results: List[dict]) -> str:
    lines = []
    for state in dict.fromkeys(row["state"] for row in results):
        rows = [row for row in results if row["state"] == state]
        lines += [
            f"**{state}** (head: the 1% most frequent classes, p mass {rows[0]['head_p']:.3f})",
            "",
            "| proposal | KL(p‖q) | within / between buckets | head q mass | ESS/m | "
            + " | ".join(f"log Ẑ bias m={m}" for m in SAMPLE_SIZES)
            + " | cost |",
            "|---|---:|---:|---:|---:|" + "---:|" * len(SAMPLE_SIZES) + "---|",
        ]
        for row in rows:
            bias = " | ".join(f"{row['log_z_bias'][m]:+.3f}" for m in SAMPLE_SIZES)
            lines.append(
                f"| {row['proposal']} | {row['kl']:.3f} | {row['kl_within']:.3f} / {row['kl_between']:.3f} | "
                f"{row['head_q']:.3f} | {row['ess_ratio']:.3f} | {bias} | {row['cost']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--teachers",
        default="20000:100:1,20000:1000:1,20000:300:0,100000:100:1,100000:1000:1",
        help="N:clusters:zipf of each teacher (comma-separated; empty for none)",
    )
    parser.add_argument("--state", default=None, help="a --save-state .npz of examples/history_model.py")
    parser.add_argument("--name", default="trained model", help="the --state's name in the tables")
    parser.add_argument("--probes", type=int, default=512, help="eval (and fit) queries per state")
    parser.add_argument("--quick", action="store_true", help="fewer rows")
    parser.add_argument("--output", default="proposal", help="results/NAME.md and .json")
    args = parser.parse_args(argv)
    states = []
    for spec in filter(None, args.teachers.split(",")):
        num_classes, clusters, zipf = spec.split(":")
        states.append(lambda n=int(num_classes), c=int(clusters), z=float(zipf): teacher_state(n, c, z, args.probes))
    if args.state:
        states.append(lambda: saved_state(args.state, args.name, args.probes))
    results = [row for make in states for row in run_state(make(), args.quick)]
    header = (
        "Proposal ablation at a fixed model state (`python -m benchmarks.proposal`; module docstring). "
        f"{args.probes} eval queries; log Ẑ bias over 4 draws of m per query.\n\n"
    )
    write_results(args.output, results, header + table(results))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

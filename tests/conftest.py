import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite runs on 2 cores as 2 pytest-xdist workers: one intra-op thread each avoids two
# spinning thread pools per core. LLVM's optimization level changes how fast XLA's CPU code runs,
# not which programs compile or what they compute; the suite compiles hundreds and runs each a few
# times. Both are set before TensorFlow loads and are inherited by the scripts tests run.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import numpy as np
import pytest
from scipy import stats

from tf_adaptive_softmax._keras import IS_KERAS_3, K

# Op types that must never appear on the sampling path (DESIGN 3.2 rules 3-5).
FORBIDDEN_OPS = {
    "Unique",
    "UniqueV2",
    "UniqueWithCounts",
    "Where",
    "SegmentSum",
    "SegmentMean",
    "SegmentMax",
    "SegmentMin",
    "SegmentProd",
    "ComputeAccidentalHits",
    "Multinomial",
    "RandomUniform",
    "RandomUniformInt",
    "RandomStandardNormal",
    "TruncatedNormal",
    "RandomShuffle",
}
SAMPLER_OPS = {
    "StatelessMultinomial",
    "StatelessRandomUniformV2",
    "StatelessRandomUniformIntV2",
    "StatelessRandomUniformFullIntV2",
    "StatelessRandomGetKeyCounter",
    "StatelessRandomUniform",
    "StatelessRandomUniformInt",
    "RandomUniform",
    "Multinomial",
}


def graph_ops(graph_def):
    """(op type, node) pairs of a GraphDef including every function in its library."""
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return nodes


def op_types(graph_def):
    return {node.op for node in graph_ops(graph_def)}


def forbidden_in(graph_def):
    return {t for t in op_types(graph_def) if t in FORBIDDEN_OPS or t.endswith("CandidateSampler")}


# Dozens of frequency tests run on fixed seeds: at 1e-3 one of them would fail by chance every few
# RNG-path changes. Real mismatches (a wrong log q, a biased draw) give p-values far below 1e-5.
CHI_SQUARE_ALPHA = 1e-5


def chi_square_pvalue(observed, expected_probs, num_draws):
    """Pearson chi-square p-value; bins with expected count < 5 are pooled into one."""
    observed = np.asarray(observed, dtype=np.float64)
    expected = np.asarray(expected_probs, dtype=np.float64) * num_draws
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
        if expected[-1] == 0:
            assert observed[-1] == 0, "draws landed on zero-probability classes"
            observed, expected = observed[:-1], expected[:-1]
    return stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


def pytest_collection_modifyitems(config, items):
    # The suite runs twice, once a Keras flavour. End-to-end runs of our scripts (the demo, the
    # examples, the benchmark harness) run once: the library code they call is tested in both passes.
    if IS_KERAS_3:
        return
    skip = pytest.mark.skip(reason="keras3_pass: runs in the Keras 3 pass of the suite")
    for item in items:
        if item.get_closest_marker("keras3_pass"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    K.utils.set_random_seed(0)
    yield


def run_python(*args, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs `python *args` in a fresh interpreter (a script, `-m module` or `-c code`); a non-zero
    exit fails the test with the end of its stderr. Returns the finished process (text output)."""
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


keras3_only = pytest.mark.skipif(not IS_KERAS_3, reason="Keras 3 only")
legacy_only = pytest.mark.skipif(IS_KERAS_3, reason="tf_keras only")


def tensorflow_executed_operations(graph) -> list:
    """The operations TensorFlow's executor runs for `graph`: its own and those of the functions,
    loop bodies and branches it calls, but not the inside of XLA-compiled functions (XLA reads
    variables in place, with no copy-on-read)."""
    library = {}

    def collect(inner):
        for name, function in inner._functions.items():
            library[name] = function
            if getattr(function, "graph", None) is not None:
                collect(function.graph)

    collect(graph)

    def walk(inner):
        for op in inner.get_operations():
            yield op
            if "_XlaMustCompile" in op.node_def.attr and op.get_attr("_XlaMustCompile"):
                continue
            for attr in ("f", "body", "cond", "then_branch", "else_branch"):
                if attr in op.node_def.attr:
                    function = library.get(op.get_attr(attr).name)
                    if function is not None and getattr(function, "graph", None) is not None:
                        yield from walk(function.graph)

    return list(walk(graph))

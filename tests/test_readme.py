"""The Python blocks of the README and the docs are the documented API: they must run as written."""

import doctest
import importlib
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The README's blocks and those of the docs pages it links to.
DOCUMENTS = ["README.md", "docs/scaling.md"]
BLOCKS = [
    block for document in DOCUMENTS for block in re.findall(r"```python\n(.*?)```", (ROOT / document).read_text(), re.S)
]
MODULES = [
    "tf_adaptive_softmax.estimator",
    "tf_adaptive_softmax.layers",
    "tf_adaptive_softmax.losses",
    "tf_adaptive_softmax.callbacks",
    "tf_adaptive_softmax.datasets",
    "tf_adaptive_softmax.diagnostics",
    "tf_adaptive_softmax.retrieval",
    "tf_adaptive_softmax.quantization",
    "tf_adaptive_softmax.samplers.midx",
    "tf_adaptive_softmax.samplers.quadratic_kernel",
    "tf_adaptive_softmax.samplers.uniform",
    "tf_adaptive_softmax.samplers.log_uniform",
    "tf_adaptive_softmax.samplers.unigram",
    "tf_adaptive_softmax.samplers.softmax",
    "tf_adaptive_softmax.refresh",
    "tf_adaptive_softmax._ops.tables",
    "tf_adaptive_softmax.experiments",
]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    failures, _ = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert failures == 0

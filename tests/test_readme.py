"""The Python blocks of the README and the docs are the documented API: they must run as written."""

import doctest
import importlib
import importlib.util
import pathlib
import re

import pytest
from conftest import run_python

from tf_adaptive_softmax._keras import IS_KERAS_3

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The README's blocks and those of the docs pages it links to.
DOCUMENTS = ["README.md", "docs/scaling.md"]
BLOCKS = [
    block for document in DOCUMENTS for block in re.findall(r"```python\n(.*?)```", (ROOT / document).read_text(), re.S)
]
# Every module of the package whose docstrings hold examples (the TFRS task's needs tf_keras).
PACKAGE = ROOT / "tf_adaptive_softmax"
MODULES = sorted(
    ".".join(("tf_adaptive_softmax", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py")
    if ">>> " in path.read_text() and path.name not in ("demo.py", "tfrs.py")
)


# A block that sets TF_USE_LEGACY_KERAS itself runs the same program in both passes, and keras-rs
# needs Keras 3: such blocks run once, in the Keras 3 pass.
def _runs_once(block: str) -> bool:
    return 'os.environ["TF_USE_LEGACY_KERAS"]' in block or "import keras_rs" in block or ", keras_rs" in block


@pytest.mark.slow
@pytest.mark.parametrize(
    "index",
    [
        pytest.param(index, marks=[pytest.mark.keras3_pass] if _runs_once(block) else [])
        for index, block in enumerate(BLOCKS)
    ],
)
def test_readme_block_runs(index):
    run_python("-c", BLOCKS[index], cwd=ROOT)


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    if module == "tf_adaptive_softmax.keras_rs" and (not IS_KERAS_3 or importlib.util.find_spec("keras_rs") is None):
        pytest.skip("tf_adaptive_softmax.keras_rs needs Keras 3 and keras-rs")
    failures, _ = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert failures == 0

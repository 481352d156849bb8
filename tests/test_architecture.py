"""The package's layers point one way: no module imports from a higher floor (docs/design.md §2)."""

import ast
import pathlib

import pytest

import tf_adaptive_softmax

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tf_adaptive_softmax"

# Ground floor first. A module may import from its own floor or any lower one, never a higher one.
FLOORS = [
    {"_keras", "_validation", "_reduction", "_ops"},  # private kernels, checks, the Keras flavour
    {"quantization", "datasets"},  # k-means / PQ / RVQ on the kernels; synthetic data
    {"estimator", "samplers"},  # the math and the proposals
    {"layers", "losses", "callbacks", "diagnostics", "refresh"},  # the Keras surface
    {"retrieval", "tfrs"},  # integrations
    {"experiments"},  # what applications share
    {"demo"},  # the main job: nothing imports it
]
FLOOR_OF = {name: level for level, names in enumerate(FLOORS) for name in names}


def _top(module_path: pathlib.Path) -> str:
    relative = module_path.relative_to(PACKAGE).with_suffix("")
    return relative.parts[0]


def _imported_tops(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tf_adaptive_softmax"):
            parts = node.module.split(".")
            if len(parts) > 1:
                yield parts[1]
            else:  # from tf_adaptive_softmax import a, b
                yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "tf_adaptive_softmax" and len(parts) > 1:
                    yield parts[1]


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_higher_floor(path):
    own = _top(path)
    assert own in FLOOR_OF, f"{own} has no floor in FLOORS: place it"
    for target in _imported_tops(ast.parse(path.read_text())):
        assert target in FLOOR_OF, f"{path.name} imports {target}, which has no floor"
        assert FLOOR_OF[target] <= FLOOR_OF[own], (
            f"{path.relative_to(PACKAGE)} (floor {FLOOR_OF[own]}) imports {target} (floor {FLOOR_OF[target]})"
        )


def test_nothing_imports_the_demo():
    importers = [
        p
        for p in PACKAGE.parent.rglob("*.py")
        if ".git" not in p.parts
        and p.name != "test_demo.py"
        and p != PACKAGE / "demo.py"
        and "tf_adaptive_softmax.demo" in p.read_text().replace("python -m tf_adaptive_softmax.demo", "")
        and p.name != "test_architecture.py"
    ]
    assert not importers, importers


# The package's own list of public submodules, plus one module per sampler.
PUBLIC_MODULES = [
    *tf_adaptive_softmax._SUBMODULES,
    *(f"samplers.{p.stem}" for p in (PACKAGE / "samplers").glob("*.py") if p.stem != "__init__"),
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_modules_declare_their_api(name):
    import importlib

    module = importlib.import_module(f"tf_adaptive_softmax.{name}")
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
    assert len(set(module.__all__)) == len(module.__all__)

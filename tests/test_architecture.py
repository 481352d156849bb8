"""The package's layers point one way: no module imports from a higher floor (docs/design.md §2)."""

import ast
import importlib.util
import inspect
import pathlib
import re
import textwrap

import pytest

import tf_adaptive_softmax
from tf_adaptive_softmax._keras import IS_KERAS_3

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tf_adaptive_softmax"
_KERAS_RS = IS_KERAS_3 and importlib.util.find_spec("keras_rs") is not None

# Ground floor first. A module may import from its own floor or any lower one, never a higher one.
FLOORS = [
    {"_keras", "_validation", "_reduction", "_ops", "_types"},  # private kernels, checks, the Keras flavour
    {"_quantization", "datasets"},  # k-means / PQ / RVQ on the kernels; synthetic data
    {"estimator", "samplers"},  # the math and the proposals
    {"layers", "losses", "callbacks", "diagnostics", "_refresh"},  # the Keras surface
    {"retrieval", "tfrs", "keras_rs"},  # integrations
    {"_experiments", "_tf_sampled"},  # what the demo, examples and benchmarks share (private)
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


# The public modules: the package's submodules and every module under them whose name does not
# start with "_" (each sampler, the MIDX package's modules).
PUBLIC_MODULES = sorted(
    {
        *tf_adaptive_softmax._SUBMODULES,
        "tfrs",
        "keras_rs",
        *(
            ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
            for p in (PACKAGE / "samplers").rglob("*.py")
            if not any(part.startswith("_") and part != "__init__.py" for part in p.relative_to(PACKAGE).parts)
        ),
    }
)


def _import(name):
    import importlib

    if name == "tfrs" and IS_KERAS_3:
        pytest.skip("tf_adaptive_softmax.tfrs needs tf_keras")
    if name == "keras_rs" and not _KERAS_RS:
        pytest.skip("tf_adaptive_softmax.keras_rs needs Keras 3 and keras-rs")
    return importlib.import_module(f"tf_adaptive_softmax.{name}")


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_modules_declare_their_api(name):
    module = _import(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
    assert len(set(module.__all__)) == len(module.__all__)
    # Everything a public module defines without a leading underscore is in its __all__.
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    defined |= {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    undeclared = sorted(name for name in defined if not name.startswith("_") and name not in module.__all__)
    assert not undeclared, f"{module.__name__} defines public names outside __all__: {undeclared}"


def _documented_api():
    """{name: module} from docs/api.md's table rows: | `name` | `module` | what |."""
    text = (PACKAGE.parent / "docs" / "api.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)` \| `([\w.]+)` \|", text, re.M)
    return {name: module for name, module in rows}


def test_docs_api_lists_exactly_the_public_names():
    documented = _documented_api()
    # Importable under tf_keras only, and under Keras 3 with keras-rs only.
    exported = {
        "AdaptiveRetrieval": {"tf_adaptive_softmax.tfrs"},
        "CatalogueNegatives": {"tf_adaptive_softmax.keras_rs"},
    }
    for public in tf_adaptive_softmax.__all__:
        exported.setdefault(public, set()).add("tf_adaptive_softmax")
    for name in PUBLIC_MODULES:
        if (name == "tfrs" and IS_KERAS_3) or (name == "keras_rs" and not _KERAS_RS):
            continue
        module = _import(name)
        for public in module.__all__:
            exported.setdefault(public, set()).add(module.__name__)
    missing = sorted(set(exported) - set(documented))
    extra = sorted(set(documented) - set(exported))
    assert not missing, f"public names missing from docs/api.md: {missing}"
    assert not extra, f"docs/api.md lists names no public module exports: {extra}"
    wrong = {name: module for name, module in documented.items() if module not in exported[name]}
    assert not wrong, f"docs/api.md names the wrong module: {wrong}"
    assert len(documented) <= 35, f"{len(documented)} public names; the budget is 35"


# Keras hooks documented by Keras itself.
_KERAS_HOOKS = {
    "call",
    "build",
    "get_config",
    "from_config",
    "compute_output_shape",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_train_begin",
}


def _public_callables():
    for name in PUBLIC_MODULES:
        if (name == "tfrs" and IS_KERAS_3) or (name == "keras_rs" and not _KERAS_RS):
            continue
        module = _import(name)
        for public in module.__all__:
            obj = getattr(module, public)
            if inspect.isclass(obj):
                yield public, obj
                for attribute, member in vars(obj).items():
                    if not attribute.startswith("_") and attribute not in _KERAS_HOOKS and inspect.isfunction(member):
                        yield f"{public}.{attribute}", member
            elif callable(obj):
                yield public, obj


def test_public_callables_are_annotated_and_documented():
    # Every parameter annotated; Args when it takes any, Returns when it returns something,
    # Raises when its own code raises.
    problems, seen = [], set()
    for name, obj in _public_callables():
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        doc, signature = inspect.getdoc(obj) or "", inspect.signature(obj)
        parameters = [p for p in signature.parameters.values() if p.name not in ("self", "cls")]
        if any(p.annotation is inspect.Parameter.empty for p in parameters):
            problems.append(f"{name}: unannotated parameters")
        if parameters and "Args:" not in doc:
            problems.append(f"{name}: no Args")
        if not inspect.isclass(obj):
            returned = signature.return_annotation
            if returned is inspect.Signature.empty:
                problems.append(f"{name}: no return annotation")
            elif returned not in (None, "None") and "Returns:" not in doc:
                problems.append(f"{name}: no Returns")
        source = textwrap.dedent(inspect.getsource(obj))
        if re.search(r"^\s+raise \w", source, re.M) and "Raises:" not in doc:
            problems.append(f"{name}: raises, but no Raises")
    assert not problems, problems


def test_no_public_signature_over_twelve_parameters():
    # Related options travel grouped (KMeansOptions, LearnedCodebooks, TFRS's own Retrieval).
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    too_wide = {}
    for name, obj in _public_callables():
        named = [p for p in inspect.signature(obj).parameters.values() if p.kind not in variadic and p.name != "self"]
        if len(named) > 12:
            too_wide[name] = len(named)
    assert not too_wide, too_wide


def test_no_figures_in_docstrings():
    # Timings and benchmark figures live in benchmarks/README.md, not in the code.
    pattern = re.compile(r"\d+(\.\d+)?\s?(ms|s per|seconds|GB|MB|x faster|× faster)\b")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node) or ""
                offenders += [f"{path.relative_to(PACKAGE)}: {m.group(0)}" for m in pattern.finditer(doc)]
    assert not offenders, offenders


def test_benchmarks_are_a_package_run_with_dash_m():
    # `python -m benchmarks.NAME` from the repository root: nothing under benchmarks/ edits sys.path.
    benchmarks = PACKAGE.parent / "benchmarks"
    assert (benchmarks / "__init__.py").is_file()
    files = [path for path in benchmarks.rglob("*") if path.is_file() and "__pycache__" not in path.parts]
    offenders = [str(path.relative_to(benchmarks)) for path in files if b"sys.path" in path.read_bytes()]
    assert not offenders, offenders


def test_modules_stay_small():
    # One concept a module (issue #28): MIDX's package under 350 lines a module, every module under 400.
    sizes = {path: len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    too_long = {str(p.relative_to(PACKAGE)): n for p, n in sizes.items() if n > 400}
    too_long.update({str(p.relative_to(PACKAGE)): n for p, n in sizes.items() if "midx" in p.parts and n > 350})
    assert not too_long, too_long

"""The code's structure, read from its own source: the import graph and the length of functions.

Layers, bottom to top (:data:`LAYERS`): a module imports only from its own layer or below, and
the imports form no circle. Every first-party import counts, at module top or inside a function
(an import inside a function hides a dependency; it does not remove it). Functions in
``include/``, ``dags/`` and ``plugins/`` are at most :data:`MAX_FUNCTION_LINES` long.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The layers, bottom first, as module-name prefixes (the longest prefix that matches decides).
LAYERS: tuple[tuple[str, ...], ...] = (
    # The ground floor: errors, names and paths, locks, storage, a market's identity, the features'
    # vocabulary, how a parameter is declared, the configuration, the thread budget.
    ("include", "include.errors", "include.paths", "include.locks", "include.redaction", "include.storage",
     "include.extensions", "include.identity", "include.feature_names", "include.parameters", "include.config",
     "include.resources"),
    # Pure computation every stage shares: the feature and label definitions, the gate's policy,
    # the trading decision's meta-label model.
    ("include.features", "include.labels", "include.gate", "include.meta_label"),
    ("include.windows", "include.run_folder", "include.evaluation"),
    # The library: one module or package per stage.
    ("include.data", "include.quality", "include.feature_store", "include.significance", "include.backtest",
     "include.calibration",
     "include.training", "include.ensemble", "include.registry", "include.drift", "include.predictions",
     "include.notify", "include.universe", "include.report", "include.batch_outcomes", "include.serving",
     "include.trading", "include.gate.evidence"),
    # Workflows beside the weekly run: monitoring, tuning, the track record; and the DAGs' shared glue.
    ("include.monitoring", "include.tuning", "include.track_record", "include.tasks", "include.approval",
     "include.assets"),
    # The weekly run's orchestration: the routine and the weekly DAG's task bodies. Nothing below
    # imports it: the other workflows share the library, not the weekly run.
    ("include.pipeline",),
    # Entry points: command lines, demos, the deployment, DAGs and plugins.
    ("include.demo", "include.deployment", "include.registry.cli", "include.registry.__main__",
     "include.tuning.__main__", "include.monitoring.demo", "include.monitoring.tasks", "include.tuning.runs",
     "dags", "plugins"),
)
#: The longest a function may be, from its ``def`` line to its last line.
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    """Every first-party module of ``include/``, ``dags/`` and ``plugins/`` by dotted name."""
    found = {}
    for pattern in ("include/**/*.py", "dags/*.py", "plugins/*.py"):
        for path in ROOT.glob(pattern):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if ".migrations." not in f".{name}.":
                found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """``(module, line)`` for every first-party module ``path`` imports (``from a.b import c``
    names ``a.b.c`` when that is a module, else ``a.b``)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target:
                yield target, node.lineno


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the longest prefix naming ``module``'s layer."""
    best, level = "", None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (module.startswith(prefix + ".") and prefix != "include")
            if inside and len(prefix) > len(best):
                best, level = prefix, i
    if level is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return level


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {target for target, _ in imports(path, known) if target != name} for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan 1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_in_a_layer():
    assert all(layer_of(name) >= 0 for name in modules())


def test_the_imports_form_no_circle():
    assert circles(graph()) == []


def test_no_module_imports_from_a_layer_above_its_own():
    known = modules()
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)}) at line {line}"
              for name, path in known.items() for target, line in imports(path, known)
              if layer_of(target) > layer_of(name)]
    assert upward == []


def test_the_checks_find_what_they_look_for():
    """The graph and the layers on a made-up circle and a made-up upward import."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("include.pipeline.data") > layer_of("include.config")
    assert layer_of("include.registry.cli") > layer_of("include.registry.core")
    assert layer_of("include.pipeline.routine") > layer_of("include.monitoring.monitor") > layer_of("include.trading")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("include.somewhere_new")


def long_functions() -> list[str]:
    out = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{name}.{node.name}: {length} lines (line {node.lineno})")
    return out


def test_no_function_is_longer_than_the_limit():
    assert long_functions() == []

"""The orchestrator's layout holds: no import cycles, layers point one way, one error tree.

Imports are read from the source (module level and inside functions alike), so a lazy import
that closes a cycle counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from orchestrator import errors
from orchestrator.aggregation.errors import AggregationError, BadUpdate
from orchestrator.api.errors import status_of
from orchestrator.simulation.config import SimulationConfigError

ROOT = Path(__file__).resolve().parents[2] / "orchestrator"
# Their internals are reworked elsewhere (allocation/med as a sub-package, an aggregation
# registry); a cycle wholly inside one of them is theirs to remove.
ELSEWHERE = ("orchestrator.allocation", "orchestrator.aggregation")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                    node.module.startswith("orchestrator"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in mods else owner(node.module))
            elif isinstance(node, ast.Import):
                deps.update(owner(a.name) for a in node.names
                            if a.name.startswith("orchestrator"))
        graph[name] = {d for d in deps if d and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_orchestrator() -> None:
    cycles = [c for c in _cycles(_graph())
              if not all(m.startswith(ELSEWHERE) for m in c)]
    assert cycles == []


@pytest.mark.parametrize(("lower", "upper"), [
    ("orchestrator.runs", ("orchestrator.service", "orchestrator.api", "orchestrator.cli")),
    ("orchestrator.store", ("orchestrator.runs", "orchestrator.service", "orchestrator.api")),
    ("orchestrator.service", ("orchestrator.api", "orchestrator.cli", "orchestrator.local")),
    ("orchestrator.api", ("orchestrator.cli", "orchestrator.local")),
    ("orchestrator.allocation", ("orchestrator.runs", "orchestrator.service",
                                 "orchestrator.api", "orchestrator.store")),
    ("orchestrator.aggregation", ("orchestrator.runs", "orchestrator.service",
                                  "orchestrator.api", "orchestrator.store")),
])
def test_layers_point_one_way(lower: str, upper: tuple[str, ...]) -> None:
    graph = _graph()
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items()
                   if m == lower or m.startswith(lower + ".")
                   for d in deps if d.startswith(upper))
    assert wrong == []


def test_one_error_tree_without_http_statuses() -> None:
    for cls in (errors.BadInput, errors.NotFound, errors.StoreError, AggregationError,
                SimulationConfigError):
        assert issubclass(cls, errors.ServiceError)
        assert not hasattr(cls, "status")  # statuses live in orchestrator.api.errors only
    assert issubclass(AggregationError, ValueError) and issubclass(SimulationConfigError,
                                                                   ValueError)
    assert status_of(errors.BadInput("x")) == 422
    assert status_of(SimulationConfigError("x")) == 422
    assert status_of(errors.Unauthorized("x")) == 401
    assert status_of(errors.Conflict("x")) == 409
    assert status_of(BadUpdate("x")) == 500  # the async routes answer it themselves (422)

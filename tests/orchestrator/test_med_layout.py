"""The med/ sub-package's parts import each other in one direction and share no private names."""

from __future__ import annotations

import ast
from pathlib import Path

import orchestrator.allocation.med as med

PACKAGE = "orchestrator.allocation.med"
# Lower first: a module may import only modules listed before it (`__init__` re-exports).
ORDER = ["model", "instances", "milp", "solvers", "greedy", "search", "dp", "colgen", "lagrange",
         "solve", "__init__"]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported from inside med/, names taken) for every import in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            names = [a.name for a in node.names]
            if node.module == PACKAGE:  # `from ...med import dp, solvers`
                out.extend((n, []) for n in names)
            elif node.module.startswith(PACKAGE + "."):
                out.append((node.module.removeprefix(PACKAGE + "."), names))
    return out


def test_every_module_has_a_place_in_the_order() -> None:
    here = sorted(p.stem for p in Path(med.__file__).parent.glob("*.py"))
    assert here == sorted(ORDER)


def test_parts_import_downwards_only_and_take_no_private_names() -> None:
    for path in Path(med.__file__).parent.glob("*.py"):
        rank = ORDER.index(path.stem)
        for module, names in _imports(path):
            assert ORDER.index(module) < rank, f"{path.name} imports {module} (not below it)"
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path.name} takes private {private} from {module}"

"""`plexus plan med INSTANCE.json`: offline multi-task allocation (MED, MMTT, equal split).

The top level imports only typer, rich and the standard library; the solver modules are
imported when the command runs. Exit codes: 0 an allocation was found, 1 none (infeasible,
no solution in time, or over the Gurobi licence), 2 the instance file or an option is bad.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

_err = Console(stderr=True)

_SOLVERS = ("auto", "dp", "gurobi", "highs", "lagrange")
_METHODS = ("med", "mmtt-uncertain", "mmtt-ideal", "equal")


def _fail(message: str) -> typer.Exit:
    _err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


def plan_med(
    instance: Annotated[Path, typer.Argument(help="Instance JSON (schema: docs/med.md).")],
    solver: Annotated[str, typer.Option(help="auto | dp | gurobi | highs | lagrange")] = "auto",
    time_limit: Annotated[float, typer.Option(help="Seconds per solve.")] = 10.0,
    mip_gap: Annotated[float, typer.Option(help="Relative MIP gap to stop at.")] = 1e-4,
    method: Annotated[str, typer.Option(help="med | mmtt-uncertain | mmtt-ideal | equal")] = "med",
    states: Annotated[
        str | None,
        typer.Option(help="mmtt-ideal only: actual state index per learner, comma-separated"),
    ] = None,
    gurobi_size_limit: Annotated[
        int, typer.Option(help="Variables/constraints the Gurobi licence allows; 0 = no limit")
    ] = 2000,
    soft_deadlines: Annotated[
        bool, typer.Option(help="If 4.4b makes it infeasible, solve again without it.")
    ] = False,
) -> None:
    """Allocate shards of several tasks to learners (thesis eq. 4.4) and print JSON."""
    _check_options(solver, method, time_limit, mip_gap)
    inst = _read_instance(instance)
    actual = _parse_states(states, method)

    from orchestrator.allocation.errors import AllocationError
    from orchestrator.allocation.mmtt import plan

    try:
        res = plan(inst, method, actual_states=actual, solver=solver,  # type: ignore[arg-type]
                   time_limit_s=time_limit, mip_gap=mip_gap,
                   gurobi_size_limit=gurobi_size_limit or None,
                   soft_deadlines_if_infeasible=soft_deadlines)
    except AllocationError as exc:  # bad --states / --method, or a solver not installed
        raise _fail(str(exc)) from None
    sys.stdout.write(json.dumps(res.to_dict(inst), indent=2) + "\n")
    if res.allocation is None:
        raise typer.Exit(code=1)


def _check_options(solver: str, method: str, time_limit: float, mip_gap: float) -> None:
    if solver not in _SOLVERS:
        raise _fail(f"--solver must be one of {', '.join(_SOLVERS)}, not {solver!r}")
    if method not in _METHODS:
        raise _fail(f"--method must be one of {', '.join(_METHODS)}, not {method!r}")
    if time_limit <= 0:
        raise _fail("--time-limit must be a positive number of seconds")
    if not 0 <= mip_gap < 1:
        raise _fail("--mip-gap must lie in [0, 1)")


def _read_instance(instance: Path) -> Any:
    """The validated `MedInstance` in `instance`; exit 2 naming the file or the field."""
    try:
        raw = json.loads(instance.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(f"instance file {instance} does not exist") from None
    except json.JSONDecodeError as exc:
        raise _fail(f"{instance} is not valid JSON: {exc.msg} at line {exc.lineno} "
                    f"column {exc.colno}") from None

    from pydantic import ValidationError

    from orchestrator.allocation.med import MedInstance

    try:
        return MedInstance.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"  {where}: {e['msg']}")
        raise _fail(f"{instance} is not a valid MED instance ({exc.error_count()} "
                    "problem(s)):\n" + "\n".join(lines)) from None


def _parse_states(states: str | None, method: str) -> list[int] | None:
    actual: list[int] | None = None
    if states is not None:
        try:
            actual = [int(s) for s in states.split(",")]
        except ValueError:
            raise _fail("--states must be comma-separated integers, e.g. 0,2,1") from None
    if method == "mmtt-ideal" and actual is None:
        raise _fail("--method mmtt-ideal needs --states (the state each learner is in now)")
    return actual


def register(app: typer.Typer) -> None:
    """Add the `plan` command group to the root `plexus` app."""
    plan_app = typer.Typer(
        help="Plan allocations offline from an instance file (no orchestrator needed).",
        no_args_is_help=True,
    )
    plan_app.command("med")(plan_med)
    app.add_typer(plan_app, name="plan")

"""The orchestrator's commands, one module per command group.

`register(app)` adds them to the `plexus` CLI (`plexus/cli.py`): `orchestrator serve`
(`serve`), `task submit|list|show|cancel` (`tasks`), `job show|cancel` (`jobs`), `learners`
(`learners`), `demo` (`demo`), `plan med` (`plan`), `simulate` (`simulate`) and
`aggregator serve` (`aggregator`). `common` holds
the shared options and the API client, `render` the tables and progress bars.

Only typer and rich are imported at module level by any of these modules, so `plexus agent run`
on a small device never pays for FastAPI, SQLAlchemy or a solver; each command imports what it
needs when it runs.
"""

from __future__ import annotations

import os

import typer

from orchestrator.cli import aggregator, demo, jobs, learners, plan, serve, simulate, tasks


def register(app: typer.Typer) -> None:
    """Add every orchestrator command to the `plexus` CLI."""
    serve.register(app)
    tasks.register(app)
    jobs.register(app)
    learners.register(app)
    demo.register(app)
    plan.register(app)
    simulate.register(app)
    aggregator.register(app)


if __name__ == "__main__":  # `python -m orchestrator.cli ...` runs these commands alone
    _root = typer.Typer(no_args_is_help=True)
    register(_root)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _root()

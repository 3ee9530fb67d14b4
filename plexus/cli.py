"""The `plexus` command line: the composition root that gathers each package's commands.

Each package contributes its commands through a module whose top level imports only typer and
rich, so `plexus agent run` on a Raspberry Pi never imports FastAPI, SQLAlchemy or a solver.
"""

from __future__ import annotations

import importlib

import typer

# Modules that define `register(app: typer.Typer) -> None`.
_COMMAND_MODULES = (
    "learner_agent.cli",  # plexus agent run
    "orchestrator.cli",  # plexus orchestrator serve, task, job, learners, demo, plan, simulate
    "deploy.testbed.cli",  # plexus testbed up|down|status
)

app = typer.Typer(
    name="plexus",
    help="Train neural networks on fleets of small edge devices.",
    no_args_is_help=True,
    add_completion=False,
)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only a module that is absent from this installation is skipped; a missing
            # dependency inside a present module is a real error and propagates.
            if exc.name is not None and name.startswith(exc.name):
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    """Entry point of the `plexus` console script."""
    app()


if __name__ == "__main__":
    main()

"""Every `plexus` command and group renders its help: the CLI is what users meet first."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from plexus.cli import app


def _command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    # typer vendors its own click, so groups are recognised by their `commands` mapping.
    def walk(cmd: object, path: list[str]) -> None:
        paths.append(path)
        commands = getattr(cmd, "commands", None)
        if isinstance(commands, dict):
            for name, sub in commands.items():
                walk(sub, [*path, name])

    walk(root, [])
    return paths


PATHS = _command_paths()


def test_every_package_contributes_commands() -> None:
    top = {p[0] for p in PATHS if p}
    assert {"agent", "orchestrator", "task", "learners", "demo", "plan", "simulate",
            "testbed"} <= top


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "plexus")
def test_help_renders(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output

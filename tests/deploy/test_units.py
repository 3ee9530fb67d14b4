"""The shipped orchestrator unit and env example agree with the orchestrator's CLI."""

from __future__ import annotations

import configparser
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_orchestrator_unit_runs_unprivileged_and_restarts() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read(DEPLOY / "plexus-orchestrator.service")
    service = unit["Service"]
    assert service["User"] == "plexus"
    assert service["Restart"] == "on-failure"
    # SIGTERM (a clean stop, exit 0) to the orchestrator itself, SIGKILL only after it had
    # longer than a job's commit on shutdown (20 s, docs/orchestrator.md "Shutdown").
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 20
    assert "orchestrator serve" in service["ExecStart"]
    assert "TOKEN" not in service["ExecStart"]  # tokens come from the environment file
    env_keys = {
        line.split("=", 1)[0].lstrip("# ")
        for line in (DEPLOY / "orchestrator.env.example").read_text().splitlines()
        if "=" in line
    }
    for variable in ("PLEXUS_HOST", "PLEXUS_PORT", "PLEXUS_PUBLIC_URL"):
        assert "${" + variable + "}" in service["ExecStart"] and variable in env_keys


def test_orchestrator_cli_reads_the_env_file_variables() -> None:
    from typer.testing import CliRunner

    from plexus.cli import app

    help_text = (
        CliRunner().invoke(app, ["orchestrator", "serve", "--help"], terminal_width=200).output
    )
    for option in ("--host", "--port", "--public-url", "--data-dir"):
        assert option in help_text
    for variable in ("PLEXUS_JOIN_TOKEN", "PLEXUS_ADMIN_TOKEN", "PLEXUS_DB_URL", "PLEXUS_DATA_DIR"):
        assert variable in help_text

"""Importing the agent stays light: no FastAPI, SQLAlchemy, scipy, gurobipy or torch."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import learner_agent, learner_agent.cli, learner_agent.daemon, learner_agent.procedures
import learner_agent.benchmarking, learner_agent.trainer, learner_agent.dab
import learner_agent.stressors, learner_agent.client, learner_agent.facts
heavy = [m for m in ("fastapi", "sqlalchemy", "scipy", "gurobipy", "torch") if m in sys.modules]
print(",".join(heavy))
"""


def test_import_pulls_in_no_heavy_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""


def test_the_check_can_fail() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sqlalchemy\n" + CODE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "sqlalchemy"

"""Schemathesis against a real orchestrator: no 5xx, and every answer as the document says.

Every check of schemathesis runs (`tests/orchestrator/schemathesis.toml` turns two of them off
for the two routes that take task specs, and says why), with the admin token, from a fixed
seed. `make test` runs a short pass (PLEXUS_FUZZ_EXAMPLES, default 15 cases per operation, fuzzing
phase only: about 300 cases); `make fuzz` a long one with every phase (issue 12: at least
1,000 cases).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.local.fleet import LocalFleet

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    shared_orchestrator: LocalFleet, tmp_path: Path
) -> None:
    examples = int(os.environ.get("PLEXUS_FUZZ_EXAMPLES", "15"))
    seed = os.environ.get("PLEXUS_FUZZ_SEED", "1")
    # The coverage and stateful phases triple the time: `make fuzz` runs them.
    phases = os.environ.get("PLEXUS_FUZZ_PHASES", "fuzzing")
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color",
        "run", f"{shared_orchestrator.url}/openapi.json",
        # No --checks: every check is on by default, and naming them would override the
        # per-route exceptions of the config file.
        "--max-examples", str(examples), "--seed", seed, "--workers", "1",
        "--phases", phases,
        # The first task or job a fresh orchestrator takes loads its data set and builds its
        # model (3.5 s here when quiet); at load 11 that passed schemathesis's default 10 s.
        "--request-timeout", "60",
        "-H", f"Authorization: Bearer {shared_orchestrator.admin_token}",
        "--report", "ndjson", "--report-dir", str(tmp_path),
    ]
    # Seconds: the short pass takes about 30 s on a loaded 2-core machine.
    run = subprocess.run(command, capture_output=True, text=True, timeout=3000,
                         cwd=tmp_path)
    summary = run.stdout[-6000:]
    assert run.returncode == 0, f"schemathesis found problems (seed {seed}):\n{summary}"
    cases = [line.strip() for line in summary.splitlines() if " generated, " in line]
    assert cases and "failures" not in summary.lower(), summary
    print(f"schemathesis, seed {seed}, phases {phases}: {cases[0]}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))

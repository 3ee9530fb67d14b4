"""The orchestrator's CLI commands against a real orchestrator process."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from orchestrator.local.fleet import LocalFleet
from plexus.cli import app

runner = CliRunner()


def _run(fleet: LocalFleet, *args: str, token: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--url", fleet.url, "--token",
                                 token or fleet.admin_token])
    return result.exit_code, result.output


def test_task_commands_round_trip(shared_orchestrator: LocalFleet, tmp_path: Path) -> None:
    spec = tmp_path / "task.yaml"
    spec.write_text(yaml.safe_dump({"name": "cli-task", "model": "twonn",
                                    "dataset": {"name": "mnist5k"},
                                    "sync": {"allocator": "csa", "deadline_s": 5.0}}))
    code, out = _run(shared_orchestrator, "task", "submit", str(spec))
    assert code == 0, out
    task_id = int(out.split()[1])
    code, out = _run(shared_orchestrator, "task", "list")
    assert code == 0 and "cli-task" in out and "csa" in out
    code, out = _run(shared_orchestrator, "task", "show", str(task_id), "--json")
    shown = json.loads(out)
    assert shown["task"]["id"] == task_id and shown["rounds"] == []
    code, out = _run(shared_orchestrator, "task", "cancel", str(task_id))
    assert code == 0 and "cancelled" in out
    code, out = _run(shared_orchestrator, "task", "cancel", str(task_id))
    assert code == 2 and "conflict" in out
    code, out = _run(shared_orchestrator, "learners")
    assert code == 0


def test_bad_spec_file_and_bad_token_exit_with_a_message(shared_orchestrator: LocalFleet,
                                                         tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nsync:\n  deadline_s: -1\n")
    code, out = _run(shared_orchestrator, "task", "submit", str(spec))
    assert code == 2 and "sync.deadline_s" in out
    code, out = _run(shared_orchestrator, "task", "list", token="wrong")
    assert code == 2 and "unauthorized" in out
    code, out = _run(shared_orchestrator, "task", "show", "4242")
    assert code == 2 and "task_not_found" in out


def test_learners_remove_revokes_a_learner(shared_orchestrator: LocalFleet) -> None:
    import httpx

    enrolled = httpx.post(f"{shared_orchestrator.url}/v1/learners/enroll", json={
        "join_token": shared_orchestrator.join_token, "name": "cli-gone"}).json()
    code, out = _run(shared_orchestrator, "learners")
    assert code == 0 and "cli-gone" in out
    code, out = _run(shared_orchestrator, "learners", "remove", str(enrolled["learner_id"]))
    assert code == 0 and "cli-gone" in out, out
    hb = httpx.post(f"{shared_orchestrator.url}/v1/learners/{enrolled['learner_id']}/heartbeat",
                    headers={"Authorization": f"Bearer {enrolled['token']}"}, json={})
    assert hb.status_code == 401
    code, out = _run(shared_orchestrator, "learners", "remove", str(enrolled["learner_id"]))
    assert code == 2 and "learner_not_found" in out

"""The orchestrator's CLI commands against a real orchestrator process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
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


def test_logs_and_show_say_a_task_waits_for_learners(shared_orchestrator: LocalFleet,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.cli.common import console

    monkeypatch.setattr(console, "_width", 80)  # as COLUMNS=80 would
    with shared_orchestrator.client() as client:
        task_id = client.submit({"name": "cli-waits", "model": "twonn",
                                 "dataset": {"name": "mnist5k"}, "sync": {"rounds": 1}})["id"]
        # No learner is alive here: the driver notes that it waits.
        deadline = time.monotonic() + 30
        while not any(e["kind"] == "waiting" for e in client.events(task_id)["events"]):
            assert time.monotonic() < deadline, "no waiting event within 30 s"
            time.sleep(0.1)
    code, out = _run(shared_orchestrator, "task", "show", str(task_id))
    assert code == 0 and "waiting for learners:" in out, out
    code, out = _run(shared_orchestrator, "task", "cancel", str(task_id))
    assert code == 0
    code, out = _run(shared_orchestrator, "task", "logs", str(task_id), "--follow")
    assert code == 0, out  # --follow returns: the task has ended
    lines = out.splitlines()
    assert "waiting for learners:" in lines[-2] and "enrolled" in lines[-2], out
    assert "state" in lines[-1] and "cancelled by the user" in lines[-1], out
    for args in (("task", "list"), ("learners",), ("task", "show", str(task_id))):
        code, out = _run(shared_orchestrator, *args)
        assert code == 0 and "…" not in out, out  # no header word cut at 80 columns
        assert max(len(line) for line in out.splitlines()) <= 80, out


def test_events_route_refuses_bad_cursors(admin: httpx.Client) -> None:
    assert admin.get("/v1/tasks/4242/events").json()["error"] == "task_not_found"
    assert admin.get("/v1/tasks/1/events", params={"after": -1}).status_code == 422
    assert admin.get("/v1/tasks/1/events", params={"limit": 5000}).status_code == 422
    assert httpx.get(f"{admin.base_url}/v1/tasks/1/events").status_code == 401

"""The CLI, logs and /metrics against a live orchestrator with a real agent (extended tier).

`task watch` at 80 columns until a task ends, `task logs --follow`, `task show --csv --plot`,
Ctrl-C detaching `task submit --wait` with its hint, per-task series in a scraped /metrics
that drop out when the task ends, the agent's per-work and connection log lines, and the
orchestrator's JSON log lines without access-log noise.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from orchestrator.local.fleet import LocalFleet, free_port

pytestmark = [pytest.mark.slow, pytest.mark.extended]

SPEC = {"name": "cli-live", "model": "twonn", "dataset": {"name": "mnist5k"},
        "partition": {"shard_size": 250}, "training": {"lr": 0.05, "iterations": 1},
        "sync": {"allocator": "csa", "deadline_s": 2.0, "grace_s": 1.0, "rounds": 3}}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    f = LocalFleet(Path(tmp_path_factory.mktemp("cli-live")) / "data", speeds={"pi": 1.0})
    try:
        f.start()
        yield f
    finally:
        f.stop()


def _cli(fleet: LocalFleet, *args: str, **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "80", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "plexus.cli", *args, "--url", fleet.url,
                             "--token", fleet.admin_token], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _run(fleet: LocalFleet, *args: str, timeout_s: float = 120) -> tuple[int, str]:
    proc = _cli(fleet, *args)
    out, _ = proc.communicate(timeout=timeout_s)
    return proc.returncode, out


def _scrape(fleet: LocalFleet, name: str, task_id: int) -> float | None:
    text = httpx.get(f"{fleet.url}/metrics").text
    m = re.search(rf'^{name}{{task="{task_id}"}} (\S+)$', text, re.M)
    return None if m is None else float(m.group(1))


def test_watch_logs_exports_and_metrics_of_a_run(fleet: LocalFleet, tmp_path: Path) -> None:
    with fleet.client() as client:
        task_id = client.submit(SPEC)["id"]
    code, out = _run(fleet, "task", "watch", str(task_id), timeout_s=180)
    assert code == 0, out
    assert "finished: 3/3 rounds" in out and "…" not in out, out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    for header in ("round", "accuracy", "left out", "learner", "shards", "predicted (s)"):
        assert header.split()[0] in out
    code, out = _run(fleet, "task", "logs", str(task_id), "--follow")
    assert code == 0, out
    kinds = [line.split()[1] for line in out.splitlines()]
    assert kinds[0] == "state" and kinds[-1] == "state" and "finished" in out.splitlines()[-1]
    assert kinds.count("round_started") == kinds.count("round_closed") == 3, out
    assert kinds.count("aggregated") == 3 and "model version 3" in out, out
    table, png = tmp_path / "rounds.csv", tmp_path / "rounds.png"
    code, out = _run(fleet, "task", "show", str(task_id), "--csv", str(table), "--plot", str(png))
    assert code == 0, out
    rows = list(csv.DictReader(table.open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2] and float(rows[-1]["accuracy"]) > 0.1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The agent logged each piece of work in one line.
    agent_log = " ".join((fleet.data_dir / "agent-pi.log").read_text().split())
    assert re.search(rf"trained task {task_id} round 2: \d+ shards, \d+ samples in [\d.]+ s "
                     r"\((not halted|halted at the deadline)\), upload [\d.]+ KiB", agent_log)


def test_metrics_have_per_task_series_only_while_it_runs(fleet: LocalFleet) -> None:
    with fleet.client() as client:
        task_id = client.submit({**SPEC, "sync": {**SPEC["sync"], "rounds": 50}})["id"]
        end = time.monotonic() + 120
        while _scrape(fleet, "plexus_task_accuracy", task_id) is None:
            assert time.monotonic() < end, "no accuracy series while the task ran"
            time.sleep(0.2)
        assert _scrape(fleet, "plexus_task_rounds", task_id) >= 1  # type: ignore[operator]
        assert _scrape(fleet, "plexus_task_model_version", task_id) >= 1  # type: ignore[operator]
        assert _scrape(fleet, "plexus_task_truancy_ratio", task_id) is not None
        assert _scrape(fleet, "plexus_task_sb_prediction_error_ratio", task_id) is not None
        text = httpx.get(f"{fleet.url}/metrics").text
        assert 'plexus_learner_online{learner="pi"} 1.0' in text
        client.cancel(task_id)
    assert _scrape(fleet, "plexus_task_rounds", task_id) is None  # dropped out


def test_ctrl_c_detaches_a_waiting_submit_with_a_hint(fleet: LocalFleet, tmp_path: Path) -> None:
    spec = tmp_path / "long.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "sync": {**SPEC["sync"], "rounds": 50}}))
    proc = _cli(fleet, "task", "submit", str(spec), "--wait")
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("task ") and "submitted" in first, first
    task_id = int(first.split()[1])
    with fleet.client() as client:  # the bar is on: wait for a round, then press Ctrl-C
        end = time.monotonic() + 120
        while not client.rounds(task_id):
            assert time.monotonic() < end
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130, out
        assert f"plexus task watch {task_id}" in out, out
        assert client.task(task_id)["state"] == "running"  # detaching did not stop it
        client.cancel(task_id)


def test_serve_logs_events_as_json_and_no_access_lines(tmp_path: Path) -> None:
    port, token = free_port(), "admin-secret-token"
    proc = subprocess.Popen(
        [sys.executable, "-m", "plexus.cli", "orchestrator", "serve", "--port", str(port),
         "--data-dir", str(tmp_path / "data"), "--admin-token", token, "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 90
        while True:
            try:
                httpx.get(f"{url}/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < end and proc.poll() is None, "serve did not start"
                time.sleep(0.2)
        headers = {"Authorization": f"Bearer {token}"}
        answer = httpx.post(f"{url}/v1/tasks", headers=headers, timeout=60, json={
            "name": "j", "dataset": {"name": "synthetic", "samples": 400},
            "partition": {"shard_size": 50}})
        assert answer.status_code == 201, answer.text
        task = answer.json()
        while not httpx.get(f"{url}/v1/tasks/{task['id']}/events", headers=headers
                            ).json()["events"][1:]:
            assert time.monotonic() < end
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    waiting = [r for r in records if r.get("event") == "waiting"]
    assert waiting and waiting[0]["task_id"] == task["id"], records
    assert not any("GET /healthz" in r["message"] for r in records)  # no access log

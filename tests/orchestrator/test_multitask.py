"""Multi-task jobs end to end: an orchestrator, four agent processes, three tasks under MED.

Every metric the job reports is recomputed here from its recorded per-task rounds, and eq.
4.4f (a learner serves at most one task per round) is checked in every round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.client import APIError, Client
from orchestrator.local.fleet import LocalFleet

pytestmark = pytest.mark.slow

STATES = ("idle", "training", "downloading")


def task(name: str, dataset: dict[str, Any], *, deadline_s: float, rounds: int = 2,
         total_shards: int = 4) -> dict[str, Any]:
    return {"name": name, "model": "twonn", "dataset": dataset,
            "partition": {"shard_size": 50}, "training": {"lr": 0.1, "iterations": 1},
            "sync": {"deadline_s": deadline_s, "grace_s": 2.0, "rounds": rounds,
                     "benchmark_shards": 1, "total_shards": total_shards}}


THREE = [
    task("digits-a", {"name": "digits"}, deadline_s=2.0, total_shards=6),
    task("synthetic-b", {"name": "synthetic", "samples": 600}, deadline_s=2.5),
    task("digits-c", {"name": "digits"}, deadline_s=1.5, rounds=1, total_shards=3),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    f = LocalFleet(Path(tmp_path_factory.mktemp("multitask")) / "data",
                   speeds={"w1": 1.0, "w2": 1.0, "w3": 1.0, "w4": 1.0})
    try:
        f.start()
        yield f
    finally:
        f.stop()


def finished_job(client: Client, job_id: int, timeout_s: float = 120.0) -> dict[str, Any]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        job = client.job(job_id)
        if job["state"] not in ("pending", "running"):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not end within {timeout_s} s")


def test_bad_jobs_are_refused_whole_naming_the_field(fleet: LocalFleet) -> None:
    with fleet.client() as client:
        before = (len(client.tasks()), len(client.jobs()))
        bad_spec = [THREE[0], {**THREE[1], "model": "no-such-net"}]
        dup = [THREE[0], THREE[0]]
        asynchronous = [THREE[0], {"name": "a", "mode": "async", "async": {}}]
        for tasks, field in ((bad_spec, "tasks[1]"), (dup, "tasks[1].name"),
                             (asynchronous, "tasks[1]")):
            with pytest.raises(APIError) as err:
                client.submit_job({"allocator": "med", "tasks": tasks})
            assert 400 <= err.value.status < 500
            assert field in err.value.detail, err.value.detail
        with pytest.raises(APIError) as err:
            client.submit_job({"allocator": "fastest", "tasks": [THREE[0]]})
        assert err.value.status == 422 and "allocator" in err.value.detail
        # A dataset that cannot be loaded fails at preparation, after earlier tasks were made.
        unloadable = [THREE[0], task("idx", {"name": "mnist", "path": "/nonexistent"},
                                     deadline_s=1.0)]
        with pytest.raises(APIError) as err:
            client.submit_job({"allocator": "med", "tasks": unloadable})
        assert 400 <= err.value.status < 500, err.value.detail
        assert (len(client.tasks()), len(client.jobs())) == before
        # A single task cannot ask for MED: it is pointed at multi-task jobs.
        with pytest.raises(APIError) as err:
            client.submit({**THREE[0], "sync": {**THREE[0]["sync"], "allocator": "med"}})
        assert err.value.status == 422 and "/v1/jobs" in err.value.detail


def test_three_tasks_under_med_record_rounds_the_metrics_come_from(fleet: LocalFleet) -> None:
    from orchestrator.allocation.metrics import TaskRound, summarize

    with fleet.client() as client:
        created = client.submit_job({"name": "three", "allocator": "med", "tasks": THREE})
        job = finished_job(client, created["id"])
        assert job["state"] == "finished", job["reason"]
        task_rounds = {t["id"]: client.rounds(t["id"]) for t in job["tasks"]}

    # Set-up: a heated-softmax distribution per learner and SB in every state for every task.
    setup = job["setup"]
    assert len(setup["benchmarks"]) == 4, setup["left_out"]
    for dist in setup["distributions"].values():
        assert abs(sum(dist.values()) - 1.0) < 1e-9
        assert max(dist.values()) == pytest.approx(0.787, abs=1e-3)  # e²/(e²+2), heat 0.5
    for per_task in setup["benchmarks"].values():
        assert len(per_task) == 3
        for per_state in per_task.values():
            assert set(per_state) == set(STATES)
            assert all(v["bandwidth"] > 0 and v["compute"] > 0 for v in per_state.values())

    records = job["records"]
    # Rounds: tasks a and b two each, task c one; each task has its own round history too.
    assert sorted((r["task"], r["round"]) for r in records) == sorted(
        [("digits-a", 0), ("digits-a", 1), ("synthetic-b", 0), ("synthetic-b", 1),
         ("digits-c", 0)])
    assert all(t["state"] == "finished" for t in job["tasks"])
    for t in job["tasks"]:
        assert len(task_rounds[t["id"]]) == t["rounds"]
        assert task_rounds[t["id"]][-1]["accuracy"] is not None

    for index in {r["round"] for r in records}:
        this = [r for r in records if r["round"] == index]
        serving = [set(r["allocation"]) for r in this]
        # Eq. 4.4f: no learner serves two tasks in one round.
        assert sum(len(s) for s in serving) == len(set().union(*serving)), this
    for r in records:
        spec = next(s for s in THREE if s["name"] == r["task"])
        # Eq. 4.4c: every one of D_i shards is allocated; samples count shards × s × μ.
        assert sum(r["allocation"].values()) == r["shards_allocated"] == \
            spec["sync"]["total_shards"]
        assert r["samples_allocated"] == r["shards_allocated"] * 50
        assert 0 <= r["samples_trained"] <= r["samples_allocated"]
        assert r["samples_trained"] == min(sum(r["learner_samples"].values()),
                                           r["samples_allocated"])
        assert r["fulfillment"] == pytest.approx(r["samples_trained"] / r["samples_allocated"])
        assert r["met_deadline"] == (r["duration_s"] <= r["deadline_s"])
        assert set(r["learner_busy_s"]) == set(r["allocation"])
        assert r["duration_s"] == pytest.approx(max(r["learner_busy_s"].values()))
        for k, busy in r["learner_busy_s"].items():
            assert r["learner_idle_s"][k] == pytest.approx(r["duration_s"] - busy)
        # MED never hears the state a learner drew.
        assert all(s is None for s in r["states_revealed"].values())
        # Eq. 4.3's prediction per learner beside what happened, term by term.
        timing = r["learner_timing"]
        assert set(timing) == set(r["allocation"])
        for k, t in timing.items():
            assert t["expected_s"] == pytest.approx(t["expected_transfer_s"]
                                                    + t["expected_train_s"])
            assert t["expected_transfer_s"] > 0 and t["expected_train_s"] > 0
            assert t["measured_s"] == r["learner_busy_s"][k]
            assert t["download_s"] >= 0 and 0 < t["train_s"] <= t["measured_s"]
            assert "in_state_train_s" not in t  # MED hears no state, so none is predicted
        assert r["expected_delay_s"] == pytest.approx(max(t["expected_s"]
                                                          for t in timing.values()))
        # Learners halt at T_i: nobody is waited on far past the deadline.
        assert r["duration_s"] < r["deadline_s"] + 2.0

    # Every metric, overall and per task, recomputed from the records alone.
    rows = [TaskRound(task=r["task"], round=r["round"], deadline_s=r["deadline_s"],
                      duration_s=r["duration_s"], samples_total=r["samples_allocated"],
                      samples_trained=r["samples_trained"],
                      learner_busy_s=list(r["learner_busy_s"].values())) for r in records]
    expected = summarize(rows)
    metrics = job["metrics"]
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["average_training_time_s"] == pytest.approx(
        sum(r["duration_s"] for r in records) / len(records))
    assert metrics["satisfaction_ratio"] == pytest.approx(
        sum(r["met_deadline"] for r in records) / len(records))
    assert metrics["average_task_fulfillment"] == pytest.approx(
        sum(r["samples_trained"] / r["samples_allocated"] for r in records) / len(records))
    assert metrics["data_drop_rate"] == pytest.approx(1.0 - metrics["average_task_fulfillment"])
    assert 0.0 < metrics["occupancy"] <= 1.0
    for name in ("digits-a", "synthetic-b", "digits-c"):
        mine = [x for x in rows if x.task == name]
        assert metrics["per_task"][name] == pytest.approx(summarize(mine))


def test_mmtt_ideal_from_the_cli_hears_the_drawn_states(fleet: LocalFleet,
                                                        tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from plexus.cli import app

    spec = tmp_path / "one.yaml"
    spec.write_text(yaml.safe_dump(task("one", {"name": "digits"}, deadline_s=2.0, rounds=1)))
    auth = ["--url", fleet.url, "--token", fleet.admin_token]
    result = CliRunner().invoke(app, ["task", "submit", str(spec), "--allocator", "mmtt_ideal",
                                      "--wait", *auth])
    assert result.exit_code == 0, result.output
    assert "satisfaction" in result.output  # the metrics table
    job_id = int(result.output.split()[1])
    shown = CliRunner().invoke(app, ["job", "show", str(job_id), "--json", *auth])
    job = json.loads(shown.output)
    assert job["state"] == "finished", job["reason"]
    (record,) = job["records"]
    assert record["states_revealed"]
    assert all(s in STATES for s in record["states_revealed"].values())
    assert record["solver"]["method"] == "mmtt-ideal"
    # The states are known here, so the record also predicts each learner in its own state.
    for k, t in record["learner_timing"].items():
        setup = job["setup"]["benchmarks"][k][str(record["task_id"])]
        rate = setup[record["states_revealed"][k]]["compute"]
        assert t["in_state_train_s"] == pytest.approx(record["allocation"][k] * 50 / rate)

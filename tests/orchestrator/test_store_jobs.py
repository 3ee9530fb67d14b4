"""The store's multi-task jobs: all-or-nothing creation, the crash sweep, one-transaction rounds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import BadInput, Conflict
from orchestrator.store import JobRow, Store

SIZES = {"num_shards": 4, "shard_samples": 50, "shard_bytes": 1000, "model_bytes": 2000}


def spec(name: str) -> dict[str, Any]:
    return {"name": name, "mode": "sync", "sync": {"rounds": 2}}


def prepare(task_id: int, spec: dict[str, Any], directory: Path) -> dict[str, int]:
    if spec["name"] == "broken":
        raise BadInput("dataset.path: no IDX files there", code="invalid_spec")
    (directory / "models").mkdir(parents=True)
    return SIZES


def test_a_job_is_created_whole_or_not_at_all(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    job = store.create_job("j", {"allocator": "med"}, [spec("a"), spec("b")], prepare,
                           time.time())
    assert len(job.task_ids) == 2 and store.job(job.id).ready
    assert store.job_task_ids() == set(job.task_ids)
    with pytest.raises(BadInput):
        store.create_job("bad", {}, [spec("c"), spec("broken")], prepare, time.time())
    assert [j.id for j in store.jobs()] == [job.id]
    assert [t.id for t in store.tasks()] == job.task_ids
    assert sorted(p.name for p in (tmp_path / "data" / "tasks").iterdir()) == \
        sorted(str(t) for t in job.task_ids)


def test_a_job_interrupted_while_being_created_is_swept_at_start(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    half = store.create_task(spec("half"), lambda tid, d: prepare(tid, spec("x"), d),
                             time.time())
    with store.session() as s:  # what a crash between two task preparations leaves behind
        s.add(JobRow(name="crashed", options={}, task_ids=[half.id], state="pending",
                     created_at=time.time(), ready=False))
    store.close()
    reopened = Store(tmp_path / "data")
    assert reopened.jobs() == [] and reopened.tasks() == []
    assert not (tmp_path / "data" / "tasks" / str(half.id)).exists()


def test_a_job_round_commits_every_task_or_none(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    job = store.create_job("j", {}, [spec("a"), spec("b")], prepare, time.time())
    now = time.time()
    store.set_job_state(job.id, "running", None, now)
    a, b = job.task_ids
    store.set_state(a, "running", None, now)
    store.set_state(b, "running", None, now)

    def entry(task_id: int) -> tuple[int, dict[str, Any], Path, dict[str, Any]]:
        values = {"index": 0, "started_at": now, "allocation": {"1": 2}, "shards": {"1": [0, 1]},
                  "samples": {"1": 100}, "left_out": {}, "plan_s": 0.1, "round_time_s": 1.0,
                  "truancy": -0.5, "loss": 1.0, "accuracy": 0.5, "model_version": 1}
        return task_id, values, store.layout.model(task_id, 1), {"task": str(task_id)}

    store.set_state(b, "cancelled", "by hand", now)
    with pytest.raises(Conflict):
        store.record_job_round(job.id, 0, [entry(a), entry(b)], now)
    assert store.rounds(a) == [] and store.job_rounds(job.id) == []
    assert store.job(job.id).rounds_done == 0

    store.record_job_round(job.id, 0, [entry(a)], now)
    assert [r.index for r in store.rounds(a)] == [0]
    assert [r.record for r in store.job_rounds(job.id)] == [{"task": str(a)}]
    assert store.task(a).model_version == 1 and store.job(job.id).rounds_done == 1
    # A GUC is committed once: recording GUC 0 again (a resumed job repeating it) or skipping
    # to GUC 2 is refused and changes nothing.
    for index in (0, 2):
        with pytest.raises(Conflict, match="not the next one"):
            store.record_job_round(job.id, index, [entry(a)], now)
    assert [r.index for r in store.rounds(a)] == [0] and store.job(job.id).rounds_done == 1


def test_job_tasks_fail_alone_when_no_learner_can_run_them_or_rounds_stay_empty(
        tmp_path: Path) -> None:
    import asyncio

    from orchestrator.runs.jobs import JobDriver, _Progress
    from plexus.spec import parse_spec

    store = Store(tmp_path / "data")
    job = store.create_job("j", {}, [spec("a"), spec("b")], prepare, time.time())
    a, b = job.task_ids
    for t in (a, b):
        store.set_state(t, "running", None, time.time())
    tasks = [store.task(a), store.task(b)]
    specs = [parse_spec({"name": n, "dataset": {"name": "digits"},
                         "sync": {"rounds": 3, "max_empty_rounds": 1}}) for n in "ab"]
    progress = _Progress.load(tasks, specs, [])
    setup = {"benchmarks": {"7": {}}, "eligible": {"7": [a]},
             "skipped": {str(b): {"8": "skipped: not enough memory"}},
             "learner_names": {"7": "big", "8": "tiny"}}
    driver = JobDriver(store, gateway=None, metrics=None)  # type: ignore[arg-type]
    asyncio.run(driver._fail_ineligible(tasks, setup, progress))
    assert store.task(b).state == "failed"
    assert store.task(b).reason == "no eligible learner: tiny: skipped: not enough memory"
    assert store.task(a).state == "running" and progress.active(specs, 0) == [0]
    # Task a: an empty GUC is tolerated (max_empty_rounds 1), a second in a row is not.
    empty = ({"left_out": {"7": "timed out"}}, {"samples_trained": 0})
    assert progress.observe(0, specs[0], 0, *empty) is None
    why = progress.observe(0, specs[0], 1, *empty)
    assert why is not None and "2 empty rounds in a row" in why and "timed out" in why
    assert progress.final(0) is not None  # and it never trained at all
    assert progress.observe(0, specs[0], 2, {}, {"samples_trained": 50}) is None
    assert progress.final(0) is None

"""The store on its own: all-or-nothing task creation, round commits, reopening after a crash.

Runs on SQLite, and on PostgreSQL when PLEXUS_TEST_DB_URL names a server (e.g.
postgresql+psycopg://user:pw@host/db; each test gets a fresh database there); without it those
cases skip, and fail when CI is "true".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import BadInput, Conflict, NotFound
from orchestrator.runs.taskdata import prepare_task
from orchestrator.store import Store, write_atomic
from plexus.spec import parse_spec
from tests.orchestrator.postgres import fresh_database, postgres_url

SPEC = parse_spec({"name": "s", "dataset": {"name": "synthetic", "samples": 400},
                   "partition": {"shard_size": 50}, "sync": {"rounds": 2}})


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        yield Store(tmp_path / "data")
        return
    with fresh_database(postgres_url()) as url:  # skipped without PLEXUS_TEST_DB_URL
        store = Store(tmp_path / "data", url)
        try:
            yield store
        finally:
            store.close()


def _create(store: Store) -> Any:
    return store.create_task(SPEC.to_dict(),
                             lambda tid, _d: prepare_task(SPEC, tid, store.layout), time.time())


def _round(index: int) -> dict[str, Any]:
    return {"index": index, "started_at": time.time(), "allocation": {"1": 2},
            "shards": {"1": [0, 1]}, "samples": {"1": 100}, "left_out": {}, "plan_s": 0.1,
            "round_time_s": 1.0, "truancy": 0.0, "loss": 1.0, "accuracy": 0.5,
            "model_version": index + 1}


def test_write_atomic_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.bin"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]


def test_a_failing_preparation_leaves_no_task_and_no_files(store: Store) -> None:
    def broken(task_id: int, directory: Path) -> dict[str, int]:
        (directory / "shards").mkdir(parents=True)
        raise BadInput("dataset: nope")

    with pytest.raises(BadInput):
        store.create_task(SPEC.to_dict(), broken, time.time())
    assert store.tasks() == []
    assert not any((store.layout.root / "tasks").glob("*/shards"))


def test_rounds_and_learners_survive_reopening(store: Store, tmp_path: Path) -> None:
    task = _create(store)
    assert (task.num_shards, task.shard_samples) == (6, 50)
    learner = store.enroll("pi", {"cores": 4}, None, time.time())
    store.set_state(task.id, "running", None, time.time())
    store.record_round(task.id, _round(0), store.layout.model(task.id, 1), time.time())
    store.close()

    again = Store(store.layout.root, None if store.url.startswith("sqlite") else store.url)
    t = again.task(task.id)
    assert (t.state, t.rounds_done, t.model_version) == ("running", 1, 1)
    assert [r.index for r in again.rounds(task.id)] == [0]
    assert again.learner_by_token(learner.token).id == learner.id  # type: ignore[union-attr]
    assert [x.id for x in again.tasks(("running",))] == [task.id]


def test_state_machine_refuses_moves_out_of_an_ended_state(store: Store) -> None:
    task = _create(store)
    store.set_state(task.id, "running", None, time.time())
    store.set_state(task.id, "cancelled", "by test", time.time())
    with pytest.raises(Conflict, match="cancelled"):
        store.set_state(task.id, "finished", None, time.time())
    with pytest.raises(Conflict):  # a round of a cancelled task is not recorded
        store.record_round(task.id, _round(0), store.layout.model(task.id, 1), time.time())
    with pytest.raises(NotFound):
        store.task(task.id + 100)


def test_reenrolling_keeps_the_id_and_replaces_the_token(store: Store) -> None:
    a = store.enroll("pi", {}, "http://10.0.0.2:9000", time.time())
    with pytest.raises(Conflict) as taken:  # the name without that learner's secret
        store.enroll("pi", {}, None, time.time())
    assert taken.value.code == "name_taken" and "--name" in taken.value.detail
    with pytest.raises(Conflict):
        store.enroll("pi", {}, None, time.time(), secret="é-not-it")
    assert store.learner_by_token(a.token) is not None
    b = store.enroll("pi", {}, None, time.time(), secret=a.token)
    assert a.id == b.id and a.token != b.token
    assert store.learner_by_token(a.token) is None
    assert store.learner_by_token(b.token).endpoint is None  # type: ignore[union-attr]


def test_a_task_whose_preparation_was_interrupted_is_removed_at_start(store: Store) -> None:
    from orchestrator.store import TaskRow

    with store.session() as s:  # what a crash in the middle of create_task leaves behind
        s.add(TaskRow(name="half", spec={}, state="pending", created_at=time.time(),
                      ready=False))
    (store.layout.task_dir(1) / "shards").mkdir(parents=True)
    with pytest.raises(NotFound):
        store.task(1)
    store.close()
    again = Store(store.layout.root, None if store.url.startswith("sqlite") else store.url)
    assert again.tasks() == []
    assert not store.layout.task_dir(1).exists()
    assert _create(again).id >= 1


def test_participants_refusals_and_removal(store: Store) -> None:
    lr = store.enroll("dev", {}, None, time.time())
    assert not store.takes_part(7, lr.id)
    store.add_participant(7, lr.id)
    store.add_participant(7, lr.id)  # idempotent
    assert store.takes_part(7, lr.id) and not store.takes_part(8, lr.id)
    store.add_refusal(7, "no_outstanding_pull")
    store.add_refusal(7, "no_outstanding_pull")
    store.add_refusal(7, "n_samples_too_large")
    assert store.refusals(7) == {"no_outstanding_pull": 2, "n_samples_too_large": 1}
    assert store.refusals(8) == {}
    store.remove_learner(lr.id)
    assert store.learner_by_token(lr.token) is None and not store.takes_part(7, lr.id)
    with pytest.raises(NotFound):
        store.remove_learner(lr.id)


def test_a_data_dir_from_before_the_admission_tables_still_opens(tmp_path: Path) -> None:
    from sqlalchemy import text

    old = Store(tmp_path / "data")
    lr = old.enroll("dev", {}, None, time.time())
    with old.engine.begin() as conn:  # the schema as it was before issue 12
        conn.execute(text("DROP TABLE task_participants"))
        conn.execute(text("DROP TABLE task_refusals"))
    old.close()
    store = Store(tmp_path / "data")
    try:
        assert store.learner_by_token(lr.token) is not None
        store.add_participant(1, lr.id)
        store.add_refusal(1, "samples_capped")
        assert store.takes_part(1, lr.id) and store.refusals(1) == {"samples_capped": 1}
    finally:
        store.close()


def test_async_updates_aggregations_and_events_on_both_databases(store: Store) -> None:
    """The tables of the durable async path and of the task journal, on SQLite and PostgreSQL:
    an acknowledged update is a row and a file; an aggregation consumes exactly the updates it
    names, once; the saved runner state and the events read back."""
    from orchestrator.store import add_event, read_events

    task = _create(store)
    store.set_state(task.id, "running", None, time.time())
    ids = [store.add_async_update(task.id, f"pi-{i}", 0, 10 + i, b"update %d" % i, time.time())
           for i in range(3)]
    assert [u.id for u in store.async_updates(task.id, pending=True)] == ids
    assert Path(store.async_updates(task.id)[0].path).read_bytes() == b"update 0"
    write_atomic(store.layout.model(task.id, 1), b"model v1")
    store.commit_async_aggregation(task.id, _round(0), store.layout.model(task.id, 1), ids[:2],
                                   {"core": {"version": 1}}, time.time())
    assert [u.id for u in store.async_updates(task.id, pending=True)] == ids[2:]
    with pytest.raises(Conflict):  # an update already merged is never merged again
        store.commit_async_aggregation(task.id, _round(1), store.layout.model(task.id, 2),
                                       ids[1:], {}, time.time())
    t = store.task(task.id)
    assert (t.rounds_done, t.model_version) == (1, 1)
    saved = store.async_state(task.id)
    assert saved is not None and saved.state == {"core": {"version": 1}}
    first = add_event(store, task.id, "aggregated", "v1", time.time(), {"version": 1})
    add_event(store, task.id, "state", "finished", time.time())
    assert [e.kind for e in read_events(store, task.id)] == ["aggregated", "state"]
    assert [e.message for e in read_events(store, task.id, after=first)] == ["finished"]

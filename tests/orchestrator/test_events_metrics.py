"""The store's task events (bounded, with a cursor) and the per-task /metrics collector, on a
real SQLite store without a server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.metrics import Metrics, prediction_error
from orchestrator.store import Store, add_event, read_events
from orchestrator.store import events as events_module


def _task(store: Store) -> int:
    def prepare(_task_id: int, directory: Path) -> dict[str, Any]:
        directory.mkdir(parents=True)
        return {}

    return store.create_task({"name": "t"}, prepare, time.time()).id


def test_events_are_bounded_per_task_and_read_with_a_cursor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "MAX_EVENTS_PER_TASK", 5)
    store = Store(tmp_path / "data")
    a, b = _task(store), _task(store)
    ids = [add_event(store, a, "round_started", f"round {i}", time.time(), {"round": i})
           for i in range(8)]
    add_event(store, b, "waiting", "waiting for learners: 0 enrolled", time.time())
    kept = read_events(store, a)
    assert [e.message for e in kept] == [f"round {i}" for i in range(3, 8)]  # newest 5
    assert [e.data["round"] for e in read_events(store, a, after=ids[5])] == [6, 7]
    assert read_events(store, a, after=ids[-1]) == []
    assert [e.kind for e in read_events(store, b)] == ["waiting"]  # b's event was not dropped
    with pytest.raises(ValueError, match="unknown event kind"):
        add_event(store, a, "nonsense", "x", time.time())
    assert len(read_events(store, a)) == 5


def _samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_per_task_series_drop_out_when_the_task_ends(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    task_id = _task(store)
    store.enroll("pi", {}, None, time.time())
    store.enroll("gone", {}, None, time.time() - 100)
    store.add_refusal(task_id, "samples_capped")
    metrics = Metrics(lambda: 1, store=store, alive_after_s=20.0)
    key = (("task", str(task_id)),)
    assert _samples(metrics, "plexus_task_rounds") == {key: 0.0}
    assert _samples(metrics, "plexus_task_refused_updates") == {
        (("reason", "samples_capped"), ("task", str(task_id))): 1.0}
    assert _samples(metrics, "plexus_learner_online") == {
        (("learner", "gone"),): 0.0, (("learner", "pi"),): 1.0}
    store.set_state(task_id, "cancelled", "by the test", time.time())
    assert _samples(metrics, "plexus_task_rounds") == {}
    assert _samples(metrics, "plexus_task_refused_updates") == {}
    assert b"plexus_task_accuracy" in metrics.render()  # the family is declared, empty


def test_prediction_error_is_the_mean_relative_miss() -> None:
    assert prediction_error({"1": {"actual_s": 3.0, "predicted_s": 2.0},
                             "2": {"actual_s": 1.0, "predicted_s": 2.0},
                             "3": {"actual_s": 1.0, "predicted_s": None}}) == pytest.approx(0.5)
    assert prediction_error({}) is None

"""Async tasks survive a crash: the runner's journal in the store, restored into a new runner.

A scripted run of each aggregator (SPIN, FedBuff, PORT) journals into a real store (SQLite
file, fsynced update files); at a crash point the runner is dropped without closing, a new one
is rebuilt from the store alone (`restore_runner`, what the orchestrator does at start-up), and
the script goes on against it. It must end with exactly the model of the same script run
without a crash, and every accepted update id must be in the store and merged exactly once.
The real-process version (orchestrator SIGKILLed mid-task) is `test_async_resume.py`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator.aggregation import build_aggregator
from orchestrator.runs.async_runner import AsyncTaskRunner
from orchestrator.runs.asynchronous import StoreJournal, restore_runner
from orchestrator.store import Store, TaskRow, write_atomic
from plexus.tensors import encode_state

INITIAL = {"w": torch.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": torch.zeros(3)}
CLIENTS = ("a", "b", "c")
LIMIT = 40  # each client's partition
# One step of the script: every idle client pulls, time passes, the trained ones push.
STEP = [("pull", c) for c in CLIENTS] + [("tick", 20.0)] + [("pull", c) for c in CLIENTS] \
    + [("push", c) for c in CLIENTS] + [("tick", 20.0)]
SCRIPT = STEP * 5


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Fleet:
    """The learners' side: what each client pulled; it outlives an orchestrator crash."""

    def __init__(self) -> None:
        self.holding: dict[str, tuple[int, dict[str, torch.Tensor], int]] = {}
        self.pulls = 0
        self.acked: list[int] = []
        self.pushes = 0

    def apply(self, op: tuple[str, Any], runner: AsyncTaskRunner, clock: Clock) -> None:
        kind, arg = op
        if kind == "tick":
            clock.t += arg
            runner.tick()
        elif kind == "pull" and arg not in self.holding:
            self.pulls += 1
            n = min(LIMIT, 8 * self.pulls)
            got = runner.pull(arg, n, LIMIT)
            if got is not None:
                from plexus.tensors import decode_state

                state, _ = decode_state(got[1])
                self.holding[arg] = (got[0], state, n)
        elif kind == "push" and arg in self.holding:
            version, state, n = self.holding.pop(arg)
            g = torch.Generator().manual_seed(hash((arg, version, n)) % 2**31)
            # In name order: safetensors hands tensors back in no fixed order.
            trained = {k: state[k] + 0.1 * torch.randn(state[k].shape, generator=g)
                       for k in sorted(state)}
            answer = runner.push(arg, encode_state(trained, {"base_version": version,
                                                             "n_samples": n}))
            assert answer["accepted"]
            self.pushes += 1
            if "update_id" in answer:
                self.acked.append(int(answer["update_id"]))


def _runner(name: str, state: Any, clock: Clock, journal: Any = None) -> AsyncTaskRunner:
    core = build_aggregator(name, state, k=2, pi_s=15.0, selection_interval_s=15.0, seed=3,
                            concurrency=3, start_time=clock())
    return AsyncTaskRunner(core, clock=clock, journal=journal)


def _task(store: Store) -> TaskRow:
    def prepare(task_id: int, _d: Path) -> dict[str, int]:
        write_atomic(store.layout.model(task_id, 0), encode_state(INITIAL, {"version": 0}))
        return {"num_shards": 3, "shard_samples": LIMIT}

    task = store.create_task({"name": "t", "mode": "async"}, prepare, time.time())
    return store.set_state(task.id, "running", None, time.time())


def _resumed(store: Store, task_id: int, name: str, clock: Clock) -> AsyncTaskRunner:
    from orchestrator.runs.taskdata import read_state

    task = store.task(task_id)
    state = read_state(store.layout.model(task_id, task.model_version))
    runner = _runner(name, state, clock, StoreJournal(store, task_id))
    restore_runner(store, task, runner)
    return runner


# One crash point per aggregator in `make test` (~2 s each on a loaded host); every other
# combination in `make test-extended`.
FAST = {("spin", 17), ("fedbuff", 31), ("port", 6)}
CASES = [pytest.param(n, c, id=f"{n}-{c}",
                      marks=() if (n, c) in FAST else pytest.mark.extended)
         for n in ("spin", "fedbuff", "port") for c in (6, 17, 31)]


@pytest.mark.parametrize(("name", "crash_at"), CASES)
def test_a_crash_anywhere_ends_with_the_model_of_a_run_without_one(
        tmp_path: Path, name: str, crash_at: int) -> None:
    # The reference: the whole script, no journal, no crash.
    ref_clock, ref_fleet = Clock(), Fleet()
    ref = _runner(name, INITIAL, ref_clock)
    for op in SCRIPT:
        ref_fleet.apply(op, ref, ref_clock)
    ref.finish("script over")

    store = Store(tmp_path / "data")
    task = _task(store)
    clock, fleet = Clock(), Fleet()
    first = _runner(name, INITIAL, clock, StoreJournal(store, task.id))
    for op in SCRIPT[:crash_at]:
        fleet.apply(op, first, clock)
    before = (first.core.version, len(first.core.queue), first.core.next_deadline())
    # SIGKILL: the first runner is dropped as it is; only the store is left.
    store.close()
    store = Store(tmp_path / "data")
    second = _resumed(store, task.id, name, clock)
    deadline = second.core.next_deadline()
    assert (second.core.version, len(second.core.queue)) == before[:2]
    assert (deadline is None) == (before[2] is None)
    if deadline is not None and before[2] is not None:
        assert abs(deadline - before[2]) < 1.0  # timers count from the recorded times
    for op in SCRIPT[crash_at:]:
        fleet.apply(op, second, clock)
    second.finish("script over")

    assert second.core.version == ref.core.version > 2
    for key, value in ref.core.model.items():
        torch.testing.assert_close(second.core.model[key], value)
    rows = store.async_updates(task.id)
    assert sorted(fleet.acked) == [r.id for r in rows] and len(rows) == ref_fleet.pushes
    assert all(r.consumed_version is not None for r in rows)
    merged = sum(sum(r.allocation.values()) for r in store.rounds(task.id))
    assert merged == len(rows)  # every accepted update merged exactly once
    assert store.task(task.id).model_version == second.core.version
    store.close()


def test_spin_timer_counts_from_the_last_recorded_aggregation(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    task = _task(store)
    first = AsyncTaskRunner(build_aggregator("spin", INITIAL, k=5, pi_s=0.8,
                                             start_time=time.monotonic()),
                            journal=StoreJournal(store, task.id))
    got = first.pull("a", 8, LIMIT)
    assert got is not None
    answer = first.push("a", encode_state(INITIAL, {"base_version": 0, "n_samples": 8}))
    assert answer["update_id"] >= 1 and first.core.queue
    due = first.core.next_deadline()
    assert due is not None
    second = AsyncTaskRunner(build_aggregator("spin", INITIAL, k=5, pi_s=0.8,
                                              start_time=time.monotonic()),
                             journal=StoreJournal(store, task.id))
    restore_runner(store, store.task(task.id), second)
    resumed_due = second.core.next_deadline()
    assert resumed_due is not None and abs(resumed_due - due) < 0.2  # not π from the restart
    second.start()
    try:
        end = time.monotonic() + 10
        while store.task(task.id).model_version < 1:
            assert time.monotonic() < end, "the timeout aggregation never came"
            time.sleep(0.05)
    finally:
        second.close()
    row = store.async_updates(task.id)[0]
    assert row.id == answer["update_id"] and row.consumed_version == 1
    assert store.rounds(task.id)[0].allocation == {"a": 1}
    store.close()


def test_an_update_is_on_disk_before_push_answers(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    task = _task(store)
    runner = AsyncTaskRunner(build_aggregator("spin", INITIAL, k=5, pi_s=None),
                             journal=StoreJournal(store, task.id))
    runner.pull("a", 8, LIMIT)
    body = encode_state(INITIAL, {"base_version": 0, "n_samples": 8})
    answer = runner.push("a", body)
    # Read back through a second connection, as a restarted process would.
    other = Store(tmp_path / "data")
    (row,) = other.async_updates(task.id, pending=True)
    assert row.id == answer["update_id"] and Path(row.path).read_bytes() == body
    other.close()
    store.close()

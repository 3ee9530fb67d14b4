"""Asynchronous tasks (SPIN / FedBuff / PORT) inside the orchestrator service.

The aggregator cores (`orchestrator.aggregation`) and their live runner and REST routes
(`orchestrator.async_tasks`, `orchestrator.api_async`) come from the asynchronous-mode work;
this module connects them to the service: it builds a runner per submitted async task from
the task's model v0 and spec, records every aggregation as a row of the task's history (with
its model version written to disk), and ends the task after `async.max_updates` updates.

An async task's update queue lives in memory, so unlike a synchronous task it cannot resume
after the orchestrator restarts: it is marked failed with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from orchestrator.errors import Conflict
from orchestrator.store import TaskRow, write_atomic

if TYPE_CHECKING:
    from orchestrator.async_tasks import AsyncTaskRunner
    from orchestrator.service import Service

log = logging.getLogger("orchestrator.async_mode")
RESTART_REASON = ("the orchestrator restarted: an asynchronous task's update queue is held in "
                  "memory and cannot resume; submit the task again")


class AsyncTasks:
    """The running asynchronous tasks of one orchestrator, task id → runner."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.runners: dict[int, AsyncTaskRunner] = {}
        self._watchers: dict[int, asyncio.Task[None]] = {}

    def fail_leftovers(self) -> None:
        """At start-up: async tasks a previous process was running cannot resume."""
        store = self.service.store
        for task in store.tasks(("pending", "running")):
            if (task.spec or {}).get("mode") == "async":
                with contextlib.suppress(Conflict):
                    store.set_state(task.id, "failed", RESTART_REASON, time.time())

    def launch(self, task: TaskRow) -> None:
        """Build and start the runner of a freshly created async task."""
        from orchestrator.aggregation import create_aggregator
        from orchestrator.async_tasks import AsyncTaskRunner
        from orchestrator.taskdata import initial_model, load_test_split, read_state
        from plexus.spec import load_spec
        from plexus.training import evaluate

        spec = load_spec(task.spec)
        assert spec.async_ is not None
        a = spec.async_
        layout = self.service.store.layout
        x, y, shape, classes = load_test_split(layout, task.id)
        scorer = initial_model(spec, shape, classes)
        snapshots: list[dict[str, Any]] = []

        def score(state: Any) -> tuple[float, float]:
            # Called once per aggregation, in order: keep that version's parameters so the
            # watcher writes each version exactly as it was.
            snapshots.append({k: v.detach().clone() for k, v in state.items()})
            scorer.load_state_dict(state)
            loss, acc = evaluate(scorer, x, y)
            return float(loss), float(acc)

        params: dict[str, Any] = {"k": a.k, "staleness": a.staleness}
        if a.aggregator == "spin":
            params["pi_s"] = a.pi_s
        core = create_aggregator(a.aggregator, read_state(layout.model(task.id, 0)), **params)
        runner = AsyncTaskRunner(core, evaluate=score, max_updates=a.max_updates)
        self.service.store.set_state(task.id, "running", None, time.time())
        runner.start()
        self.runners[task.id] = runner
        self._watchers[task.id] = asyncio.get_running_loop().create_task(
            self._watch(task.id, runner, snapshots), name=f"async-task-{task.id}")

    async def cancel(self, task_id: int) -> None:
        """Stop a task's runner and watcher (its state was set by the caller)."""
        runner = self.runners.pop(task_id, None)
        watcher = self._watchers.pop(task_id, None)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        if runner is not None:
            await asyncio.to_thread(runner.close)

    async def stop(self) -> None:
        for task_id in list(self.runners):
            await self.cancel(task_id)

    async def _watch(self, task_id: int, runner: AsyncTaskRunner,
                     snapshots: list[dict[str, Any]]) -> None:
        from plexus.tensors import encode_state

        store = self.service.store
        recorded = 0
        last = time.monotonic()
        try:
            while True:
                finished = runner.finished.is_set()
                history = runner.status()["history"]
                for entry in history[recorded:]:
                    now = time.monotonic()
                    version = int(entry["version"])
                    path = store.layout.model(task_id, version)
                    state = snapshots[recorded]
                    snapshots[recorded] = {}  # written once; free the memory
                    await asyncio.to_thread(write_atomic, path, encode_state(
                        state, {"version": version, "task_id": task_id}))
                    await asyncio.to_thread(store.record_round, task_id, {
                        "index": recorded, "started_at": time.time(),
                        "allocation": {}, "shards": {},
                        "samples": {},
                        "left_out": {}, "plan_s": 0.0, "round_time_s": now - last,
                        # No deadline in asynchronous mode: truancy is recorded as 0.
                        "truancy": 0.0, "loss": entry.get("loss"),
                        "accuracy": entry.get("accuracy"), "model_version": version,
                    }, path, time.time())
                    self.service.metrics.updates.inc(len(entry.get("clients", [])))
                    recorded += 1
                    last = now
                if finished:
                    break
                await asyncio.sleep(0.25)
            await asyncio.to_thread(store.set_state, task_id, "finished", None, time.time())
        except asyncio.CancelledError:
            raise
        except Conflict:
            pass  # cancelled by a user meanwhile
        except Exception as exc:
            log.exception("async task %s failed", task_id)
            with contextlib.suppress(Exception):
                store.set_state(task_id, "failed", f"{type(exc).__name__}: {exc}", time.time())
        finally:
            self.runners.pop(task_id, None)
            self._watchers.pop(task_id, None)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(runner.close)

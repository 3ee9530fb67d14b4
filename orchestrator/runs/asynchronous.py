"""Asynchronous tasks (SPIN / FedBuff / PORT) inside the orchestrator service.

The aggregator cores (`orchestrator.aggregation`) and their live runner and REST routes
(`orchestrator.runs.async_runner`, `orchestrator.api.asynchronous`) come from the
asynchronous-mode work; this module connects them to the orchestrator: it builds a runner per
submitted async task from the task's model v0 and spec, records every aggregation as a row of
the task's history (with its model version written to disk), and ends the task after
`async.max_updates` updates.

Learner agents take part on their own: while a task runs, every alive learner is given a client
index c (in the order they join; kept if it re-enrolls) and told over RPC to `join_async`; the
agent then downloads its partition (`GET /v1/tasks/{id}/partitions/c`, the task's shard c, cut
by Dirichlet(α)) and runs SPIN's client alg. 1 against the pull / updates routes. A learner that
enrolls later, or re-enrolls after a restart, is joined at the next sweep (every
`ENLIST_EVERY_S`); a failed join is retried after `JOIN_RETRY_S`. When the task ends or is
cancelled, every joined agent is told to `leave_async` (best effort: the routes answer 404 by
then anyway, which the client takes as the end).

An async task's update queue lives in memory, so unlike a synchronous task it cannot resume
after the orchestrator restarts: it is marked failed with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator.errors import Conflict
from orchestrator.metrics import Metrics
from orchestrator.runs.gateway import LearnerGateway
from orchestrator.runs.rounds import write_model
from orchestrator.store import LearnerRow, Store, TaskRow

if TYPE_CHECKING:
    from orchestrator.runs.async_runner import AsyncTaskRunner

log = logging.getLogger("orchestrator.runs.asynchronous")
ENLIST_EVERY_S = 1.0  # how often a running task looks for alive learners not yet joined
JOIN_TIMEOUT_S = 30.0  # join_async / leave_async return at once; this covers a slow relay
JOIN_RETRY_S = 10.0  # wait this long before asking a learner that failed to join again
RESTART_REASON = ("the orchestrator restarted: an asynchronous task's update queue is held in "
                  "memory and cannot resume; submit the task again")


def make_runner(a: Any, initial_state: Any, seed: int, evaluate: Any, *,
                clock: Callable[[], float] = time.monotonic,
                on_refused: Callable[[str], None] | None = None,
                net: Any = None, training: Any = None) -> AsyncTaskRunner:
    """The runner of an async task (spec section `a`), its core's clock started now.

    The core measures π from `start_time`, on the runner's clock: built without it, the core
    would count from 0 while `time.monotonic()` is far past π, and the first push of every
    live SPIN task would be aggregated alone by timeout. `net` (an `aggregation.inversion.Net`)
    and `training` (the spec's training section) feed `staleness: inversion`, which replays
    updates through the task's model with the learners' local settings.
    """
    from orchestrator.aggregation import build_aggregator
    from orchestrator.aggregation.robust import RobustRule
    from orchestrator.runs.async_runner import AsyncTaskRunner

    # FedBuff / PORT have no timeout; a selection round that found no client holding data
    # is drawn again after π seconds (their own default, 10 s, would idle a small live
    # fleet), with the task seed for the draws. Each aggregator takes the settings it has.
    local = ({} if training is None else
             {"local_lr": training.lr, "batch_size": training.batch_size, "local_epochs": a.epochs})
    core = build_aggregator(a.aggregator, initial_state, staleness=a.staleness, k=a.k,
                            pi_s=a.pi_s, selection_interval_s=a.pi_s, seed=seed,
                            start_time=clock(), rule=RobustRule.from_spec(a.aggregation),
                            staleness_params={**local, "seed": seed}, net=net)
    return AsyncTaskRunner(core, evaluate=evaluate, max_updates=a.max_updates, clock=clock,
                           on_refused=on_refused)


class AsyncDriver:
    """The running asynchronous tasks of one orchestrator, task id → runner."""

    def __init__(self, store: Store, gateway: LearnerGateway, metrics: Metrics) -> None:
        self.store = store
        self.gateway = gateway
        self.metrics = metrics
        self.runners: dict[int, AsyncTaskRunner] = {}
        self._watchers: dict[int, asyncio.Task[None]] = {}
        # Per task: learner id → client index (its partition), and learner id → the token it
        # joined under (a re-enrolled learner has a new token and a fresh agent: join again).
        self.clients: dict[int, dict[int, int]] = {}
        self._joined: dict[int, dict[int, LearnerRow]] = {}
        self._joining: dict[int, set[int]] = {}
        self._failed: dict[int, dict[int, float]] = {}
        self._calls: set[asyncio.Task[None]] = set()

    def refused(self, task_id: int, code: str) -> None:
        """Count a refused learner request of a task: in /metrics and on the task's row."""
        self.metrics.refused.labels(reason=code).inc()
        with contextlib.suppress(Exception):  # a store hiccup must not turn a 4xx into a 5xx
            self.store.add_refusal(task_id, code)

    def admit_pull(self, task_id: int, lr: LearnerRow) -> int:
        """A learner asks an async task for work: the samples it may hold (its partition).

        Every enrolled learner is invited to every running async task (as the join sweep
        does); one that pulls before the sweep reached it is given its client index now, and
        from then on takes part in the task (its token reads the task's model and partition).
        """
        clients = self.clients.setdefault(task_id, {})
        clients.setdefault(lr.id, len(clients))
        self.store.add_participant(task_id, lr.id)
        # Every partition (shard) of a task holds exactly `shard_samples` samples.
        return self.store.task(task_id).shard_samples

    def client_of(self, task_id: int, learner_id: int) -> int | None:
        """The client index (partition) a learner was given in a running async task."""
        return self.clients.get(task_id, {}).get(learner_id)

    def fail_leftovers(self) -> None:
        """At start-up: async tasks a previous process was running cannot resume."""
        store = self.store
        for task in store.tasks(("pending", "running")):
            if (task.spec or {}).get("mode") == "async":
                with contextlib.suppress(Conflict):
                    store.set_state(task.id, "failed", RESTART_REASON, time.time())

    def launch(self, task: TaskRow) -> None:
        """Build and start the runner of a freshly created async task."""
        from orchestrator.runs.taskdata import initial_model, load_test_split, read_state
        from plexus.spec import load_spec
        from plexus.training import evaluate

        spec = load_spec(task.spec)
        assert spec.async_ is not None
        a = spec.async_
        layout = self.store.layout
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

        net = None
        if a.staleness == "inversion":
            from orchestrator.aggregation.inversion import Net

            net = Net(initial_model(spec, shape, classes), tuple(shape), int(classes))
        runner = make_runner(a, read_state(layout.model(task.id, 0)), spec.seed, score,
                             on_refused=lambda code: self.refused(task.id, code),
                             net=net, training=spec.training)
        self.store.set_state(task.id, "running", None, time.time())
        runner.start()
        self.runners[task.id] = runner
        self.clients[task.id] = {}
        self._watchers[task.id] = asyncio.get_running_loop().create_task(
            self._watch(task.id, runner, snapshots, task.spec), name=f"async-task-{task.id}")

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
        calls = list(self._calls)
        leaving = [c for c in calls if c.get_name().startswith("leave-")]
        if leaving:
            # Give the leave_async calls just sent a moment to reach the agents.
            await asyncio.wait(leaving, timeout=2.0)
        for call in calls:
            call.cancel()
        for call in calls:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await call

    # -- learner agents: join and leave ------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        call = asyncio.get_running_loop().create_task(coro, name=name)
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _enlist(self, task_id: int, spec: dict[str, Any]) -> None:
        """Join every alive learner that is not (or no longer) in the task."""
        alive = await asyncio.to_thread(self.gateway.alive)
        clients = self.clients.setdefault(task_id, {})
        joined = self._joined.setdefault(task_id, {})
        joining = self._joining.setdefault(task_id, set())
        failed = self._failed.setdefault(task_id, {})
        now = time.monotonic()
        for lr in alive:
            done = joined.get(lr.id)
            if (done is not None and done.token == lr.token) or lr.id in joining:
                continue
            if now - failed.get(lr.id, -JOIN_RETRY_S) < JOIN_RETRY_S:
                continue
            client = clients.setdefault(lr.id, len(clients))
            joining.add(lr.id)
            self._spawn(self._join(task_id, spec, lr, client), f"join-{task_id}-{lr.name}")

    async def _join(self, task_id: int, spec: dict[str, Any], lr: LearnerRow,
                    client: int) -> None:
        try:
            await asyncio.wait_for(self.gateway.join_async(lr, spec, task_id, client),
                                   JOIN_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one learner failing to join only leaves it out for now
            log.warning("learner %s could not join async task %s: %s: %s", lr.name, task_id,
                        type(exc).__name__, exc)
            self._failed.setdefault(task_id, {})[lr.id] = time.monotonic()
        else:
            if task_id in self.runners:
                self._joined.setdefault(task_id, {})[lr.id] = lr
            else:  # the task ended while the join was on its way
                self._spawn(self._leave(task_id, [lr]), f"leave-{task_id}-{lr.name}")
        finally:
            self._joining.get(task_id, set()).discard(lr.id)

    async def _leave(self, task_id: int, learners: list[LearnerRow]) -> None:
        async def one(lr: LearnerRow) -> None:
            try:
                await asyncio.wait_for(self.gateway.leave_async(lr, task_id), JOIN_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the routes answer 404 now: the agent ends by itself
                log.info("learner %s did not confirm leaving async task %s: %s", lr.name,
                         task_id, exc)

        await asyncio.gather(*(one(lr) for lr in learners))

    def _release(self, task_id: int) -> None:
        """Forget a task's learners and tell the joined agents to leave (in the background)."""
        joined = self._joined.pop(task_id, {})
        self.clients.pop(task_id, None)
        self._joining.pop(task_id, None)
        self._failed.pop(task_id, None)
        if not joined:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to tell
            self._spawn(self._leave(task_id, list(joined.values())), f"leave-{task_id}")

    async def _record(self, task_id: int, index: int, entry: dict[str, Any], state: Any,
                      round_time_s: float) -> None:
        """Write one aggregation's model version and record it as round `index`."""
        version = int(entry["version"])
        path = await write_model(self.store, task_id, version, state,
                                 {"version": version, "task_id": task_id})
        # Async rows: `allocation` counts the updates each learner (by id, as in sync rows)
        # contributed to this aggregation.
        ids = {lr.name: str(lr.id) for lr in self._joined.get(task_id, {}).values()}
        contributed: dict[str, int] = {}
        for name in entry.get("clients", []):
            key = ids.get(name, name)
            contributed[key] = contributed.get(key, 0) + 1
        await asyncio.to_thread(self.store.record_round, task_id, {
            "index": index, "started_at": time.time(), "allocation": contributed,
            "shards": {}, "samples": {}, "left_out": {}, "plan_s": 0.0,
            "round_time_s": round_time_s,
            # No deadline in asynchronous mode: truancy is recorded as 0.
            "truancy": 0.0, "loss": entry.get("loss"), "accuracy": entry.get("accuracy"),
            "model_version": version,
        }, path, time.time())
        self.metrics.updates.inc(len(entry.get("clients", [])))

    async def _watch(self, task_id: int, runner: AsyncTaskRunner,
                     snapshots: list[dict[str, Any]], spec: dict[str, Any]) -> None:
        store = self.store
        recorded = 0
        last = time.monotonic()
        enlisted = -ENLIST_EVERY_S
        try:
            while True:
                if time.monotonic() - enlisted >= ENLIST_EVERY_S:
                    enlisted = time.monotonic()
                    try:
                        await self._enlist(task_id, spec)
                    except Exception:  # a store hiccup must not end the task
                        log.exception("async task %s: looking for learners failed", task_id)
                finished = runner.finished.is_set()
                history = runner.status()["history"]
                for entry in history[recorded:]:
                    now = time.monotonic()
                    state = snapshots[recorded]
                    snapshots[recorded] = {}  # written once; free the memory
                    await self._record(task_id, recorded, entry, state, now - last)
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
            self._release(task_id)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(runner.close)

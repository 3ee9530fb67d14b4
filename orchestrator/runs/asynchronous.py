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

Durability (docs/orchestrator.md, "Durability"): every update answered "accepted" is on disk
first (`Store.add_async_update`: fsynced file + committed row, its id in the answer as
`update_id`); every aggregation commits its model file, version row, the ids of the updates it
consumed and the runner's state in one transaction (`Store.commit_async_aggregation`), and the
state after every other event is saved. After a SIGKILL and restart on the same data directory
`resume_all` rebuilds each running task's runner from the store: model version, buffer of
accepted-but-unmerged updates, outstanding pulls, SPIN's timer (π counted from the last
aggregation's recorded wall-clock time), FedBuff / PORT selection state and PORT's stop
requests, and the learners' client indices; the agents are joined again by the sweep.

A task ends after `async.max_updates` updates, or, when no further progress is possible (data
replayed from the orchestrator and every client has trained on its whole partition, nothing in
flight), after merging what its buffer holds, with that reason. Learners that cannot build the
model or hold it in memory (`orchestrator.runs.eligibility`) are not joined; a task that no
alive learner can take part in for `NO_LEARNER_GRACE_S` fails with the reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import Conflict, StorageFull
from orchestrator.metrics import Metrics
from orchestrator.runs.gateway import LearnerGateway
from orchestrator.runs.journal import note
from orchestrator.store import LearnerRow, Store, TaskRow, write_atomic

if TYPE_CHECKING:
    import torch

    from orchestrator.runs.async_runner import AsyncTaskRunner
    from plexus.spec import TaskSpec

log = logging.getLogger("orchestrator.runs.asynchronous")
ENLIST_EVERY_S = 1.0  # how often a running task looks for alive learners not yet joined
JOIN_TIMEOUT_S = 30.0  # join_async / leave_async return at once; this covers a slow relay
JOIN_RETRY_S = 10.0  # wait this long before asking a learner that failed to join again
NO_LEARNER_GRACE_S = 3.0  # alive learners, none of which can take part, for this long: fail


def make_runner(a: Any, initial_state: Any, seed: int, evaluate: Any, *,
                clock: Callable[[], float] = time.monotonic,
                on_refused: Callable[[str], None] | None = None,
                journal: Any = None, net: Any = None, training: Any = None
                ) -> AsyncTaskRunner:
    """The runner of an async task (spec section `a`), its core's clock started now.

    The core measures π from `start_time`, on the runner's clock: built without it, the core
    would count from 0 while `time.monotonic()` is far past π, and the first push of every
    live SPIN task would be aggregated alone by timeout. A resumed runner takes its times
    back from the saved state instead (`AsyncTaskRunner.restore`). `net` (an
    `aggregation.inversion.Net`) and `training` (the spec's training section) feed
    `staleness: inversion`, which replays updates through the task's model with the
    learners' local settings.
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
                           on_refused=on_refused, journal=journal)


class StoreJournal:
    """Makes one async task's runner durable in the store (`AsyncJournal`)."""

    def __init__(self, store: Store, task_id: int, metrics: Metrics | None = None) -> None:
        self.store = store
        self.task_id = task_id
        self.metrics = metrics

    def update(self, learner: str, body: bytes, base_version: int, n_samples: int) -> int:
        return self.store.add_async_update(self.task_id, learner, base_version, n_samples,
                                           body, time.time())

    def aggregated(self, entry: dict[str, Any], state: Any, update_ids: list[int],
                   snapshot: dict[str, Any]) -> None:
        """Write the version's model file, then commit row, version and consumed ids."""
        from plexus.tensors import encode_state

        version = int(entry["version"])
        path = self.store.layout.model(self.task_id, version)
        write_atomic(path, encode_state(state, {"version": version, "task_id": self.task_id}))
        # Async rows: `allocation` counts the updates each learner (by id, as in sync rows)
        # contributed to this aggregation.
        ids = {lr.name: str(lr.id) for lr in self.store.learner_view()}
        contributed: dict[str, int] = {}
        for name in entry.get("clients", []):
            key = ids.get(name, name)
            contributed[key] = contributed.get(key, 0) + 1
        now = time.time()
        self.store.commit_async_aggregation(self.task_id, {
            # Every aggregation makes exactly one version: round index = version − 1.
            "index": version - 1, "started_at": now, "allocation": contributed,
            "shards": {}, "samples": {}, "left_out": {}, "plan_s": 0.0,
            "round_time_s": float(entry.get("round_time_s", 0.0)),
            # No deadline in asynchronous mode: truancy is recorded as 0.
            "truancy": 0.0, "loss": entry.get("loss"), "accuracy": entry.get("accuracy"),
            "model_version": version,
        }, path, [u for u in update_ids if u >= 0], snapshot, now)
        if self.metrics is not None:
            self.metrics.updates.inc(len(entry.get("clients", [])))
        acc = entry.get("accuracy")
        note(self.store, self.task_id, "aggregated",
             f"model version {version} from {len(entry.get('clients', []))} update(s), "
             f"accuracy {'-' if acc is None else f'{acc:.1%}'}",
             {"round": version - 1, "version": version, "accuracy": acc,
              "loss": entry.get("loss"), "staleness": list(entry.get("staleness", [])),
              **({"staleness_handler": entry["staleness_handler"]}
                 if "staleness_handler" in entry else {})})

    def save(self, snapshot: dict[str, Any]) -> None:
        self.store.save_async_state(self.task_id, time.time(), state=snapshot)


def restore_runner(store: Store, task: TaskRow, runner: AsyncTaskRunner) -> None:
    """Give a freshly built runner of `task` the state its previous process left."""
    from orchestrator.aggregation import Update
    from orchestrator.runs.taskdata import read_state

    layout = store.layout
    saved = store.async_state(task.id)
    snap = dict(saved.state) if saved is not None and saved.state else {}
    if not snap:  # nothing saved yet: start from the committed version, timer from now
        snap = {"core": {"version": task.model_version,
                         "times": {"last_aggregation": time.time()}}}
    pending = store.async_updates(task.id, pending=True)
    queue = [Update(runner.clock(), r.learner, read_state(Path(r.path)), r.base_version,
                    r.n_samples, r.id) for r in pending]
    needed = {int(snap["core"]["version"]), *(u.base_version for u in queue)}
    needed.update(int(v[0]) for v in snap.get("outstanding", {}).values())
    needed.update(int(v) for v in snap.get("mailbox", {}).values())
    needed.update(int(v) for v in snap["core"].get("outstanding", {}).values())
    models: dict[int, dict[str, torch.Tensor]] = {
        v: read_state(layout.model(task.id, v)) for v in sorted(needed)
        if layout.model(task.id, v).exists()}
    runner.restore(snap, models, queue)


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
        # Per task: since when (monotonic) alive learners exist but none can take part.
        self._nobody_since: dict[int, float] = {}
        self._index_lock = threading.Lock()  # client indices are given from threads too

    def refused(self, task_id: int, code: str) -> None:
        """Count a refused learner request of a task: in /metrics and on the task's row."""
        self.metrics.refused.labels(reason=code).inc()
        with contextlib.suppress(Exception):  # a store hiccup must not turn a 4xx into a 5xx
            self.store.add_refusal(task_id, code)
        note(self.store, task_id, "refused", f"a learner request refused: {code}",
             {"code": code})

    def _client_index(self, task_id: int, learner_id: int) -> int:
        """The learner's client index in the task, given (and saved) on first use."""
        return self._client_indices(task_id, [learner_id])[0]

    def _client_indices(self, task_id: int, learner_ids: list[int]) -> list[int]:
        """The learners' client indices in the task, the new ones given and saved in one
        transaction."""
        with self._index_lock:
            clients = self.clients.setdefault(task_id, {})
            new = [i for i in dict.fromkeys(learner_ids) if i not in clients]
            for i in new:
                clients[i] = len(clients)
            if new:
                self.store.save_async_state(task_id, time.time(),
                                            clients={str(k): v for k, v in clients.items()})
            return [clients[i] for i in learner_ids]

    def admit_pull(self, task_id: int, lr: LearnerRow) -> int:
        """A learner asks an async task for work: the samples it may hold (its partition).

        Every enrolled learner is invited to every running async task (as the join sweep
        does); one that pulls before the sweep reached it is given its client index now, and
        from then on takes part in the task (its token reads the task's model and partition).
        """
        self._client_index(task_id, lr.id)
        self.store.add_participant(task_id, lr.id)
        # Every partition (shard) of a task holds exactly `shard_samples` samples.
        return self.store.task(task_id).shard_samples

    def client_of(self, task_id: int, learner_id: int) -> int | None:
        """The client index (partition) a learner was given in a running async task."""
        return self.clients.get(task_id, {}).get(learner_id)

    def resume_all(self) -> None:
        """At start-up: resume every async task a previous process was running."""
        store = self.store
        for task in store.tasks(("pending", "running")):
            if (task.spec or {}).get("mode") != "async" or task.id in self.runners:
                continue
            try:
                self._start(task, resume=True)
            except Exception as exc:  # one task that cannot resume must not stop the others
                log.exception("async task %s could not resume", task.id)
                with contextlib.suppress(Conflict):
                    store.set_state(task.id, "failed", "the orchestrator restarted and the "
                                    f"task could not resume: {type(exc).__name__}: {exc}",
                                    time.time())

    def launch(self, task: TaskRow) -> None:
        """Build and start the runner of a freshly created async task."""
        self._start(task, resume=False)

    def _start(self, task: TaskRow, *, resume: bool) -> None:
        from orchestrator.runs.taskdata import initial_model, load_test_split, read_state
        from plexus.spec import load_spec
        from plexus.training import evaluate

        spec = load_spec(task.spec)
        assert spec.async_ is not None
        a = spec.async_
        layout = self.store.layout
        x, y, shape, classes = load_test_split(layout, task.id)
        scorer = initial_model(spec, shape, classes)

        def score(state: Any) -> tuple[float, float]:
            scorer.load_state_dict(state)
            loss, acc = evaluate(scorer, x, y)
            return float(loss), float(acc)

        version = task.model_version if resume else 0
        net = None
        if a.staleness == "inversion":
            from orchestrator.aggregation.inversion import Net

            net = Net(initial_model(spec, shape, classes), tuple(shape), int(classes))
        runner = make_runner(a, read_state(layout.model(task.id, version)), spec.seed, score,
                             on_refused=lambda code: self.refused(task.id, code),
                             journal=StoreJournal(self.store, task.id, self.metrics),
                             net=net, training=spec.training)
        saved = self.store.async_state(task.id) if resume else None
        if resume:
            restore_runner(self.store, task, runner)
        if task.state == "pending":
            self.store.set_state(task.id, "running", None, time.time())
        self.clients[task.id] = {int(k): int(v) for k, v in
                                 ((saved.clients or {}) if saved is not None else {}).items()}
        runner.start()
        self.runners[task.id] = runner
        self._watchers[task.id] = asyncio.get_running_loop().create_task(
            self._watch(task.id, runner, task.spec, spec), name=f"async-task-{task.id}")

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

    async def _enlist(self, task_id: int, spec: dict[str, Any], parsed: TaskSpec,
                      runner: AsyncTaskRunner) -> str | None:
        """Join every alive learner that can take part and is not (or no longer) in the task;
        one joined before that enrolled again (its agent restarted and lost what it trained)
        first gives up what it held in the aggregator (a FedBuff / PORT training slot).

        Returns why the task must fail when alive learners exist but none of them can take
        part (cannot build the model, or lacks the memory) for `NO_LEARNER_GRACE_S`.
        """
        from orchestrator.runs.eligibility import skipped

        alive = await asyncio.to_thread(self.gateway.alive)
        left_out = await asyncio.to_thread(skipped, parsed, alive)
        eligible = [lr for lr in alive if str(lr.id) not in left_out]
        now = time.monotonic()
        if alive and not eligible and not self.clients.get(task_id):
            since = self._nobody_since.setdefault(task_id, now)
            if now - since >= NO_LEARNER_GRACE_S:
                names = {str(lr.id): lr.name for lr in alive}
                return "no learner can take part: " + "; ".join(
                    f"{names[k]}: {v.removeprefix('skipped: ')}" for k, v in left_out.items())
            return None
        self._nobody_since.pop(task_id, None)
        joined = self._joined.setdefault(task_id, {})
        joining = self._joining.setdefault(task_id, set())
        failed = self._failed.setdefault(task_id, {})
        due = []
        for lr in eligible:
            done = joined.get(lr.id)
            if (done is not None and done.token == lr.token) or lr.id in joining:
                continue
            if now - failed.get(lr.id, -JOIN_RETRY_S) < JOIN_RETRY_S:
                continue
            due.append(lr)
        if not due:
            return None
        again = [lr.name for lr in due if lr.id in joined]
        if again:
            freed = await asyncio.to_thread(runner.release, again)
            if freed:
                log.info("async task %s: %s enrolled again; their training slots are given "
                         "to others", task_id, ", ".join(freed))
        # Every new learner's client index and participation in two transactions, not two
        # per learner (the sweep after 1,000 enrolments would otherwise be 2,000 commits).
        clients = await asyncio.to_thread(self._client_indices, task_id,
                                          [lr.id for lr in due])
        await asyncio.to_thread(self.store.add_participants, task_id, [lr.id for lr in due])
        for lr, client in zip(due, clients, strict=True):
            joining.add(lr.id)
            self._spawn(self._join(task_id, spec, lr, client), f"join-{task_id}-{lr.name}")
        return None

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

    def _no_progress(self, runner: AsyncTaskRunner, parsed: TaskSpec,
                     joined_agents: list[LearnerRow]) -> str | None:
        """Why the task can make no further progress, or None while it can."""
        if parsed.dataset.device:
            return None  # device data can still arrive
        # Learners that pulled are the runner's; a joined agent that has not pulled yet (still
        # downloading its partition) will, so it counts too. A learner whose join failed and
        # that never pulled holds no data of this task.
        alive = {lr.id for lr in self.gateway.alive()}
        joined = {lr.name for lr in joined_agents if lr.id in alive}
        if not runner.stalled(joined):
            return None
        names = set(runner.core.clients) | joined
        return (f"no further progress possible: every client ({len(names)}) has trained on "
                "its whole partition and no device data can arrive; the updates still "
                "buffered were merged")

    async def _sweep(self, task_id: int, runner: AsyncTaskRunner, spec: dict[str, Any],
                     parsed: TaskSpec) -> str | None:
        """Join learners and end a task that cannot progress; returns why it must fail."""
        try:
            failure = await self._enlist(task_id, spec, parsed, runner)
            if failure is not None:
                return failure
            joined = list(self._joined.get(task_id, {}).values())
            alive = await asyncio.to_thread(self.gateway.alive)
            # A learner back from an outage pulls before its next heartbeat: not gone.
            gone = await asyncio.to_thread(runner.release_gone, [lr.name for lr in alive],
                                           self.gateway.alive_after_s)
            if gone:
                log.info("async task %s: %s gone (no heartbeat for alive_after_s); their "
                         "training slots are given to others", task_id, ", ".join(gone))
            done = await asyncio.to_thread(self._no_progress, runner, parsed, joined)
            if done is not None:
                await asyncio.to_thread(runner.finish, done)
        except Exception:  # a store hiccup must not end the task
            log.exception("async task %s: looking for learners failed", task_id)
        return None

    async def _watch(self, task_id: int, runner: AsyncTaskRunner, spec: dict[str, Any],
                     parsed: TaskSpec) -> None:
        store = self.store
        enlisted = -ENLIST_EVERY_S
        held = False
        try:
            failure = None
            while not runner.finished.is_set():
                if time.monotonic() - enlisted >= ENLIST_EVERY_S:
                    enlisted = time.monotonic()
                    failure = await self._sweep(task_id, runner, spec, parsed)
                    if failure is not None:
                        break
                await asyncio.sleep(0.25)
            if failure is None and runner.storage_full:
                held = True  # resumed from the store once space returns (finally below)
                log.warning("async task %s: %s; it resumes from its last committed version "
                            "once the data directory can take writes again", task_id,
                            runner.failure)
                return
            failure = failure or runner.failure
            state = "failed" if failure else "finished"
            await asyncio.to_thread(store.set_state, task_id, state,
                                    failure or runner.end_reason, time.time())
            await asyncio.to_thread(note, store, task_id, "state",
                                    f"{state}: {failure or runner.end_reason}"
                                    if failure or runner.end_reason else state)
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
            self._nobody_since.pop(task_id, None)
            self._release(task_id)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(runner.close)
            if held:
                self._spawn(self._resume_when_space(task_id, runner.failure or ""),
                            f"resume-{task_id}")

    async def _resume_when_space(self, task_id: int, why: str) -> None:
        """A task whose aggregation could not be recorded (a full disk) stays `running` with
        reason `storage_full: …` and is resumed from its last committed version, pending
        updates and state (as after a restart) once a write succeeds: after 1 s, doubling to
        30 s. Its agents were told to leave; the next sweep joins them again."""
        wait_s = 1.0
        while task_id not in self.runners:
            await asyncio.sleep(wait_s)
            try:
                # A write that goes through is the sign that space is back.
                await asyncio.to_thread(self.store.set_state, task_id, "running",
                                        f"storage_full: waits for space: {why}", time.time())
            except StorageFull:
                wait_s = min(30.0, wait_s * 2)
                continue
            except Conflict:
                return  # cancelled meanwhile
            try:
                task = await asyncio.to_thread(self.store.task, task_id)
                self._start(task, resume=True)
                await asyncio.to_thread(self.store.set_state, task_id, "running", None,
                                        time.time())
                log.info("async task %s resumed after the data directory filled up", task_id)
            except StorageFull:
                wait_s = min(30.0, wait_s * 2)
            except Exception:
                log.exception("async task %s could not resume after a full disk", task_id)
                return

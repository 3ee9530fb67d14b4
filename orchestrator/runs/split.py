"""Split-learning tasks (DynSplit, `docs/split-learning.md`): the server half and its rounds.

Each round (SplitFed-style): every eligible learner gets the current device half and a share
of the shards; it trains against the shared server half, one request per batch
(`POST /v1/tasks/{id}/split/step`, served by `SplitSession.step`), and answers its device half;
the device halves are averaged weighted by the samples trained, the whole network is evaluated
on the test split and written as the next model version (keys `device.*` and `server.*`).
A learner may send at most the batches its shards make per round; nothing else is trained on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import Conflict, Forbidden, NotFound
from orchestrator.metrics import Metrics
from orchestrator.runs.gateway import LearnerGateway, Reply
from orchestrator.runs.journal import note, round_notes
from orchestrator.runs.rounds import write_model
from orchestrator.runs.taskdata import load_test_split, read_state
from orchestrator.store import LearnerRow, Store, TaskRow
from plexus.spec import TaskSpec

log = logging.getLogger(__name__)


@dataclass
class _Budget:
    batches: int  # requests this learner may still send this round
    received_bytes: int = 0  # request bodies (bytes)
    answered_bytes: int = 0  # answer bodies, the gradients (bytes)
    steps: int = 0


@dataclass
class SplitSession:
    """The server half of one running split task, and who may send batches this round."""

    trainer: Any  # plexus.split.steps.ServerTrainer
    round: int = -1
    budgets: dict[int, _Budget] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open_round(self, index: int, budgets: dict[int, int]) -> None:
        """Round `index` starts: learner id → how many batches it may send."""
        with self.lock:
            self.round = index
            self.budgets = {k: _Budget(v) for k, v in budgets.items()}

    def close_round(self) -> dict[int, _Budget]:
        """No more batches this round; what each learner sent."""
        with self.lock:
            done, self.budgets = self.budgets, {}
            return done

    def step(self, learner_id: int, message: Any, body_bytes: int) -> dict[str, Any]:
        """One batch from `learner_id` (checked by the trainer: `BadSplitBatch`); Forbidden
        when it takes no part in this round or has sent all the batches its data make."""
        with self.lock:
            budget = self.budgets.get(learner_id)
            if budget is None:
                raise Forbidden(f"learner {learner_id} takes no part in round {self.round} "
                                "of this split task", code="not_participant")
            if budget.steps >= budget.batches:
                raise Forbidden(f"learner {learner_id} already sent the {budget.batches} "
                                f"batches its data make in round {self.round}",
                                code="split_batches_spent")
            budget.steps += 1  # counted before training: a refused batch still spends one
        answer: dict[str, Any] = self.trainer.step(message)
        with self.lock:
            budget.received_bytes += body_bytes
        return answer

    def answered(self, learner_id: int, nbytes: int) -> None:
        """Count an answer body of `nbytes` sent to `learner_id` (this round's budgets)."""
        with self.lock:
            budget = self.budgets.get(learner_id)
            if budget is not None:
                budget.answered_bytes += nbytes


def check_split(spec: TaskSpec) -> None:
    """BadInput (422 invalid_spec) unless the resolved spec's model can be cut as asked."""
    from orchestrator.errors import BadInput
    from orchestrator.runs.taskdata import initial_model
    from plexus.errors import SpecError
    from plexus.models import geometry

    shape, classes = geometry(spec)
    try:
        initial_model(spec, shape, classes)
    except SpecError as exc:
        raise BadInput(str(exc), code="invalid_spec") from None


def split_state(state: dict[str, Any], part: str) -> dict[str, Any]:
    """The `device` or `server` half of a stored split model (prefix removed)."""
    prefix = f"{part}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class SplitDriver:
    """Runs every split task of one orchestrator, one asyncio task each."""

    def __init__(self, store: Store, gateway: LearnerGateway, metrics: Metrics) -> None:
        self.store, self.gateway, self.metrics = store, gateway, metrics
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.sessions: dict[int, SplitSession] = {}

    def session(self, task_id: int) -> SplitSession:
        """The running session of task `task_id`; NotFound / Conflict otherwise."""
        s = self.sessions.get(task_id)
        if s is None:
            task = self.store.task(task_id)  # NotFound for a task that does not exist
            if (task.spec or {}).get("mode") != "split":
                raise NotFound(f"task {task_id} is not a split task", code="not_split")
            raise Conflict(f"split task {task_id} is {task.state}, not training",
                           code="task_not_running")
        return s

    def resume_all(self) -> None:
        """Start (or restart after a crash, from its latest version) every split task."""
        for task in self.store.tasks(("pending", "running")):
            if (task.spec or {}).get("mode") == "split":
                self.launch(task.id)

    def launch(self, task_id: int) -> None:
        """Run task `task_id` in the background of the current event loop."""
        if task_id in self._tasks and not self._tasks[task_id].done():
            return
        self._tasks[task_id] = asyncio.get_running_loop().create_task(
            self._run(task_id), name=f"split-task-{task_id}")

    async def cancel(self, task_id: int) -> None:
        """Stop the task's asyncio task (its state was set by the caller)."""
        aio = self._tasks.pop(task_id, None)
        self.sessions.pop(task_id, None)
        if aio is not None:
            aio.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await aio

    async def stop(self) -> None:
        """Stop every task without touching its state, so a restart resumes it."""
        for task_id in list(self._tasks):
            aio = self._tasks.pop(task_id)
            aio.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await aio
        self.sessions.clear()

    async def _run(self, task_id: int) -> None:
        from plexus.spec import load_spec

        try:
            task = await asyncio.to_thread(self.store.task, task_id)
            spec = load_spec(task.spec)
            if task.state == "pending":
                task = await asyncio.to_thread(self.store.set_state, task_id, "running", None,
                                               time.time())
            failure = await self._rounds(task, spec)
            await asyncio.to_thread(self.store.set_state, task_id,
                                    "failed" if failure else "finished", failure, time.time())
            await asyncio.to_thread(note, self.store, task_id, "state",
                                    f"failed: {failure}" if failure else "finished")
        except asyncio.CancelledError:
            raise
        except Conflict as exc:
            log.info("split task %s stopped: %s", task_id, exc)
        except Exception as exc:
            log.exception("split task %s failed", task_id)
            with contextlib.suppress(Exception):
                self.store.set_state(task_id, "failed", f"{type(exc).__name__}: {exc}",
                                     time.time())
        finally:
            self.sessions.pop(task_id, None)
            if self._tasks.get(task_id) is asyncio.current_task():
                self._tasks.pop(task_id, None)

    async def _rounds(self, task: TaskRow, spec: TaskSpec) -> str | None:
        """Run the remaining rounds; None when some round trained, else why none did."""
        from orchestrator.runs.taskdata import initial_model
        from plexus.split.steps import ServerTrainer, optimiser

        assert spec.split is not None
        layout = self.store.layout
        test = await asyncio.to_thread(load_test_split, layout, task.id)
        state = await asyncio.to_thread(read_state, layout.model(task.id, task.model_version))
        net: Any = await asyncio.to_thread(initial_model, spec, test[2], test[3])
        net.load_state_dict(state)
        net.train()
        trainer = ServerTrainer(net.server, net.layouts, test[3], spec.training.batch_size,
                                optimiser(net.server, spec.training.optimizer,
                                          spec.training.lr), spec.split.grad_bits,
                                spec.split.grad_rounding)
        self.sessions[task.id] = SplitSession(trainer)
        why, trained = "no round ran", task.rounds_done > 0
        for index in range(task.rounds_done, spec.split.rounds):
            empty = await self._round(task, spec, index, net, test)
            trained = trained or empty is None
            why = empty or why
        return None if trained else f"no learner trained in any round; last: {why}"

    def _budgets(self, task: TaskRow, spec: TaskSpec, shards: dict[int, list[int]]
                 ) -> dict[int, int]:
        """Learner id → the batches its shards make this round (device data: max_batches)."""
        assert spec.split is not None
        cap = spec.split.max_batches
        out = {}
        for lid, ids in shards.items():
            n = (cap or 100_000) if spec.dataset.device else \
                math.ceil(len(ids) * task.shard_samples / spec.training.batch_size)
            out[lid] = min(n, cap) if cap else n
        return out

    async def _round(self, task: TaskRow, spec: TaskSpec, index: int, net: Any,
                     test: Any) -> str | None:
        """One round; None when some learner trained, else why nobody did."""
        from orchestrator.runs.eligibility import why_not

        assert spec.split is not None
        alive = await self.gateway.wait_for_alive()
        started = time.time()
        left_out: dict[str, str] = {}
        for lr in alive:  # a device that cannot build the model is not given the task
            reason = why_not(spec, lr.facts or {}, None)
            if reason is not None:
                left_out[str(lr.id)] = f"skipped: {reason}"
        learners = [lr for lr in alive if str(lr.id) not in left_out]
        k = max(1, len(learners))
        shards = {lr.id: list(range(i, task.num_shards, k)) for i, lr in enumerate(learners)}
        session = self.sessions[task.id]
        budgets = self._budgets(task, spec, shards)
        session.open_round(index, budgets)
        device = split_state(net.state_dict(), "device")
        spec_dict = spec.to_dict()
        for lr in learners:
            await self.gateway.grant(lr, task.id)
        t0 = time.monotonic()
        replies = await self._gather_alive(
            [(lr, self._call(lr, spec_dict, task.id, index, shards[lr.id], device))
             for lr in learners], spec.split.round_timeout_s)
        round_s = time.monotonic() - t0
        sent = session.close_round()
        samples, stats = await asyncio.to_thread(
            self._merge, net, session, replies, device, sent, left_out,
            spec.training.batch_size)
        loss, accuracy = await asyncio.to_thread(self._evaluate, net, session, test)
        version = index + 1
        path = await write_model(self.store, task.id, version, net.state_dict(),
                                 {"version": version, "task_id": task.id, "round": index})
        await asyncio.to_thread(self.store.record_round, task.id, {
            "index": index, "started_at": started, "allocation": budgets and {
                str(lid): len(ids) for lid, ids in shards.items()},
            "shards": {str(lid): ids for lid, ids in shards.items() if ids},
            "samples": samples, "left_out": left_out, "plan_s": 0.0, "round_time_s": round_s,
            "truancy": 0.0, "loss": loss, "accuracy": accuracy, "model_version": version,
            "times": stats}, path, time.time())
        await asyncio.to_thread(
            round_notes, self.store, task.id, index, {str(lr.id): lr.name for lr in alive},
            left_out=left_out, samples=samples, version=version, round_time_s=round_s,
            truancy=0.0, accuracy=accuracy, loss=loss)
        if sum(samples.values()) > 0:
            return None
        return f"round {index}: no learner trained ({'; '.join(left_out.values()) or 'none'})"

    async def _gather_alive(self, calls: list[Any], timeout_s: float,
                            check_s: float = 2.0) -> list[Reply]:
        """Like `gateway.gather`, but a learner that stops heartbeating (not alive any more)
        is given up on at once instead of holding the round until `timeout_s`."""
        t0 = time.monotonic()
        futures = {lr.id: asyncio.ensure_future(self.gateway.gather([(lr, call)], timeout_s))
                   for lr, call in calls}
        try:
            while True:
                pending = [f for f in futures.values() if not f.done()]
                if not pending or time.monotonic() - t0 > timeout_s:
                    break
                await asyncio.wait(pending, timeout=check_s)
                alive = {lr.id for lr in await asyncio.to_thread(self.gateway.alive)}
                for lid, f in futures.items():
                    if not f.done() and lid not in alive:
                        f.cancel()
        except asyncio.CancelledError:
            for f in futures.values():
                f.cancel()
            raise
        out = []
        for lr, _call in calls:
            f = futures[lr.id]
            if f.done() and not f.cancelled():
                out.extend(f.result())
            else:
                f.cancel()
                out.append(Reply(lr, error="stopped heartbeating (or no answer by "
                                 "split.round_timeout_s)", elapsed_s=time.monotonic() - t0))
        return out

    def _call(self, lr: LearnerRow, spec: dict[str, Any], task_id: int, index: int,
              shards: list[int], device: dict[str, Any]) -> Any:
        return lambda: self.gateway.split_train(lr, spec, task_id, index, shards, device)

    @staticmethod
    def _merge(net: Any, session: SplitSession, replies: list[Reply], device: dict[str, Any],
               sent: dict[int, _Budget], left_out: dict[str, str], batch_size: int
               ) -> tuple[dict[str, int], dict[str, Any]]:
        """Check the device halves that came back, average them (weighted by samples) into
        `net`; samples and per-learner statistics by learner id."""
        from orchestrator.aggregation.fedavg import weighted_average
        from plexus.errors import BadTensors
        from plexus.tensors import validate_state

        states, weights, samples, stats = [], [], {}, {}
        for r in replies:
            key = str(r.learner.id)
            if r.error is not None:
                left_out[key] = r.error
                continue
            got = sent.get(r.learner.id, _Budget(0))
            try:
                params, n = r.value["params"], int(r.value["samples_trained"])
                if not 0 <= n <= got.steps * batch_size:
                    raise ValueError(f"samples_trained {n} but it sent {got.steps} batches")
                validate_state(params, device)
            except (BadTensors, KeyError, TypeError, ValueError) as exc:
                left_out[key] = f"bad answer: {exc}"
                continue
            samples[key] = n
            stats[key] = {"batches": got.steps, "received_bytes": got.received_bytes,
                          "answered_bytes": got.answered_bytes,
                          **{f: r.value.get(f) for f in (
                              "ratio", "target_ratio", "bandwidth", "payload_bytes", "seconds")}}
            if n > 0:
                states.append(params)
                weights.append(float(n))
        if states:
            with session.trainer.lock:
                net.device.load_state_dict(weighted_average(states, weights))
        return samples, stats

    @staticmethod
    def _evaluate(net: Any, session: SplitSession, test: Any) -> tuple[float, float]:
        from plexus.training import evaluate

        with session.trainer.lock:
            net.eval()
            try:
                loss, acc = evaluate(net, test[0], test[1])
            finally:
                net.train()
        return float(loss), float(acc)

"""The synchronous round driver: global update cycles of thesis 3.1 (steps 1–7, figure 3.1).

Per round: ask the alive learners what the allocator needs (DAB: `plan` → a_k only; CSA:
`benchmark` → b_k, c_k; equal split: nothing), allocate with the pure allocator, deal shard ids,
call `train` on every learner at once in duplex mode, leave out whoever has not answered by
D + grace, average the answers weighted by samples trained, evaluate on the held-out split,
write the model version and commit the round. Each task runs as an asyncio task in the
orchestrator's event loop; torch work runs in threads so the API stays responsive. A restart
picks every running task up again from its last committed round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from orchestrator.allocation import (
    Allocator,
    LearnerReport,
    RoundContext,
    assign_shard_ids,
    get_allocator,
    learner_time_s,
)
from orchestrator.errors import Conflict, StorageFull
from orchestrator.metrics import Metrics
from orchestrator.runs.gateway import Call, LearnerGateway, Reply
from orchestrator.runs.halting import HaltLead
from orchestrator.runs.journal import note, round_notes
from orchestrator.runs.rounds import ClosedRound, TestSplit, close_round
from orchestrator.runs.space import RETRY_MAX_S, RETRY_S, when_space
from orchestrator.runs.taskdata import load_test_split, read_state, record_device_eval
from orchestrator.store import LearnerRow, Store, TaskRow

if TYPE_CHECKING:
    from plexus.spec import SyncSpec, TaskSpec

log = logging.getLogger("orchestrator.runs.sync")

# Asking a learner (subset benchmarking: download n shards, train on them, perhaps import torch
# for the first time) gets this much longer than a round before the learner is left out.
PROBE_EXTRA_S = 60.0
# A learner that already answered an earlier round's probe of the task answers from what it
# measured (its SB result, its observed rates: learner_agent/calibration.py), so asking it
# again each round (sync.replan: each_round) gets only D + grace plus this: a learner whose
# link went down must not hold every round for a minute.
REPROBE_EXTRA_S = 5.0


def learner_times(replies: list[Reply], reports: list[LearnerReport], counts: dict[str, int],
                  ctx: RoundContext, halts: dict[str, float] | None = None
                  ) -> dict[str, dict[str, float | None]]:
    """Per learner that was called: seconds from dispatch to its answer (or the cut-off), the
    `deadline_s` it was sent (`halt_s`), and where it reported b_k (bytes/s) and c_k
    (samples/s), those and the time thesis eq. 3.4 predicts for its shards (else None)."""
    known = {r.learner_id: r for r in reports}
    times: dict[str, dict[str, float | None]] = {}
    for reply in replies:
        key = str(reply.learner.id)
        rep = known.get(key)
        entry: dict[str, float | None] = {"actual_s": reply.elapsed_s, "predicted_s": None}
        if halts is not None and key in halts:
            entry["halt_s"] = halts[key]
        if rep is not None and rep.bandwidth is not None and rep.compute is not None:
            entry["predicted_s"] = learner_time_s(counts.get(key, 0), bandwidth=rep.bandwidth,
                                                  compute=rep.compute, ctx=ctx)
            entry.update(b_k=rep.bandwidth, c_k=rep.compute)
        times[key] = entry
    return times


def cap_samples(replies: list[Reply], shard_ids: dict[str, list[int]], per_shard: int,
                refused: Callable[[str], None]) -> list[Reply]:
    """Update admission of a round: a learner's `samples_trained` counts at most what it was
    given (its shards × samples per shard × μ passes); a larger claim is cut to that bound
    and counted as `samples_capped`, so no learner's claim can outweigh its allocation."""
    out = []
    for r in replies:
        bound = len(shard_ids.get(str(r.learner.id), [])) * per_shard
        value = r.value
        if r.error is None and isinstance(value, dict):
            try:
                claimed = int(value.get("samples_trained", 0))
            except (TypeError, ValueError):
                claimed = 0  # close_round leaves such an answer out
            if claimed > bound:
                refused("samples_capped")
                value = {**value, "samples_trained": bound}
        out.append(Reply(r.learner, value=value, error=r.error, elapsed_s=r.elapsed_s))
    return out


class SyncDriver:
    """Runs every active synchronous task of one orchestrator, one asyncio task each."""

    def __init__(self, store: Store, gateway: LearnerGateway, metrics: Metrics) -> None:
        self.store = store
        self.gateway = gateway
        self.metrics = metrics
        self._tasks: dict[int, asyncio.Task[None]] = {}
        # Per task: what each learner reported, kept across rounds unless the allocator asks
        # again every round. In memory only: after a restart learners are asked once more.
        self._reports: dict[int, dict[str, LearnerReport]] = {}
        self._answered: dict[int, set[str]] = {}  # learners that answered a probe, per task
        # How much earlier than D each learner must halt for its answer to be in by D (DAB
        # only; orchestrator.runs.halting), per learner across tasks, so a learner's next task
        # starts from what its last rounds showed. In memory: learnt again after a restart.
        self._lead = HaltLead()

    # -- lifecycle ------------------------------------------------------------------------

    def resume_all(self) -> None:
        """Start (or restart after a crash) every task that is pending or running."""
        in_jobs = self.store.job_task_ids()  # jobs run their own tasks
        for task in self.store.tasks(("pending", "running")):
            if (task.spec or {}).get("mode", "sync") == "sync" and task.id not in in_jobs:
                self.launch(task.id)

    def launch(self, task_id: int) -> None:
        """Run task `task_id` in the background of the current event loop."""
        if task_id in self._tasks and not self._tasks[task_id].done():
            return
        self._tasks[task_id] = asyncio.get_running_loop().create_task(
            self._run(task_id), name=f"task-{task_id}")

    async def cancel(self, task_id: int) -> None:
        """Stop the task's asyncio task; its state was already set by the caller."""
        aio = self._tasks.pop(task_id, None)
        self._reports.pop(task_id, None)
        self._answered.pop(task_id, None)
        if aio is not None:
            aio.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await aio

    async def stop(self) -> None:
        """Stop every task without touching its state, so a restart resumes it."""
        running = list(self._tasks.values())
        self._tasks.clear()
        for aio in running:
            aio.cancel()
        for aio in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await aio

    # -- one task -------------------------------------------------------------------------

    async def _run(self, task_id: int) -> None:
        from plexus.spec import load_spec

        try:
            # Store calls go to a thread: SQLite may hold its write lock for seconds while a
            # new task is being prepared, and the event loop must keep serving RPC results.
            task = await asyncio.to_thread(self.store.task, task_id)
            spec = load_spec(task.spec)
            assert spec.sync is not None
            allocator = get_allocator(spec.sync.allocator)
            if task.state == "pending":
                task = await when_space(f"task {task_id}: state running", self.store.set_state,
                                        task_id, "running", None, time.time())
                await asyncio.to_thread(note, self.store, task_id, "state", "running")
            layout = self.store.layout
            x_test, y_test, input_shape, classes = await asyncio.to_thread(
                load_test_split, layout, task_id)
            state = await asyncio.to_thread(read_state, layout.model(task_id, task.model_version))
            done = await asyncio.to_thread(self.store.rounds, task_id)
            failure = await self._rounds(task, spec, allocator, state,
                                         (x_test, y_test, input_shape, classes), done)
            await when_space(f"task {task_id}: its end", self.store.set_state, task_id,
                             "failed" if failure else "finished", failure, time.time())
            await asyncio.to_thread(note, self.store, task_id, "state",
                                    f"failed: {failure}" if failure else "finished")
            self._reports.pop(task_id, None)
            self._answered.pop(task_id, None)
        except asyncio.CancelledError:
            raise
        except Conflict as exc:  # cancelled by a user while a round was finishing
            log.info("task %s stopped: %s", task_id, exc)
        except Exception as exc:
            log.exception("task %s failed", task_id)
            with contextlib.suppress(Exception):
                self.store.set_state(task_id, "failed", f"{type(exc).__name__}: {exc}",
                                     time.time())
        finally:
            current = asyncio.current_task()
            if self._tasks.get(task_id) is current:
                self._tasks.pop(task_id, None)

    async def _rounds(self, task: TaskRow, spec: TaskSpec, allocator: Allocator,
                      state: dict[str, Any], test: TestSplit, done: list[Any]) -> str | None:
        """Run the remaining rounds; None when the task finished, else why it failed: more
        than `sync.max_empty_rounds` empty rounds in a row (no learner trained: all failed,
        were skipped or got nothing), or no round that trained at all."""
        assert spec.sync is not None
        allowed = spec.sync.max_empty_rounds
        streak, trained_any = 0, False
        for r in done:  # a restarted task picks its count up from the committed rounds
            empty = sum((r.samples or {}).values()) <= 0
            streak, trained_any = (streak + 1, trained_any) if empty else (0, True)
        why = ""
        for index in range(task.rounds_done, spec.sync.rounds):
            state, empty_why = await self._round_when_space(task, spec, allocator, index,
                                                            state, test)
            if empty_why is None:
                streak, trained_any = 0, True
                continue
            streak += 1
            why = f"round {index}: no learner trained ({empty_why})"
            if streak > allowed:
                return (f"{why}; {streak} empty rounds in a row, sync.max_empty_rounds is "
                        f"{allowed}")
        if not trained_any:
            return f"no learner trained in any round; last: {why or 'no round ran'}"
        return None

    async def _round_when_space(self, task: TaskRow, spec: TaskSpec, allocator: Allocator,
                                index: int, state: dict[str, Any], test: TestSplit
                                ) -> tuple[dict[str, Any], str | None]:
        """Round `index`, run again while the data directory is full: the task stays running
        with reason `storage_full: …` (cleared once a round is committed); nothing of a failed
        attempt was kept (temp files removed, rows rolled back)."""
        delay, waiting = RETRY_S, False
        while True:
            try:
                out = await self._round(task, spec, allocator, index, state, test)
            except StorageFull as exc:
                waiting = True
                log.error("task %s round %s: %s; trying again in %.0f s", task.id, index,
                          exc.detail, delay)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(
                        self.store.set_state, task.id, "running",
                        f"storage_full: round {index} waits for space: {exc.detail}",
                        time.time(), only_from=("running",))
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            if waiting:
                await asyncio.to_thread(self.store.set_state, task.id, "running", None,
                                        time.time(), only_from=("running",))
            return out

    async def _round(self, task: TaskRow, spec: TaskSpec, allocator: Allocator, index: int,
                     state: dict[str, Any], test: TestSplit
                     ) -> tuple[dict[str, Any], str | None]:
        """One round; returns the new parameters and, when no learner trained, why."""
        from orchestrator.runs.eligibility import skipped

        assert spec.sync is not None
        sync = spec.sync
        spec_dict = spec.to_dict()
        alive = await self._alive(task.id, index)
        started_at = time.time()
        # Only learners that can build the model and hold it in memory take part.
        left_out: dict[str, str] = await asyncio.to_thread(skipped, spec, alive)
        learners = [lr for lr in alive if str(lr.id) not in left_out]
        ctx = _context(task, spec)

        # Steps 1–3 of thesis 3.1: learn what the allocator needs to know.
        t0 = time.monotonic()
        reports = await self._probe(allocator, learners, task.id, spec_dict,
                                    sync.deadline_s + sync.grace_s, left_out)
        plan_s = time.monotonic() - t0
        counts = allocator.allocate(reports, ctx) if reports else {}
        shard_ids = assign_shard_ids(counts, task.num_shards, seed=spec.seed, round_index=index)
        chosen = _chosen(learners, counts, left_out)
        names = {str(lr.id): lr.name for lr in alive}
        await asyncio.to_thread(_note_start, self.store, task.id, index, names, counts,
                                sync.deadline_s)

        # Steps 4–6: everyone trains at once; D + grace bounds the wait however they behave.
        halts = self._halts(chosen, sync, allocator.halts_at_deadline)
        cutoff_s = sync.deadline_s + sync.grace_s
        t1 = time.monotonic()
        replies = await self.gateway.gather(
            [(lr, self._train(lr, spec_dict, task.id, index, shard_ids[str(lr.id)],
                              halts[str(lr.id)])) for lr in chosen], cutoff_s)
        round_end = time.monotonic()
        self._lead.observe_all(replies if allocator.halts_at_deadline else [])
        replies = cap_samples(replies, shard_ids, task.shard_samples * spec.training.iterations,
                              lambda code: self._refused(task.id, code))
        # Step 7: FedAvg weighted by samples trained; nobody answered -> the model stays.
        closed = await close_round(self.store, self.metrics, task.id, spec, index, state,
                                   replies, test, left_out, keep_updates=True)
        if spec.dataset.device:
            await asyncio.to_thread(record_device_eval, self.store.layout, task.id, index,
                                    replies)
        round_time = round_end - t1  # GUC time: dispatch until the last answer or the cut-off
        truancy = (round_time - sync.deadline_s) / sync.deadline_s  # thesis 3.4, metric 6
        await asyncio.to_thread(self.store.record_round, task.id, {
            "index": index, "started_at": started_at, "allocation": counts,
            "shards": {k: v for k, v in shard_ids.items() if v}, "samples": closed.samples,
            "left_out": left_out, "plan_s": plan_s, "round_time_s": round_time,
            "truancy": truancy, "loss": closed.loss, "accuracy": closed.accuracy,
            "model_version": closed.version,
            "times": learner_times(replies, reports, counts, ctx, halts),
        }, closed.model_path, time.time())
        await self._observe(task.id, index, allocator.name, round_time, truancy, closed, names,
                            sum(1 for k in left_out if k in {str(c.id) for c in chosen}))
        if sum(closed.samples.values()) > 0:
            return closed.state, None
        return closed.state, _empty_reason(alive, closed.samples, left_out)

    async def _alive(self, task_id: int, index: int) -> list[LearnerRow]:
        """The alive learners; a task submitted before any learner is alive waits (and notes
        that it does) for the first one."""
        alive = await asyncio.to_thread(self.gateway.alive)
        if not alive:
            enrolled = len(await asyncio.to_thread(self.store.learners))
            await asyncio.to_thread(note, self.store, task_id, "waiting",
                                    f"round {index}: waiting for learners: {enrolled} "
                                    "enrolled, 0 alive", {"round": index, "enrolled": enrolled})
            alive = await self.gateway.wait_for_alive()
        return alive

    async def _observe(self, task_id: int, index: int, allocator: str, round_time: float,
                       truancy: float, closed: ClosedRound, names: dict[str, str],
                       chosen_left_out: int) -> None:
        """Prometheus metrics and the events (and so log lines) of one closed round."""
        m = self.metrics
        m.rounds.labels(allocator=allocator).inc()
        m.round_time.observe(round_time)
        m.left_out.inc(chosen_left_out)
        await asyncio.to_thread(
            round_notes, self.store, task_id, index, names, left_out=closed.left_out,
            samples=closed.samples, version=closed.version, round_time_s=round_time,
            truancy=truancy, accuracy=closed.accuracy, loss=closed.loss)

    def _refused(self, task_id: int, code: str) -> None:
        self.metrics.refused.labels(reason=code).inc()
        with contextlib.suppress(Exception):
            self.store.add_refusal(task_id, code)
        note(self.store, task_id, "refused", f"a learner request refused: {code}",
             {"code": code})

    def _halts(self, chosen: list[LearnerRow], sync: SyncSpec, at_deadline: bool
               ) -> dict[str, float]:
        """The `deadline_s` each chosen learner is sent: under DAB D less its learnt lead, so
        its answer is in by D (runs/halting.py), otherwise the cut-off D + grace."""
        if not at_deadline:
            return {str(lr.id): sync.deadline_s + sync.grace_s for lr in chosen}
        return {str(lr.id): self._lead.halt_s(str(lr.id), sync.deadline_s) for lr in chosen}

    def _train(self, lr: LearnerRow, spec: dict[str, Any], task_id: int, index: int,
               shards: list[int], halt_s: float) -> Callable[[], Awaitable[Any]]:
        return lambda: self.gateway.train(lr, spec, task_id, index, shards, halt_s, None)

    async def _probe(self, allocator: Allocator, learners: list[LearnerRow], task_id: int,
                     spec_dict: dict[str, Any], timeout_s: float, left_out: dict[str, str]
                     ) -> list[LearnerReport]:
        if allocator.probe == "none":
            return [LearnerReport(str(lr.id)) for lr in learners]
        proc = allocator.probe
        known = self._reports.setdefault(task_id, {})
        if allocator.reprobe_each_round or spec_dict["sync"].get("replan") != "once":
            known.clear()
        ask = [lr for lr in learners if str(lr.id) not in known]
        answered = self._answered.setdefault(task_id, set())

        def call(lr: LearnerRow) -> Call:
            if proc == "plan":
                return lr, lambda: self.gateway.plan(lr, spec_dict, task_id)
            return lr, lambda: self.gateway.benchmark(lr, spec_dict, task_id, None)

        # `timeout_s` is D + grace: a first ask may benchmark (PROBE_EXTRA_S more), a repeat
        # answers from what the learner measured (REPROBE_EXTRA_S more).
        first = [call(lr) for lr in ask if str(lr.id) not in answered]
        again = [call(lr) for lr in ask if str(lr.id) in answered]
        groups = await asyncio.gather(
            self.gateway.gather(first, timeout_s + PROBE_EXTRA_S),
            self.gateway.gather(again, timeout_s + REPROBE_EXTRA_S))
        for ans in [a for group in groups for a in group]:
            key = str(ans.learner.id)
            if ans.error is not None:
                left_out[key] = f"{proc}: {ans.error}"
                continue
            answered.add(key)
            try:
                if proc == "plan":
                    known[key] = LearnerReport(key, a_k=int(ans.value["a_k"]))
                else:
                    known[key] = LearnerReport(
                        key, bandwidth=float(ans.value["bandwidth"]),
                        compute=float(ans.value["compute"]), state=ans.value.get("state"))
            except (KeyError, TypeError, ValueError) as exc:
                left_out[key] = f"{proc}: bad answer {exc!r}"
        return [known[str(lr.id)] for lr in learners if str(lr.id) in known]


def _note_start(store: Store, task_id: int, index: int, names: dict[str, str],
                counts: dict[str, int], deadline_s: float) -> None:
    given = {k: n for k, n in sorted(counts.items()) if n > 0}
    note(store, task_id, "round_started",
         f"round {index}: {len(given)} learner(s), deadline {deadline_s:g} s, shards "
         + (", ".join(f"{names.get(k, k)}={n}" for k, n in given.items()) or "none"),
         {"round": index, "allocation": counts})


def _empty_reason(alive: list[LearnerRow], samples: dict[str, int],
                  left_out: dict[str, str]) -> str:
    """Why a round trained nothing: each learner's cause, by name."""
    names = {str(lr.id): lr.name for lr in alive}
    for k, n in samples.items():
        left_out.setdefault(k, f"trained {n} samples")
    return "; ".join(f"{names.get(k, k)}: {v}"
                     for k, v in sorted(left_out.items())) or "no learner"


def _context(task: TaskRow, spec: TaskSpec) -> RoundContext:
    """What an allocator knows of a sync task's round."""
    assert spec.sync is not None
    return RoundContext(
        num_shards=task.num_shards, shard_samples=task.shard_samples,
        shard_bytes=task.shard_bytes, model_bytes=task.model_bytes,
        iterations=spec.training.iterations, deadline_s=spec.sync.deadline_s,
        total_shards=spec.sync.total_shards)


def _chosen(learners: list[LearnerRow], counts: dict[str, int],
            left_out: dict[str, str]) -> list[LearnerRow]:
    """The learners given shards this round; the others are noted in `left_out`."""
    by_id = {str(lr.id): lr for lr in learners}
    for k, n in counts.items():
        if n <= 0 and k not in left_out:
            left_out[k] = "allocated no shards"
    return [by_id[k] for k, n in counts.items() if n > 0]

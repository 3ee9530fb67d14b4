"""Jobs: several synchronous tasks allocated together by MED, MMTT or equal split.

Thesis chapter 4 on live agents. A job is a list of task specs and one job-level allocator
(`med`, `mmtt_uncertain`, `mmtt_ideal`, `equal`). Before the first round the orchestrator
draws each learner's stressor-state distribution (a random one-hot vector through a softmax
with heat τ = 0.5, thesis 4.3.1) and asks every learner to run subset benchmarking in every
state for every task (the agent applies the stressor during SB). Each global update cycle:

1. every learner draws its own state for the round (`round_state`); only under MMTT-Ideal
   does it tell the orchestrator which one it drew;
2. a `MedInstance` (γ, per-state b and c, prices, D_i, T_i, Ω_i, α_i) is solved by
   `orchestrator.allocation.mmtt.plan`; each learner serves at most one task (eq. 4.4f);
3. every chosen learner trains its task under the drawn stressor and halts at T_i with a
   partial update; each task is aggregated by FedAvg with the true samples trained;
4. one record per task per round (training time, deadline met, samples trained vs
   allocated, per-learner busy and idle time) is committed with the round; the thesis 4.3
   metrics are computed from those records by `orchestrator.allocation.metrics`.

A job that was running when the orchestrator stopped (SIGTERM or SIGKILL) resumes at the next
start from its first uncommitted GUC: its setup (drawn distributions, benchmarked states,
per-state benchmarks, eligibility) is in the job row, each task's progress and model version in
its round rows, and every later draw of the orchestrator is a function of the job's seed and the
GUC index, so no GUC is committed twice and the plan is the one the job would have made. Only
the learners' own stressor draws (`round_state`) are theirs and not replayed. Every task is
limited to the learners eligible for it (`runs/eligibility.py`); a task no learner can run, or
with more than `sync.max_empty_rounds` empty GUCs in a row, fails with the reason while the
others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import BadInput, Conflict, StorageFull
from orchestrator.metrics import Metrics
from orchestrator.runs.gateway import Call, LearnerGateway, Reply
from orchestrator.runs.halting import HaltLead
from orchestrator.runs.journal import note, round_notes
from orchestrator.runs.rounds import ClosedRound, TestSplit, close_round
from orchestrator.runs.space import RETRY_MAX_S, RETRY_S, when_space
from orchestrator.runs.sync import cap_samples
from orchestrator.store import JobRoundRow, JobRow, LearnerRow, Store, TaskRow

if TYPE_CHECKING:
    from orchestrator.allocation.med import MedInstance
    from plexus.spec import TaskSpec

log = logging.getLogger("orchestrator.runs.jobs")

JobAllocator = Literal["med", "mmtt_uncertain", "mmtt_ideal", "equal"]
# Job allocator name -> method name of orchestrator.allocation.mmtt.plan.
METHODS: dict[str, str] = {"med": "med", "mmtt_uncertain": "mmtt-uncertain",
                           "mmtt_ideal": "mmtt-ideal", "equal": "equal"}
# Allocators that only exist for several tasks together (equal split also runs single tasks).
JOB_ONLY: tuple[str, ...] = ("med", "mmtt_uncertain", "mmtt_ideal")
# The agent's stressor states (docs/protocol.md, `round_state`), in MedInstance state order.
STATES: tuple[str, ...] = ("idle", "training", "downloading")
# Subset benchmarking in three states for every task can take a while on a loaded device.
BENCHMARK_TIMEOUT_S = 120.0
ROUND_STATE_TIMEOUT_S = 10.0
# On resume, wait this long for the job's benchmarked learners to heartbeat again (an agent
# retries with a growing backoff while the orchestrator is away); later, for any one of them.
RESUME_WAIT_S = 60.0
JOINED_WAIT_S = 60.0
# A shutdown waits this long for a GUC being committed.
STOP_COMMIT_S = 20.0


class NoAllocation(RuntimeError):
    """The GUC's instance has no allocation (e.g. fewer learners than tasks); `learners`:
    how many took part in it (alive and drew a state)."""

    def __init__(self, message: str, learners: int) -> None:
        super().__init__(message)
        self.learners = learners


class JobOptions(BaseModel):
    """Job-level settings; every task keeps its own D (deadline_s), rounds, data and model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("job", min_length=1, max_length=256)
    allocator: JobAllocator = "med"
    # B of eq. 4.4d; None means no budget limit (every shard affordable at any price).
    budget: float | None = Field(None, ge=0)
    min_shards: int = Field(0, ge=0)  # D_l of eq. 4.4e
    prices: dict[str, float] = Field(default_factory=dict)  # learner name -> price per shard
    default_price: float = Field(1.0, ge=0)
    heat: float = Field(0.5, gt=0)  # τ of the heated softmax, thesis 4.3.1
    # Wait for this many alive learners before benchmarking (default: one per task).
    learners: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    time_limit_s: float = Field(5.0, gt=0)  # solver time limit per round, seconds


class JobRequest(JobOptions):
    """POST /v1/jobs: the options plus the task specs (each as for POST /v1/tasks)."""

    tasks: list[dict[str, Any]] = Field(min_length=1, max_length=64)


def validate_job(body: JobRequest) -> tuple[dict[str, Any], list[TaskSpec]]:
    """Parse every task spec; BadInput naming the field (`tasks[1].sync: ...`) if one is bad."""
    from plexus.errors import SpecError
    from plexus.spec import parse_spec

    specs: list[TaskSpec] = []
    for i, raw in enumerate(body.tasks):
        try:
            spec = parse_spec(raw)
        except SpecError as exc:
            raise BadInput(f"tasks[{i}]: {exc}", code="invalid_spec") from None
        if spec.sync is None:
            raise BadInput(f"tasks[{i}].mode: a multi-task job runs synchronous tasks "
                           "(mode: sync with a sync section)", code="invalid_spec")
        specs.append(spec)
    names = [s.name for s in specs]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise BadInput(f"tasks[{i}].name: {n!r} is used by tasks[{names.index(n)}]; "
                           "task names in a job must differ", code="invalid_spec")
    options = body.model_dump(exclude={"tasks"})
    return options, specs


def job_view(job: JobRow, rounds: list[JobRoundRow], tasks: list[TaskRow]) -> dict[str, Any]:
    """A job as the API shows it, with the thesis 4.3 metrics of its recorded rounds."""
    records = [r.record for r in rounds]
    return {"id": job.id, "name": job.name, "state": job.state, "reason": job.reason,
            "allocator": job.options.get("allocator"), "options": job.options,
            "created_at": job.created_at, "started_at": job.started_at,
            "finished_at": job.finished_at, "rounds_done": job.rounds_done,
            "tasks": [{"id": t.id, "name": t.name, "state": t.state, "reason": t.reason,
                       "rounds_done": t.rounds_done, "rounds": (t.spec.get("sync") or {})
                       .get("rounds")} for t in tasks],
            "setup": job.setup, "metrics": job_metrics(records), "records": records}


def job_metrics(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Thesis 4.3 items 1–5 over the recorded task rounds (overall and per task), or None."""
    from orchestrator.allocation.metrics import TaskRound, summarize

    if not records:
        return None
    rows = [TaskRound(task=r["task"], round=r["round"], deadline_s=r["deadline_s"],
                      duration_s=r["duration_s"], samples_total=r["samples_allocated"],
                      samples_trained=r["samples_trained"],
                      learner_busy_s=list(r["learner_busy_s"].values()))
            for r in records]
    per_task: dict[str, Any] = {}
    for name in dict.fromkeys(r.task for r in rows):
        per_task[name] = summarize([r for r in rows if r.task == name])
    return {**summarize(rows), "task_rounds": len(rows), "per_task": per_task}


def build_instance(tasks: list[TaskRow], specs: list[TaskSpec], learners: list[LearnerRow],
                   setup: dict[str, Any], options: JobOptions) -> MedInstance:
    """The MED instance of eq. 4.4 for this round's tasks and learners.

    Bandwidth per state is the mean over tasks of what SB measured in that state (bytes/s);
    compute per task and state is SB's samples/s; D_i is sync.total_shards (else every shard).
    """
    from orchestrator.allocation.med import MedInstance

    task_specs: list[dict[str, Any]] = []
    for t, spec in zip(tasks, specs, strict=True):
        assert spec.sync is not None
        task_specs.append({
            "name": str(t.id), "shards": spec.sync.total_shards or t.num_shards,
            "deadline_s": spec.sync.deadline_s, "model_bytes": t.model_bytes,
            "shard_bytes": t.shard_bytes, "shard_samples": t.shard_samples,
            "iterations": spec.training.iterations})
    learner_specs: list[dict[str, Any]] = []
    for lr in learners:
        key = str(lr.id)
        bench = setup["benchmarks"][key]
        known: list[TaskRow | None] = [t for t in tasks if str(t.id) in bench] or [None]
        learner_specs.append({
            "name": key, "price": options.prices.get(lr.name, options.default_price),
            "state_probs": [setup["distributions"][key][s] for s in STATES],
            "bandwidth": [float(np.mean([_rate(bench, t, s, "bandwidth") for t in known]))
                          for s in STATES],
            # A task the learner cannot run (not benchmarked: not eligible) gets a negligible
            # rate, so no deadline-respecting plan gives it shards; the driver zeroes the rest.
            "compute": {str(t.id): [_rate(bench, t, s, "compute") for s in STATES]
                        for t in tasks},
            "benchmarked_state": STATES.index(setup["benchmarked_state"][key])})
    prices = [float(w["price"]) for w in learner_specs]
    budget = options.budget
    if budget is None:  # no limit: enough to pay every shard at the highest price
        budget = float(sum(t["shards"] for t in task_specs) * max(prices, default=0.0)) + 1.0
    return MedInstance.model_validate({
        "states": list(STATES), "budget": budget, "min_shards": options.min_shards,
        "tasks": task_specs, "learners": learner_specs})


class JobDriver:
    """Runs every job of one orchestrator, one asyncio task each."""

    def __init__(self, store: Store, gateway: LearnerGateway, metrics: Metrics) -> None:
        self.store = store
        self.gateway = gateway
        self.metrics = metrics
        self._jobs: dict[int, asyncio.Task[None]] = {}
        # Closing and committing a GUC (FedAvg, model files, the round rows): shielded from
        # cancellation, and awaited by `stop` so a shutdown never cuts a round in half.
        self._commits: set[asyncio.Task[Any]] = set()
        # How much earlier than T_i each learner halts so its answer is in by T_i, learnt from
        # its answers across jobs and tasks (orchestrator/runs/halting.py). In memory only.
        self._lead = HaltLead()

    def resume_all(self) -> None:
        """Launch every job a previous process left pending or running (resume, not fail):
        it continues from its last committed GUC with its stored setup (docs/orchestrator.md)."""
        for job in self.store.jobs(("pending", "running")):
            self.launch(job.id)

    def launch(self, job_id: int) -> None:
        if job_id in self._jobs and not self._jobs[job_id].done():
            return
        self._jobs[job_id] = asyncio.get_running_loop().create_task(
            self._run(job_id), name=f"job-{job_id}")

    async def cancel(self, job_id: int) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job

    async def stop(self, timeout_s: float = STOP_COMMIT_S) -> None:
        """Let GUCs being committed finish (at most `timeout_s`), then stop every job without
        touching its state: the next start resumes it from its last committed GUC."""
        if self._commits:
            await asyncio.wait(set(self._commits), timeout=timeout_s)
        for job_id in list(self._jobs):
            await self.cancel(job_id)

    async def _committed(self, coro: Awaitable[Any]) -> Any:
        """Run `coro` to its end even if the job is cancelled meanwhile (a shutdown waits)."""
        task = asyncio.ensure_future(coro)
        self._commits.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._commits.discard(t)
            if not t.cancelled():
                t.exception()  # retrieved: a cancelled job's late commit is no error

        task.add_done_callback(done)
        return await asyncio.shield(task)

    # -- one job --------------------------------------------------------------------------

    async def _run(self, job_id: int) -> None:
        try:
            await self._drive(job_id)
        except asyncio.CancelledError:
            raise
        except Conflict as exc:
            # The job was cancelled (nothing left to do) or one of its tasks was cancelled on
            # its own, which ends the job: its rounds are committed for all tasks together.
            log.info("job %s stopped: %s", job_id, exc)
            self._fail(job_id, f"stopped: {exc}")
        except StorageFull as exc:  # waited long enough for space: give up with the reason
            log.error("job %s failed: %s", job_id, exc)
            self._fail(job_id, f"{exc.code}: {exc.detail}")
        except Exception as exc:
            log.exception("job %s failed", job_id)
            self._fail(job_id, f"{type(exc).__name__}: {exc}")
        finally:
            if self._jobs.get(job_id) is asyncio.current_task():
                self._jobs.pop(job_id, None)

    async def _drive(self, job_id: int) -> None:
        """Set up (or take the stored setup of) a job, then run its GUCs from the first one
        not committed; a job resumed after a restart draws exactly what it would have."""
        from orchestrator.runs.taskdata import load_test_split, read_state
        from plexus.spec import load_spec

        store = self.store
        job = await asyncio.to_thread(store.job, job_id)
        options = JobOptions(**job.options)
        tasks = [await asyncio.to_thread(store.task, t) for t in job.task_ids]
        specs = [load_spec(t.spec) for t in tasks]
        now = time.time()
        await asyncio.to_thread(store.set_job_state, job_id, "running", None, now)
        for t in tasks:
            if t.state == "pending":
                await asyncio.to_thread(store.set_state, t.id, "running", None, now)
        setup: dict[str, Any] | None = job.setup if job.setup.get("benchmarks") else None
        if setup is None:
            learners = await self.gateway.wait_for_alive(options.learners or len(tasks))
            setup = await self._setup(job_id, options, learners, tasks, specs)
            await asyncio.to_thread(store.set_job_state, job_id, "running", None,
                                    time.time(), setup=setup)
        else:
            log.info("job %s resumes at GUC %s", job_id, job.rounds_done)
            await self._wait_back(setup, RESUME_WAIT_S)
        layout = store.layout
        tests = [await asyncio.to_thread(load_test_split, layout, t.id) for t in tasks]
        # Resume from each task's last committed model version (v0 for a new job).
        models = [await asyncio.to_thread(read_state, layout.model(t.id, t.model_version))
                  for t in tasks]
        progress = _Progress.load(tasks, specs, await asyncio.to_thread(store.job_rounds,
                                                                         job_id))
        await self._fail_ineligible(tasks, setup, progress)
        await self._cycles(job_id, job.rounds_done, options, setup, tasks, specs, tests,
                           models, progress)
        failed = progress.failed_summary(tasks)
        await when_space(f"job {job_id}: its end", store.set_job_state, job_id,
                         "failed" if failed else "finished", failed, time.time())

    async def _cycles(self, job_id: int, first: int, options: JobOptions,
                      setup: dict[str, Any], tasks: list[TaskRow], specs: list[TaskSpec],
                      tests: list[Any], models: list[dict[str, Any]],
                      progress: _Progress) -> None:
        """GUCs `first`, `first + 1`, … until every task ran its rounds or failed."""
        joined = {int(k) for k in setup["benchmarks"]}
        index = first
        short_since: float | None = None  # when this GUC first found too few learners
        while True:
            active = progress.active(specs, index)
            if not active:
                return
            alive = await asyncio.to_thread(self.gateway.alive)
            here = [lr for lr in alive if lr.id in joined]
            if not here:
                here = await self._wait_back(setup, JOINED_WAIT_S, need=1)
            if not here:
                raise RuntimeError("no benchmarked learner is alive any more (waited "
                                   f"{JOINED_WAIT_S:.0f} s)")
            try:
                entries = await self._round_when_space(
                    job_id, index, options, setup, here, [tasks[i] for i in active],
                    [specs[i] for i in active], [tests[i] for i in active], models, active)
            except NoAllocation as exc:
                # Too few learners for the tasks (one task per learner, eq. 4.4f) while some
                # of the job's learners are missing: they drop out for moments (after an
                # orchestrator restart their heartbeats back off and may come after
                # alive_after_s; the chaos matrix failed a MED job so). Wait for one more and
                # run the GUC again (nothing of it was committed; the draws are seeded by GUC
                # and learner), for at most JOINED_WAIT_S in all.
                now = time.monotonic()
                short_since = now if short_since is None else short_since
                left = JOINED_WAIT_S - (now - short_since)
                if exc.learners >= len(joined) or left <= 0:
                    raise
                log.warning("job %s: %s; waiting (at most %.0f s) for more learners",
                            job_id, exc, left)
                await self._wait_back(setup, left, need=exc.learners + 1)
                continue
            short_since = None
            await self._settle(index, tasks, specs, active, entries, progress)
            index += 1

    async def _round_when_space(self, job_id: int, index: int, *args: Any) -> list[Any]:
        """GUC `index`, run again while the data directory is full: the job stays running
        with reason `storage_full: …` and goes on, with that reason cleared, once a GUC
        could be committed (nothing of the failed attempt was: its model files are temp
        files removed, its rows rolled back)."""
        delay, waiting = RETRY_S, False
        while True:
            try:
                entries = await self._round(job_id, index, *args)
            except StorageFull as exc:
                waiting = True
                log.error("job %s GUC %s: %s; trying again in %.0f s", job_id, index,
                          exc.detail, delay)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(
                        self.store.set_job_state, job_id, "running",
                        f"storage_full: GUC {index} waits for space: {exc.detail}", time.time(),
                        only_from=("running",))
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            if waiting:
                await asyncio.to_thread(self.store.set_job_state, job_id, "running", None,
                                        time.time(), only_from=("running",))
            return entries

    async def _settle(self, index: int, tasks: list[TaskRow], specs: list[TaskSpec],
                      active: list[int], entries: list[Any], progress: _Progress) -> None:
        """After GUC `index`: end tasks that ran their last round, fail those with too many
        empty rounds in a row (`sync.max_empty_rounds`, as a single sync task)."""
        now = time.time()
        for slot, (_tid, values, _path, record) in zip(active, entries, strict=True):
            why = progress.observe(slot, specs[slot], index, values, record)
            spec_sync = specs[slot].sync
            assert spec_sync is not None
            if why is None and spec_sync.rounds == index + 1:
                why = progress.final(slot)
                if why is None:
                    await when_space(f"job task {tasks[slot].id}: its end", self.store.set_state,
                                     tasks[slot].id, "finished", None, now)
                    continue
            if why is not None:
                progress.dead[slot] = why
                log.warning("job task %s failed: %s", tasks[slot].id, why)
                await when_space(f"job task {tasks[slot].id}: its end", self.store.set_state,
                                 tasks[slot].id, "failed", why, now)

    async def _wait_back(self, setup: dict[str, Any], timeout_s: float, need: int | None = None
                         ) -> list[LearnerRow]:
        """Wait (at most `timeout_s`) until `need` (default: all) of the job's benchmarked
        learners are alive again, e.g. heartbeating after an orchestrator restart; the alive
        ones when it ends."""
        joined = {int(k) for k in setup["benchmarks"]}
        want = len(joined) if need is None else need
        end = time.monotonic() + timeout_s
        while True:
            here = [lr for lr in await asyncio.to_thread(self.gateway.alive)
                    if lr.id in joined]
            if len(here) >= want or time.monotonic() >= end:
                return here
            await asyncio.sleep(0.5)

    async def _fail_ineligible(self, tasks: list[TaskRow], setup: dict[str, Any],
                               progress: _Progress) -> None:
        """A task that no benchmarked learner can take part in fails with every reason."""
        eligible = setup.get("eligible")
        if eligible is None:  # a setup from before eligibility was recorded: all could
            return
        for slot, t in enumerate(tasks):
            if slot in progress.dead or any(t.id in ids for ids in eligible.values()):
                continue
            why = "no eligible learner: " + (
                "; ".join(f"{setup['learner_names'].get(k, k)}: {v}" for k, v in
                          sorted(setup.get("skipped", {}).get(str(t.id), {}).items()))
                or "no learner finished subset benchmarking")
            progress.dead[slot] = why
            await asyncio.to_thread(self.store.set_state, t.id, "failed", why, time.time())

    def _fail(self, job_id: int, reason: str) -> None:
        now = time.time()
        with contextlib.suppress(Exception):
            job = self.store.job(job_id)
            if job.state not in ("pending", "running"):
                return  # cancelled by a user: the cancel route settles its tasks
            for task_id in job.task_ids:
                with contextlib.suppress(Conflict):
                    self.store.set_state(task_id, "failed", reason, now)
            self.store.set_job_state(job_id, "failed", reason, now)

    async def _setup(self, job_id: int, options: JobOptions, learners: list[LearnerRow],
                     tasks: list[TaskRow], specs: list[TaskSpec]) -> dict[str, Any]:
        """Draw state distributions, then SB by every learner in every state for every task
        it is eligible for (it can build the model and hold it, `runs/eligibility.py`)."""
        from orchestrator.allocation.med import heated_softmax
        from orchestrator.runs.eligibility import skipped

        # Seeded by the job's seed alone: jobs with the same seed and learners draw the same
        # distributions, so allocators can be compared on the same fleet.
        rng = np.random.default_rng(options.seed)
        h = len(STATES)
        distributions, benchmarked = {}, {}
        for lr in learners:
            # Thesis 4.3.1: a uniformly drawn one-hot vector through a softmax with heat τ.
            probs = heated_softmax(np.eye(h)[int(rng.integers(h))], options.heat)
            distributions[str(lr.id)] = {s: float(p) for s, p in zip(STATES, probs, strict=True)}
            # MMTT-Uncertain believes the learner stays in the state it was in during SB.
            benchmarked[str(lr.id)] = STATES[int(rng.choice(h, p=probs))]
        skips = {str(t.id): await asyncio.to_thread(skipped, spec, learners)
                 for t, spec in zip(tasks, specs, strict=True)}
        fit = {lr.id: [i for i, t in enumerate(tasks) if str(lr.id) not in skips[str(t.id)]]
               for lr in learners}
        gateway = self.gateway

        def bench_all(lr: LearnerRow) -> Call:
            async def run() -> dict[str, Any]:
                out: dict[str, Any] = {}
                for i in fit[lr.id]:
                    per_state = {}
                    for state in STATES:
                        ans = await gateway.benchmark(lr, specs[i].to_dict(), tasks[i].id,
                                                      state)
                        per_state[state] = {"bandwidth": float(ans["bandwidth"]),
                                            "compute": float(ans["compute"])}
                    out[str(tasks[i].id)] = per_state
                return out
            return lr, run

        replies = await gateway.gather([bench_all(lr) for lr in learners if fit[lr.id]],
                                       BENCHMARK_TIMEOUT_S)
        benchmarks = {str(r.learner.id): r.value for r in replies if r.error is None}
        left_out = {str(r.learner.id): r.error for r in replies if r.error is not None}
        if not benchmarks:
            raise RuntimeError(f"no learner finished subset benchmarking: {left_out or skips}")
        return {"states": list(STATES), "distributions": distributions,
                "benchmarked_state": benchmarked, "benchmarks": benchmarks,
                "left_out": left_out, "skipped": skips,
                "eligible": {k: [int(t) for t in v] for k, v in benchmarks.items()},
                "learner_names": {str(lr.id): lr.name for lr in learners}}

    async def _round(self, job_id: int, index: int, options: JobOptions, setup: dict[str, Any],
                     learners: list[LearnerRow], tasks: list[TaskRow], specs: list[TaskSpec],
                     tests: list[Any], models: list[dict[str, Any]], slots: list[int]
                     ) -> list[tuple[int, dict[str, Any], Any, dict[str, Any]]]:
        """One GUC of the active tasks; returns what was committed per task."""
        started_at = time.time()
        # Only learners that can take part in one of this GUC's tasks draw and get shards.
        fit = _eligible(setup, tasks)
        learners = [lr for lr in learners if any(lr.id in ids for ids in fit)]
        if not learners:
            raise RuntimeError(f"round {index}: no alive learner can take part in any of "
                               f"the tasks {[t.name for t in tasks]}")

        # 1. Every learner draws this round's state; only MMTT-Ideal hears which one.
        drawn, left_out, learners, actual = await self._draw(index, options, setup, learners)

        # 2. Allocate (eq. 4.4).
        t0 = time.monotonic()
        res, alloc = await self._allocate(index, options, setup, learners, tasks, specs, actual)
        plan_s = time.monotonic() - t0
        for i, ids in enumerate(fit):  # never dispatch a task to a learner that cannot run it
            for j, lr in enumerate(learners):
                if lr.id not in ids:
                    alloc[i, j] = 0
        predicted = predicted_delays(build_instance(tasks, specs, learners, setup, options),
                                     alloc, learners, actual)

        # 3. Dispatch: each chosen learner trains its one task, halting at that task's T_i.
        counts, shard_ids, by_task, halts = await self._dispatch(index, alloc, learners, tasks,
                                                                 specs)

        # 4. Per task: FedAvg by true samples, evaluate, record; shielded, so a shutdown
        # waits for it and a GUC is committed whole or not at all (then it runs again).
        async def close_and_commit() -> list[Any]:
            entries = []
            for i, (t, spec) in enumerate(zip(tasks, specs, strict=True)):
                skips = {k: v for k, v in setup.get("skipped", {}).get(str(t.id), {}).items()
                         if int(k) in {lr.id for lr in learners}}
                entries.append(await self._finish_task(
                    i, t, spec, index, started_at, plan_s, counts[i], shard_ids[i], by_task[i],
                    tests[i], models, slots[i], {**left_out, **skips}, res, drawn,
                    predicted[i], halts))
            await asyncio.to_thread(self.store.record_job_round, job_id, index, entries,
                                    time.time())
            return entries

        entries: list[Any] = await self._committed(close_and_commit())
        names = {str(r.learner.id): r.learner.name for r in drawn}
        for task_id, v, _path, _record in entries:
            await asyncio.to_thread(
                round_notes, self.store, task_id, index, names, left_out=v["left_out"],
                samples=v["samples"], version=v["model_version"], round_time_s=v["round_time_s"],
                truancy=v["truancy"], accuracy=v["accuracy"], loss=v["loss"])
        m = self.metrics
        for _task_id, values, _path, _record in entries:
            m.rounds.labels(allocator=options.allocator).inc()
            m.round_time.observe(values["round_time_s"])
        log.info("job %s round %s: %s", job_id, index,
                 ", ".join(f"{e[3]['task']} {e[3]['duration_s']:.2f}s" for e in entries))
        return entries

    async def _draw(self, index: int, options: JobOptions, setup: dict[str, Any],
                    learners: list[LearnerRow]
                    ) -> tuple[list[Reply], dict[str, str], list[LearnerRow], list[int] | None]:
        """Every learner draws its state for GUC `index` from a seed fixed by the job's seed,
        the GUC and the learner; the replies, who failed, who drew, and (MMTT-Ideal only)
        the revealed states in learner order."""
        reveal = options.allocator == "mmtt_ideal"

        def draw(lr: LearnerRow) -> Call:
            dist = setup["distributions"][str(lr.id)]
            seed = draw_seed(options.seed, index, lr.id)

            async def call() -> Any:
                import rpc

                try:
                    return await self.gateway.round_state(lr, dist, reveal, seed)
                except (rpc.BadArguments, rpc.RemoteError) as exc:
                    if not isinstance(exc, rpc.BadArguments) and \
                            getattr(exc, "remote_type", "") != "BadArguments":
                        raise
                    # An agent older than seeded draws: it draws from its own stream.
                    return await self.gateway.round_state(lr, dist, reveal)
            return lr, call

        drawn = await self.gateway.gather([draw(lr) for lr in learners], ROUND_STATE_TIMEOUT_S)
        left_out = {str(r.learner.id): f"round_state: {r.error}" for r in drawn if r.error}
        learners = [r.learner for r in drawn if r.error is None]
        if not learners:
            raise RuntimeError(f"no learner drew a state this round: {left_out}")
        actual = None
        if reveal:
            states = {r.learner.id: r.value["state"] for r in drawn if r.error is None}
            actual = [STATES.index(states[lr.id]) for lr in learners]
        return drawn, left_out, learners, actual

    async def _allocate(self, index: int, options: JobOptions, setup: dict[str, Any],
                        learners: list[LearnerRow], tasks: list[TaskRow], specs: list[TaskSpec],
                        actual: list[int] | None) -> tuple[Any, Any]:
        """Solve this round's instance (eq. 4.4): the plan result and its allocation matrix.

        An instance infeasible under its deadlines is solved again without 4.4b, and the
        learners then halt at T_i (the partial updates are kept).
        """
        from orchestrator.allocation.med import check_allocation
        from orchestrator.allocation.mmtt import plan

        method = METHODS[options.allocator]
        inst = build_instance(tasks, specs, learners, setup, options)
        res = await asyncio.to_thread(plan, inst, method, actual_states=actual,  # type: ignore[arg-type]
                                      time_limit_s=options.time_limit_s,
                                      soft_deadlines_if_infeasible=True, seed=options.seed)
        if res.allocation is None:
            families = ", ".join(res.infeasible_families) or "unknown"
            raise NoAllocation(f"round {index}: {method} found no allocation ({res.status}; "
                               f"constraint families: {families}); raise the budget or the "
                               "deadlines, or lower min_shards", learners=len(learners))
        alloc = np.asarray(res.allocation, dtype=int)
        # Eq. 4.4f: a learner serves at most one task per round; never dispatch otherwise.
        one_task = [v for v in check_allocation(inst, alloc, enforce_deadlines=False)
                    if v.startswith("4.4f")]
        if one_task:
            raise RuntimeError(f"round {index}: the allocation breaks eq. 4.4f: {one_task}")
        return res, alloc

    async def _dispatch(self, index: int, alloc: Any, learners: list[LearnerRow],
                        tasks: list[TaskRow], specs: list[TaskSpec]
                        ) -> tuple[list[dict[str, int]], list[dict[str, list[int]]],
                                   dict[int, list[Reply]], dict[str, float]]:
        """Every chosen learner trains its one task; per task: shard counts, shard ids and the
        replies, cut off at the latest D + grace of the tasks; and the `deadline_s` each
        learner was sent (its task's T_i less its learnt lead)."""
        from orchestrator.allocation import assign_shard_ids

        calls: list[Call] = []
        owner: dict[int, int] = {}  # learner id -> position of its task in `tasks`
        counts: list[dict[str, int]] = []
        shard_ids: list[dict[str, list[int]]] = []
        halts: dict[str, float] = {}
        for i, (t, spec) in enumerate(zip(tasks, specs, strict=True)):
            c = {str(lr.id): int(alloc[i, j]) for j, lr in enumerate(learners)}
            ids = assign_shard_ids(c, t.num_shards, seed=spec.seed, round_index=index)
            counts.append(c)
            shard_ids.append(ids)
            assert spec.sync is not None
            for lr in learners:
                key = str(lr.id)
                if c[key] > 0:
                    owner[lr.id] = i
                    halts[key] = self._lead.halt_s(key, spec.sync.deadline_s)
                    calls.append((lr, self._train_call(lr, spec, t.id, index, ids[key],
                                                       halts[key])))
        cutoff = max(s.sync.deadline_s + s.sync.grace_s for s in specs if s.sync is not None)
        replies = await self.gateway.gather(calls, cutoff)
        by_task: dict[int, list[Reply]] = {i: [] for i in range(len(tasks))}
        for r in replies:
            by_task[owner[r.learner.id]].append(r)
        self._lead.observe_all(replies)
        return counts, shard_ids, by_task, halts

    def _refused(self, task_id: int, code: str) -> None:
        self.metrics.refused.labels(reason=code).inc()
        with contextlib.suppress(Exception):
            self.store.add_refusal(task_id, code)
        note(self.store, task_id, "refused", f"a learner request refused: {code}",
             {"code": code})

    def _train_call(self, lr: LearnerRow, spec: TaskSpec, task_id: int, index: int,
                    shards: list[int], deadline_s: float) -> Callable[[], Awaitable[Any]]:
        spec_dict = spec.to_dict()
        # "drawn": the agent trains in the state it drew for this round (`round_state`).
        return lambda: self.gateway.train(lr, spec_dict, task_id, index, shards, deadline_s,
                                          "drawn")

    async def _finish_task(self, i: int, t: TaskRow, spec: TaskSpec, index: int,
                           started_at: float, plan_s: float, counts: dict[str, int],
                           shard_ids: dict[str, list[int]], replies: list[Reply],
                           test: TestSplit, models: list[dict[str, Any]], slot: int,
                           left_round: dict[str, str], res: Any, drawn: list[Reply],
                           predicted: dict[str, dict[str, float]], halts: dict[str, float]
                           ) -> tuple[int, dict[str, Any], Any, dict[str, Any]]:
        assert spec.sync is not None
        busy = {str(r.learner.id): r.elapsed_s for r in replies}
        # Update admission: no learner counts more samples than it was given (runs/sync.py).
        replies = cap_samples(replies, shard_ids, t.shard_samples * spec.training.iterations,
                              lambda code: self._refused(t.id, code))
        closed = await close_round(self.store, self.metrics, t.id, spec, index, models[slot],
                                   replies, test, dict(left_round))
        models[slot] = closed.state
        # The task's GUC time: dispatch until the last of its learners answered (or was cut).
        duration = max(busy.values(), default=0.0)
        deadline = spec.sync.deadline_s
        record = _task_record(i, t, spec, index, counts, busy, duration, closed, res, drawn)
        record["learner_timing"] = learner_timing(predicted, replies, busy)
        record["learner_halt_s"] = {k: halts[k] for k in busy if k in halts}
        values = {
            "index": index, "started_at": started_at, "allocation": counts,
            "shards": {k: v for k, v in shard_ids.items() if v}, "samples": closed.samples,
            "left_out": closed.left_out, "plan_s": plan_s, "round_time_s": duration,
            "truancy": (duration - deadline) / deadline, "loss": closed.loss,
            "accuracy": closed.accuracy, "model_version": closed.version,
        }
        return t.id, values, closed.model_path, record


def _task_record(i: int, t: TaskRow, spec: TaskSpec, index: int, counts: dict[str, int],
                 busy: dict[str, float], duration: float, closed: ClosedRound, res: Any,
                 drawn: list[Reply]) -> dict[str, Any]:
    """One task's record of a job round: the thesis 4.3 metrics are computed from these."""
    assert spec.sync is not None
    deadline = spec.sync.deadline_s
    samples, left_out = closed.samples, closed.left_out
    allocated_shards = sum(counts.values())
    per_shard = t.shard_samples * spec.training.iterations
    samples_allocated = allocated_shards * per_shard
    trained = min(sum(samples.values()), samples_allocated)
    drawn_states = {str(r.learner.id): r.value.get("state") for r in drawn
                    if r.error is None and str(r.learner.id) in busy}
    return {
        "task": t.name, "task_id": t.id, "round": index, "deadline_s": deadline,
        "duration_s": duration, "met_deadline": duration <= deadline,
        "shards_allocated": allocated_shards, "samples_allocated": samples_allocated,
        "samples_trained": trained, "fulfillment": trained / samples_allocated
        if samples_allocated else 0.0,
        "allocation": {k: v for k, v in counts.items() if v > 0},
        "learner_busy_s": busy,
        "learner_idle_s": {k: max(0.0, duration - b) for k, b in busy.items()},
        "learner_samples": samples, "states_revealed": drawn_states,
        "left_out": {k: v for k, v in left_out.items() if k in busy},
        "expected_delay_s": (res.task_delay_s[i] if res.task_delay_s else None),
        "solver": {"method": res.method, "status": res.status, "backend": res.backend,
                   "gap": res.gap, "notes": list(res.notes)},
    }


def predicted_delays(inst: MedInstance, alloc: Any, learners: list[LearnerRow],
                     actual: list[int] | None = None) -> list[dict[str, dict[str, float]]]:
    """Per task, per chosen learner (id as str): eq. 4.3's expected delay δ_ij of the
    dispatched allocation and its two parts, transfer (model down and up, shards down) and
    training (μ·samples·E[1/c]), seconds. With the learners' `actual` state indices (known
    only under MMTT-Ideal) also the same in the state drawn (`in_state_*`): SB's own error,
    without eq. 4.3's averaging over states."""
    from orchestrator.allocation.med.model import coefficients

    co = coefficients(inst, enforce_deadlines=False, enforce_budget=False)
    gamma = np.array([w.state_probs for w in inst.learners], dtype=float)
    e_inv_b = (gamma / np.array([w.bandwidth for w in inst.learners], dtype=float)).sum(axis=1)
    out: list[dict[str, dict[str, float]]] = []
    for i, task in enumerate(inst.tasks):
        row: dict[str, dict[str, float]] = {}
        for j, lr in enumerate(learners):
            d = int(alloc[i, j])
            if d <= 0:
                continue
            transfer = float((2.0 * task.model_bytes + task.shard_bytes * d) * e_inv_b[j])
            total = float(co.fixed[i, j] + co.per_shard[i, j] * d)
            row[str(lr.id)] = {"expected_s": total, "expected_transfer_s": transfer,
                               "expected_train_s": total - transfer}
            if actual is not None:
                w, k = inst.learners[j], actual[j]
                row[str(lr.id)] |= {
                    "in_state_transfer_s": (2.0 * task.model_bytes + task.shard_bytes * d)
                    / w.bandwidth[k],
                    "in_state_train_s": task.iterations * task.shard_samples * d
                    / w.compute[task.name][k]}
        out.append(row)
    return out


def learner_timing(predicted: dict[str, dict[str, float]], replies: list[Reply],
                   busy: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """Per learner of a task round: eq. 4.3's prediction beside what happened (the call's
    seconds as the orchestrator saw them, and the agent's own download and training
    seconds), so a model error can be traced to the term that made it."""
    told = {str(r.learner.id): r.value for r in replies
            if r.error is None and isinstance(r.value, dict)}
    out: dict[str, dict[str, float | None]] = {}
    for key, p in predicted.items():
        v = told.get(key, {})
        out[key] = {**p, "measured_s": busy.get(key),
                    "download_s": _num(v.get("download_s")), "train_s": _num(v.get("train_s"))}
    return out


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


# Samples/s (or bytes/s) standing in for "cannot run this task" in a MED instance.
NEGLIGIBLE_RATE = 1e-9


def draw_seed(job_seed: int, index: int, learner_id: int) -> int:
    """The seed of a learner's stressor draw in GUC `index`: a function of the job's seed, the
    GUC and the learner alone, so a GUC run again after a restart draws the same states (and
    jobs with the same seed draw the same, for comparing allocators on one fleet)."""
    return int(np.random.SeedSequence([job_seed, index, learner_id]).generate_state(1)[0])


def _rate(bench: dict[str, Any], t: TaskRow | None, state: str, what: str) -> float:
    """A learner's benchmarked rate for task `t` in `state`, or a negligible one."""
    if t is None or str(t.id) not in bench:
        return NEGLIGIBLE_RATE
    return float(bench[str(t.id)][state][what])


def _eligible(setup: dict[str, Any], tasks: list[TaskRow]) -> list[set[int]]:
    """Per task, the ids of the learners that may train it (all benchmarked ones for a setup
    recorded before eligibility was)."""
    eligible = setup.get("eligible")
    if eligible is None:
        everyone = {int(k) for k in setup["benchmarks"]}
        return [everyone for _ in tasks]
    return [{int(k) for k, ids in eligible.items() if t.id in ids} for t in tasks]


def _empty_why(values: dict[str, Any]) -> str:
    """Why a task's GUC trained nothing, learner by learner."""
    left = values.get("left_out") or {}
    return "; ".join(f"learner {k}: {v}" for k, v in sorted(left.items())) or \
        "no learner was allocated shards"


@dataclass
class _Progress:
    """Per task slot of a job: empty GUCs in a row, whether any GUC trained, and why a task
    failed (such a task takes no further GUCs; the others go on)."""

    streak: dict[int, int] = field(default_factory=dict)
    trained: dict[int, bool] = field(default_factory=dict)
    dead: dict[int, str] = field(default_factory=dict)
    last_why: dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls, tasks: list[TaskRow], specs: list[TaskSpec],
             rounds: list[JobRoundRow]) -> _Progress:
        """Progress as committed: a resumed job picks its counts up from its records."""
        p = cls({i: 0 for i in range(len(tasks))}, {i: False for i in range(len(tasks))})
        slot_of = {t.id: i for i, t in enumerate(tasks)}
        for r in sorted(rounds, key=lambda r: (r.index, r.task_id)):
            slot = slot_of.get(r.task_id)
            if slot is None:
                continue
            if int(r.record.get("samples_trained", 0)) > 0:
                p.streak[slot], p.trained[slot] = 0, True
            else:
                p.streak[slot] += 1
        for i, t in enumerate(tasks):
            if t.state in ("failed", "cancelled"):
                p.dead[i] = t.reason or t.state
        return p

    def active(self, specs: list[TaskSpec], index: int) -> list[int]:
        """Slots of the tasks that take part in GUC `index`."""
        return [i for i, s in enumerate(specs)
                if s.sync is not None and index < s.sync.rounds and i not in self.dead]

    def observe(self, slot: int, spec: TaskSpec, index: int, values: dict[str, Any],
                record: dict[str, Any]) -> str | None:
        """Count GUC `index` of a task; why it fails now (too many empty GUCs), else None."""
        assert spec.sync is not None
        if int(record.get("samples_trained", 0)) > 0:
            self.streak[slot], self.trained[slot] = 0, True
            return None
        self.streak[slot] += 1
        allowed = spec.sync.max_empty_rounds
        why = f"round {index}: no learner trained ({_empty_why(values)})"
        self.last_why[slot] = why
        if self.streak[slot] > allowed:
            return (f"{why}; {self.streak[slot]} empty rounds in a row, "
                    f"sync.max_empty_rounds is {allowed}")
        return None

    def final(self, slot: int) -> str | None:
        """Why a task that ran all its rounds still fails (none trained), else None."""
        if self.trained[slot]:
            return None
        return f"no learner trained in any round; last: {self.last_why.get(slot, 'none ran')}"

    def failed_summary(self, tasks: list[TaskRow]) -> str | None:
        """The job's reason when some of its tasks failed, else None."""
        if not self.dead:
            return None
        return "; ".join(f"task {tasks[i].name} failed: {why}"
                         for i, why in sorted(self.dead.items()))

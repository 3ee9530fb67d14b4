"""The agent's remote procedures (docs/protocol.md): status, plan, benchmark, train.

They are plain methods of `Agent`, testable without a network; `make_registry` exposes them
through the RPC layer. A bad task spec or argument is answered with `BadTask` (the caller sees a
`RemoteError` whose type is "BadTask") and the agent keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learner_agent.arguments import check_int, parse_task
from learner_agent.async_runs import AsyncRuns
from learner_agent.calibration import ObservedRates
from learner_agent.errors import BadTask, OrchestratorRefused
from learner_agent.facts import device_facts

log = logging.getLogger("learner_agent.work")

if TYPE_CHECKING:
    import numpy as np

    from learner_agent.benchmarking import SBResult
    from learner_agent.client import OrchestratorClient
    from plexus.spec import TaskSpec


class Agent:
    """One learner's procedures and its small amount of state (busy flag, stressor state).

    `stress_heat` turns on stressor states sampled per call from a heated-softmax distribution
    (thesis 4.3.1) when the orchestrator does not name a state; None (the default) means idle.
    """

    def __init__(
        self,
        name: str,
        client: OrchestratorClient,
        *,
        stress_heat: float | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        threads: int = 1,
        local_data: Path | None = None,
    ) -> None:
        import numpy as np

        self.name = name
        # `plexus agent run --data DIR`: samples that never leave this device (device tasks).
        self.local_data = local_data
        self.threads = threads
        self._torch_ready = False
        self.client = client
        self.clock = clock
        self.state = "idle"
        # Async tasks (join_async / leave_async) run in their own threads, not under _work.
        self.asynchronous = AsyncRuns(client, self._configure_torch, local_data)
        self._work = threading.Lock()  # one benchmark or training at a time
        # c_k re-estimated from the rounds really trained (learner_agent/calibration.py).
        self.observed = ObservedRates()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._rng: np.random.Generator = np.random.default_rng(seed)
        self._distribution: dict[str, float] | None = None
        # The state drawn by `round_state` for this round; a `train` naming state "drawn" uses
        # it. Only that explicit name consumes it, so a draw left over from a round in which the
        # learner got no shards never leaks into a later call of a single-task driver.
        self._round_state: str | None = None
        # Its own stream, distinct per learner name: agents started with the same seed must
        # not draw their round states in lockstep.
        self._round_rng: np.random.Generator = np.random.default_rng(
            [seed, zlib.crc32(name.encode())])
        if stress_heat is not None:
            from learner_agent.stressors import state_distribution

            self._distribution = state_distribution(self._rng, stress_heat)

    # -- helpers ---------------------------------------------------------------------------
    def _pick_state(self, state: Any) -> str:
        from learner_agent.stressors import check_state, sample_state

        if state == "drawn":
            if self._round_state is None:
                raise BadTask("state 'drawn' needs a round_state call first (multi-task rounds)")
            chosen, self._round_state = self._round_state, None
            return chosen
        if state is None and self._distribution is not None:
            return sample_state(self._distribution, self._rng)
        if state is not None and not isinstance(state, str):
            raise BadTask(f"state must be a string or null, got {state!r}")
        try:
            return check_state(state)
        except ValueError as exc:
            raise BadTask(str(exc)) from None

    def _configure_torch(self) -> None:
        # torch's intra-op thread pool spins at barriers; on a device whose cores are also busy
        # (the training stressor, other services, several agents on one host) two threads ran
        # TwoNN 30–60× slower than one in our measurements (docs/agent.md). One thread by
        # default; a dedicated multi-core device can ask for more with --threads.
        if self._torch_ready:
            return
        import torch

        if self.threads > 0:
            torch.set_num_threads(self.threads)
        self._torch_ready = True

    def _run(self, job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        with self._busy_lock:
            self._busy += 1
        try:
            with self._work:
                self._configure_torch()
                return job()
        finally:
            with self._busy_lock:
                self._busy -= 1
            self.state = "idle"

    def _stress_fetch(self, task_id: int, spec: TaskSpec | None = None) -> Callable[[], bytes]:
        # The REST API serves no random matrices, so the downloading stressor pulls the same
        # number of bytes (one 900×900 float32 matrix) as shard payloads over the same link
        # (a device-data task has no shards: the model then).
        if spec is not None and spec.dataset.device:
            return lambda: self.client.model(task_id)
        return lambda: self.client.shard(task_id, 0)

    def _model_bytes(self, spec: TaskSpec) -> int:
        from learner_agent.benchmarking import build_dummy
        from plexus.tensors import encode_state

        # Ω_m as it travels: the safetensors payload of the task's parameters, in bytes.
        return len(encode_state(build_dummy(spec).state_dict(), {"version": 0}))

    def _benchmark(self, spec: TaskSpec, task_id: int, state: str) -> SBResult:
        from learner_agent.benchmarking import download_shards, measure
        from learner_agent.stressors import download_stress, training_stress

        if spec.sync is None:
            raise BadTask("subset benchmarking needs a synchronous task (mode: sync)")
        if spec.dataset.device:
            self.state = state
            with download_stress(state, self._stress_fetch(task_id, spec)), \
                    training_stress(state):
                return self._benchmark_local(spec, task_id)
        # Alg. 10 line 10 downloads n randomly chosen shards; the partition is already a
        # seeded random permutation, so shards 0..n-1 are a random subset of the data.
        ids = list(range(spec.sync.benchmark_shards))
        self.state = state
        available: list[int] = []
        exhausted = False

        def fetch(n: int) -> bytes:
            # A task with fewer shards than the benchmark size answers 404 past its last one;
            # downloading the ones it has again measures the same link and the same model.
            nonlocal exhausted
            if not exhausted:
                try:
                    payload = self.client.shard(task_id, n)
                except OrchestratorRefused as exc:
                    if exc.status != 404 or not available:
                        raise
                    exhausted = True
                else:
                    available.append(n)
                    return payload
            return self.client.shard(task_id, available[n % len(available)])

        with download_stress(state, self._stress_fetch(task_id)):
            # The model first, as a round fetches it (`train`): b_k pools it with the shards,
            # so it is the rate of what a round transfers, not mostly per-request cost.
            t0 = time.perf_counter()
            model_bytes = len(self.client.model(task_id))
            model_s = time.perf_counter() - t0
            payloads, seconds = download_shards(fetch, ids)
        with training_stress(state):
            return measure(spec, payloads, seconds, model_bytes=model_bytes,
                           model_download_s=model_s)

    # -- procedures ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """`{name, busy, state, facts, async}`; facts never include benchmark scores; `async`
        lists the async tasks joined (learner_agent.async_runs)."""
        return {
            "name": self.name,
            "busy": self._busy > 0,
            "state": self.state,
            "facts": device_facts(),
            "async": self.asynchronous.progress(),
        }

    def plan(self, task: dict[str, Any], task_id: int) -> dict[str, int]:
        """DAB (alg. 10): subset-benchmark privately, answer only `{"a_k": int}` (eq. 3.5)."""
        spec = parse_task(task)
        check_int("task_id", task_id)

        def job() -> dict[str, Any]:
            from learner_agent.dab import plan_shards

            assert spec.sync is not None  # checked in _benchmark
            if spec.dataset.device:
                return self._plan_local(spec, task_id)
            sb = self.observed.benchmark(task_id, "idle",
                                         lambda: self._benchmark(spec, task_id, "idle"))
            a_k = plan_shards(
                sb,
                deadline_s=spec.sync.deadline_s,
                model_bytes=self._model_bytes(spec),
                iterations=spec.training.iterations,
                safety_quantile=spec.sync.safety_quantile,
            )
            return {"a_k": int(a_k)}

        if spec.sync is None:
            raise BadTask("plan is for synchronous tasks (mode: sync)")
        return self._run(job)

    def _local(self, spec: TaskSpec) -> tuple[np.ndarray, np.ndarray]:
        """This device's own samples for a device-data task (BadTask when it has none)."""
        from learner_agent.local_data import read_local

        if self.local_data is None:
            raise BadTask("the task trains on device data but this agent was started without "
                          "--data DIR")
        return read_local(spec.dataset, self.local_data)

    def _local_train(self, spec: TaskSpec
                     ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """This device's samples split into the part it trains on and the part it evaluates
        the global model on (`dataset.test_fraction`, seeded by the task)."""
        from learner_agent.local_data import local_split

        x, y = self._local(spec)
        return local_split(x, y, spec.dataset.test_fraction, spec.seed)

    def _benchmark_local(self, spec: TaskSpec, task_id: int) -> SBResult:
        """SB on device data: b_k from timing the model download (no shard crosses the link),
        c_k from one pass over up to `benchmark_shards` local shards; Ω_d is reported as 0."""
        from dataclasses import replace

        from learner_agent.benchmarking import measure
        from learner_agent.local_data import local_shards, shard_payloads

        assert spec.sync is not None
        x, y = self._local_train(spec)[0]
        size = spec.partition.shard_size
        n = min(spec.sync.benchmark_shards, local_shards(x, y, size))
        if n == 0:
            raise BadTask("this agent's --data directory leaves no samples to train on")
        t0 = time.perf_counter()
        model_bytes = len(self.client.model(task_id))
        seconds = max(time.perf_counter() - t0, 1e-6)
        sb = measure(spec, shard_payloads(x, y, size, n, 0), [seconds / n] * n)
        return replace(sb, bandwidth=model_bytes / seconds, shard_bytes=0.0)

    def _plan_local(self, spec: TaskSpec, task_id: int) -> dict[str, Any]:
        """DAB on device data: Ω_d is 0, so eq. 3.5 keeps only the model and training terms,
        and a_k is capped by the local shards this device holds."""
        from learner_agent.local_data import local_shards
        from plexus.cost import dab_bound

        assert spec.sync is not None
        sb = self.observed.benchmark(task_id, "idle",
                                     lambda: self._benchmark_local(spec, task_id))
        x, y = self._local_train(spec)[0]
        a_k = dab_bound(deadline=spec.sync.deadline_s, model_bytes=self._model_bytes(spec),
                        shard_bytes=0, bandwidth=sb.bandwidth,
                        iterations=spec.training.iterations,
                        shard_samples=spec.partition.shard_size, compute=sb.compute,
                        max_shards=local_shards(x, y, spec.partition.shard_size))
        return {"a_k": int(a_k)}

    def benchmark(
        self, task: dict[str, Any], task_id: int, state: str | None = None
    ) -> dict[str, Any]:
        """For centralized allocators: `{"bandwidth": bytes/s, "compute": samples/s, "state"}`."""
        spec = parse_task(task)
        check_int("task_id", task_id)
        if spec.sync is None:
            raise BadTask("benchmark is for synchronous tasks (mode: sync)")
        chosen = self._pick_state(state)

        def job() -> dict[str, Any]:
            sb = self.observed.benchmark(task_id, chosen,
                                         lambda: self._benchmark(spec, task_id, chosen))
            return {"bandwidth": float(sb.bandwidth), "compute": float(sb.compute), "state": chosen}

        return self._run(job)

    def round_state(self, distribution: dict[str, float], reveal: bool = False,
                    seed: int | None = None) -> dict[str, str | None]:
        """Draw this round's stressor state from `distribution` (state → probability, thesis
        4.3.1); the next `train` naming state "drawn" runs in it. Answers `{"state": s}` only when
        `reveal` is true (MMTT-Ideal knows the state; MED and MMTT-Uncertain must not). With a
        `seed` (an integer ≥ 0) the draw is a function of it alone, else of the agent's stream."""
        from learner_agent.stressors import STATES, sample_state

        if not isinstance(distribution, dict) or not distribution:
            raise BadTask(f"distribution must map states to probabilities, got {distribution!r}")
        for name, p in distribution.items():
            if name not in STATES:
                raise BadTask(f"unknown stressor state {name!r}; choose from {', '.join(STATES)}")
            if isinstance(p, bool) or not isinstance(p, int | float) or not p >= 0:
                raise BadTask(f"probability of {name!r} must be a number ≥ 0, got {p!r}")
        if not sum(distribution.values()) > 0:
            raise BadTask("the state probabilities sum to 0; give at least one positive")
        rng = self._round_rng
        if seed is not None:
            import numpy as np

            rng = np.random.default_rng(check_int("seed", seed))
        self._round_state = sample_state({k: float(v) for k, v in distribution.items()}, rng)
        return {"state": self._round_state if reveal else None}

    def train(
        self,
        task: dict[str, Any],
        task_id: int,
        round: int,
        shards: list[int],
        deadline_s: float,
        state: str | None = None,
    ) -> dict[str, Any]:
        """Download the global model and `shards`, train μ passes, halt `deadline_s` seconds
        after the call arrived; answer parameters and the true samples trained."""
        arrived = self.clock()
        spec = parse_task(task)
        check_int("task_id", task_id)
        check_int("round", round)
        ids = _check_shards_and_deadline(shards, deadline_s)
        chosen = self._pick_state(state)
        deadline = arrived + float(deadline_s)

        def job() -> dict[str, Any]:
            from learner_agent.stressors import download_stress, training_stress
            from learner_agent.trainer import train_round

            self.state = chosen
            t0 = self.clock()
            if spec.dataset.device:
                return self._train_local(spec, task_id, round, len(ids), deadline)
            with download_stress(chosen, self._stress_fetch(task_id)):
                model_payload = self.client.model(task_id)
                payloads = self._fetch_shards(task_id, ids, deadline)
            download_s = self.clock() - t0
            with training_stress(chosen):
                result = train_round(
                    spec,
                    model_payload,
                    payloads,
                    deadline=deadline,
                    clock=self.clock,
                    download_s=download_s,
                    seed=spec.seed + round,
                )
            self.observed.record(task_id, chosen, result.samples_trained, result.train_s)
            answer = result.to_wire()
            # Shards that never arrived were allocated too: the orchestrator sees the drop.
            answer["samples_allocated"] = (
                len(ids) * spec.partition.shard_size * spec.training.iterations
            )
            return answer

        answer = self._run(job)
        log_work(task_id, round, len(ids), answer, self.clock() - arrived)
        return answer

    def _train_local(self, spec: TaskSpec, task_id: int, round: int, count: int,
                     deadline: float) -> dict[str, Any]:
        """A round on device data: `count` local shards (rotating by round), no download but
        the model's; nothing about the samples but their number goes back."""
        from learner_agent.local_data import evaluate_payload, local_shards, shard_payloads
        from learner_agent.trainer import train_round

        (x, y), (vx, vy) = self._local_train(spec)
        size = spec.partition.shard_size
        count = min(count, local_shards(x, y, size))
        t0 = self.clock()
        model_payload = self.client.model(task_id)
        download_s = self.clock() - t0
        # Per-device evaluation: the global model as it arrived, on this device's held-out part.
        local_eval = evaluate_payload(spec, model_payload, vx, vy) if len(vy) else None
        payloads = shard_payloads(x, y, size, count, round * count)
        result = train_round(spec, model_payload, payloads, deadline=deadline,
                             clock=self.clock, download_s=download_s, seed=spec.seed + round)
        self.observed.record(task_id, "idle", result.samples_trained, result.train_s)
        answer = result.to_wire()
        if local_eval is not None:
            answer["local_eval"] = local_eval
        return answer

    def split_train(self, task: dict[str, Any], task_id: int, round: int, shards: list[int],
                    device: dict[str, Any]) -> dict[str, Any]:
        """Split learning: train the device half on `shards` (or the device's own data),
        one request per batch to the orchestrator (learner_agent/split.py)."""
        from learner_agent.split import shard_data, split_round

        spec = parse_task(task)
        check_int("task_id", task_id)
        check_int("round", round)
        ids = _check_shards_and_deadline(shards, 1.0)
        if spec.split is None:
            raise BadTask("split_train needs a task with mode: split")
        if not isinstance(device, dict):
            raise BadTask("device must be the device half's tensors by name")

        def job() -> dict[str, Any]:
            bandwidth = None
            if spec.dataset.device:
                data, _held_out = self._local_train(spec)
            else:
                t0 = self.clock()
                payloads = [self.client.shard(task_id, n) for n in dict.fromkeys(ids)]
                seconds = self.clock() - t0
                # b_k (bytes/s) from the shard downloads, as subset benchmarking measures it.
                bandwidth = sum(map(len, payloads)) / seconds if seconds > 0 else None
                data = shard_data(payloads)
            return split_round(self.client, spec, task_id, round, data, device, bandwidth)

        return self._run(job)

    def _fetch_shards(self, task_id: int, ids: list[int], deadline: float) -> list[bytes]:
        """The payloads of shards `ids` in order, as many as arrive before `deadline`."""
        # An allocation may name a shard several times (DAB duplicates shards when
        # Σa_k exceeds the dataset): each distinct shard crosses the link once.
        fetched: dict[int, bytes] = {}
        payloads = []
        for n in ids:
            if self.clock() >= deadline:
                break  # out of time before all data arrived: train on what is here
            if n not in fetched:
                fetched[n] = self.client.shard(task_id, n)
            payloads.append(fetched[n])
        return payloads


def upload_bytes(params: Any) -> int:
    """Bytes of the parameters a train answer sends (tensor data, before framing)."""
    try:
        return int(sum(t.numel() * t.element_size() for t in params.values()))
    except (AttributeError, TypeError):
        return 0


def log_work(task_id: int, round: int, shards: int, answer: dict[str, Any],
             seconds: float) -> None:
    """One log line per piece of work: task, round, shards, samples trained, seconds,
    halted at the deadline or not, upload size."""
    size = upload_bytes(answer.get("params"))
    log.info("trained task %s round %s: %d shards, %s samples in %.2f s (%s), upload %.1f KiB",
             task_id, round, shards, answer.get("samples_trained"), seconds,
             "halted at the deadline" if answer.get("halted") else "not halted", size / 1024,
             extra={"task_id": task_id, "round": round, "shards": shards,
                    "samples_trained": answer.get("samples_trained"), "seconds": seconds,
                    "halted": bool(answer.get("halted")), "upload_bytes": size})


def _check_shards_and_deadline(shards: Any, deadline_s: Any) -> list[int]:
    """The shard numbers of a train call; BadTask unless shards is a list of ints and
    deadline_s a positive number."""
    if not isinstance(shards, list):
        raise BadTask(f"shards must be a list of shard numbers, got {shards!r}")
    ids = [check_int("shard", s) for s in shards]
    if (
        isinstance(deadline_s, bool)
        or not isinstance(deadline_s, int | float)
        or not deadline_s > 0
    ):
        raise BadTask(f"deadline_s must be a positive number of seconds, got {deadline_s!r}")
    return ids


def make_registry(agent: Agent) -> Any:
    """An `rpc.Registry` serving the agent's procedures under their protocol names
    (`plexus.protocol`); each function's parameters are checked against its declared call."""
    import rpc
    from plexus import protocol

    served: dict[type[protocol.Call], Callable[..., Any]] = {
        protocol.Status: agent.status,
        protocol.Plan: agent.plan,
        protocol.Benchmark: agent.benchmark,
        protocol.Train: agent.train,
        protocol.JoinAsync: agent.asynchronous.join,
        protocol.LeaveAsync: agent.asynchronous.leave,
        protocol.RoundState: agent.round_state,
        protocol.SplitTrain: agent.split_train,
    }
    assert set(served) == set(protocol.CALLS), "every declared procedure is served"
    registry = rpc.Registry()
    for call, fn in served.items():
        protocol.check_signature(call, fn)
        registry.add(fn, name=call.name)
    return registry

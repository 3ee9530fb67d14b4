"""The agent's part in asynchronous tasks: `join_async` / `leave_async` and their client threads.

When an async task (SPIN / FedBuff / PORT) runs, the orchestrator gives each learner a client
index and calls `join_async(task, task_id, client)`. The agent answers at once and, in a
background thread, downloads its partition (`GET /v1/tasks/{id}/partitions/{client}`), then runs
SPIN's client (SPIN paper, alg. 1; `learner_agent.spin_client`) over it (a device-data task,
`dataset.device: true`, instead watches the agent's `--data` directory: files dropped there
are samples arriving): samples "arrive" one at
a time at rate λ = `async.arrival_rate` samples/s, pull threshold D = `async.pull_threshold`,
E = `async.epochs`, learning rate and batch size from `training`. The run ends when the task
ends on the server (404), when `leave_async(task_id)` is called, or when every sample has
arrived and been trained on. Progress of every run shows in the agent's `status()`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learner_agent.arguments import check_int, parse_task
from learner_agent.errors import BadTask

if TYPE_CHECKING:
    from learner_agent.client import OrchestratorClient
    from learner_agent.local_data import LocalSource
    from learner_agent.spin_client import SpinClient
    from plexus.spec import TaskSpec

log = logging.getLogger("learner_agent.async")
LEAVE_WAIT_S = 5.0  # how long leave_async waits for the client thread to wind down, seconds


@dataclass
class _Run:
    """One async task this agent takes part in."""

    task_id: int
    client: int
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    spin: SpinClient | None = None
    state: str = "starting"  # starting → running → ended | failed
    reason: str | None = None

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task_id": self.task_id, "client": self.client,
                               "state": self.state, "reason": self.reason}
        if self.spin is not None:
            out.update(self.spin.report.progress())
        return out


class AsyncRuns:
    """The async tasks one agent has joined, task id → run.

    `configure` is called once in each client thread before torch trains (thread settings).
    """

    def __init__(self, client: OrchestratorClient,
                 configure: Callable[[], None] = lambda: None,
                 local_data: Path | None = None) -> None:
        self.client = client
        self.local_data = local_data  # watched for device-data tasks (new files = arrivals)
        self.configure = configure
        self._runs: dict[int, _Run] = {}
        self._lock = threading.Lock()

    # -- procedures ------------------------------------------------------------------------
    def join(self, task: dict[str, Any], task_id: int, client: int) -> dict[str, Any]:
        """Start taking part in async task `task_id` as client `client`; returns at once with
        `{"task_id", "client", "joined"}` (`joined` false when already running it)."""
        spec = parse_task(task)
        check_int("task_id", task_id)
        check_int("client", client)
        if spec.async_ is None:
            raise BadTask("join_async is for asynchronous tasks (mode: async)")
        with self._lock:
            current = self._runs.get(task_id)
            if current is not None and current.thread is not None and current.thread.is_alive():
                return {"task_id": task_id, "client": current.client, "joined": False}
            run = _Run(task_id, client)
            run.thread = threading.Thread(target=self._work, args=(run, spec),
                                          name=f"async-task-{task_id}", daemon=True)
            self._runs[task_id] = run
            run.thread.start()
        return {"task_id": task_id, "client": client, "joined": True}

    def leave(self, task_id: int) -> dict[str, Any]:
        """Stop taking part in async task `task_id`; `{"left": bool}` (false: not running it).
        Waits up to `LEAVE_WAIT_S` for the client to finish the step it is in."""
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            raise BadTask(f"task_id must be an integer, got {task_id!r}")
        with self._lock:
            run = self._runs.get(task_id)
        if run is None or run.thread is None or not run.thread.is_alive():
            return {"left": False}
        run.stop.set()
        run.thread.join(LEAVE_WAIT_S)
        return {"left": True}

    def leave_all(self) -> None:
        """Tell every client thread to stop (agent shutdown); does not wait."""
        with self._lock:
            for run in self._runs.values():
                run.stop.set()

    def progress(self) -> list[dict[str, Any]]:
        """Every joined task: state, client index, pulls, pushes, samples held, last version."""
        with self._lock:
            return [run.view() for run in self._runs.values()]

    # -- the client thread -----------------------------------------------------------------
    def _work(self, run: _Run, spec: TaskSpec) -> None:
        try:
            self.configure()
            run.spin = self._client(run, spec)
            run.state = "running"
            log.info("async task %s: joined as client %s with %d samples", run.task_id,
                     run.client, len(run.spin.y))
            report = run.spin.run(run.stop)
            run.state, run.reason = "ended", report.ended
            log.info("async task %s: client %s ended after %d pushes: %s", run.task_id,
                     run.client, report.pushes, report.ended)
        except Exception as exc:  # the agent keeps serving; the failure shows in status()
            log.exception("async task %s: client %s failed", run.task_id, run.client)
            run.state, run.reason = "failed", f"{type(exc).__name__}: {exc}"

    def _client(self, run: _Run, spec: TaskSpec) -> SpinClient:
        import numpy as np

        from learner_agent.benchmarking import build_dummy
        from learner_agent.local_data import LocalSource
        from learner_agent.spin_client import SpinClient
        from plexus.shards import decode_shard

        assert spec.async_ is not None
        a = spec.async_
        source: LocalSource | None = None
        if spec.dataset.device:
            # Device data: the watched --data directory; its files so far are the first
            # samples, and every file dropped in later is new samples arriving.
            if self.local_data is None:
                raise BadTask("the task trains on device data but this agent was started "
                              "without --data DIR")
            source = LocalSource(spec.dataset, self.local_data)
            source.poll()
            x, y = source.x, source.y
        else:
            # The orchestrator client's request helper and connection pool (its TLS settings
            # and error messages); they are internal to this package, not a public API.
            data = self.client._request(
                "GET", f"/v1/tasks/{run.task_id}/partitions/{run.client}").content
            x, y, _meta = decode_shard(data)
        if x is not None and len(y):
            _warm_up(spec, x, y)
        else:
            x = np.zeros((0, *(spec.dataset.input_shape or ())), dtype=np.float32)
        return SpinClient(
            self.client._http,
            run.task_id,
            build_dummy(spec),
            x,
            y,
            rate=a.arrival_rate,
            pull_threshold=a.pull_threshold if source else min(a.pull_threshold, len(y)),
            epochs=a.epochs,
            lr=spec.training.lr,
            batch_size=spec.training.batch_size,
            optimizer=spec.training.optimizer,
            # Each client its own arrival times and shuffles, reproducible from the task seed.
            seed=spec.seed * 1000 + run.client,
            # Read per request, so a re-enrolment's new learner token is used at once.
            headers=lambda: {"Authorization": f"Bearer {self.client.token}"},
            source=source,
        )


def _warm_up(spec: TaskSpec, x: Any, y: Any) -> None:
    """One throwaway training step before the arrival clock starts: the first step of a fresh
    process loads torch's optimiser and autograd code, seconds on a busy host, which would
    otherwise land in the first round and let most of the partition "arrive" meanwhile."""
    from learner_agent.benchmarking import build_dummy
    from plexus.training import train

    train(build_dummy(spec), x[:2], y[:2], passes=1, batch_size=2, optimizer="sgd",
          lr=spec.training.lr, seed=0)

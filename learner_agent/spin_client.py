"""SPIN's client (SPIN paper, algorithm 1) against a live orchestrator's async task.

Samples of the learner's partition "arrive" one at a time by a Poisson process of rate λ
(emulating a person labelling data), or, for device data (`source`), really arrive: as files
dropped into the agent's `--data` directory. Once the learner holds at least D samples it pulls the
current model (`POST /v1/tasks/{id}/pull`), trains E epochs over everything it holds, and
pushes the result (`POST /v1/tasks/{id}/updates`, safetensors with metadata `base_version`,
`n_samples`). A sample that arrived meanwhile triggers the next pull at once. A `204` answer
to a pull (FedBuff / PORT: not picked this round) means: ask again after `retry_s`.

Between epochs the client asks `GET /v1/tasks/{id}/stop` whether the server (PORT) wants it to
stop and push what it has. A `404` (the task ended or was cancelled) or a `409` other than
`unknown_version` ends the run normally (`report.ended` says why); an update answered `409
unknown_version` (its base version is no longer held) is dropped and the client pulls again.
A `503` (the orchestrator is shutting down) or `507` (`storage_full`: its data directory
cannot take the update, which was not stored) is temporary: like a connection failure it is
retried after `retry_s`, doubling up to 10 s (the round's training is lost, the samples are
not). Any other error answer raises `OrchestratorRefused`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import numpy as np

from learner_agent.adversary import active as active_adversary
from learner_agent.errors import OrchestratorRefused
from plexus.tensors import decode_state, encode_state

log = logging.getLogger("learner_agent.work")


class Arrivals(Protocol):
    """Samples arriving on the device (`learner_agent.local_data.LocalSource`): `poll()` reads
    what is new; `x` / `y` hold every sample so far, in arrival order."""

    x: np.ndarray | None
    y: np.ndarray

    def poll(self) -> int: ...


class _Ended(Exception):
    """The task is over (404, or a 409 other than unknown_version): stop the run normally."""


# Answers that say "not now" rather than "no": shutting down (503), storage full (507).
TEMPORARY = (503, 507)


class _Unavailable(Exception):
    """A temporary refusal (TEMPORARY): back off and try the round again."""


@dataclass
class SpinClientReport:
    """What the client did: rounds pushed, versions it trained from, server answers."""

    pulls: int = 0
    pushes: int = 0
    not_picked: int = 0
    dropped: int = 0  # updates answered 409 unknown_version (base version no longer held)
    stopped_early: int = 0  # trainings cut short by the server's stop request (PORT)
    unreachable: int = 0  # rounds lost to connection failures (retried)
    held: int = 0  # samples arrived so far
    versions: list[int] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    ended: str | None = None  # why the run ended, once it has

    def progress(self) -> dict[str, Any]:
        """A JSON-ready summary (counts, last version trained from, end reason)."""
        return {
            "pulls": self.pulls,
            "pushes": self.pushes,
            "not_picked": self.not_picked,
            "dropped": self.dropped,
            "stopped_early": self.stopped_early,
            "unreachable": self.unreachable,
            "held": self.held,
            "last_version": self.versions[-1] if self.versions else None,
            "ended": self.ended,
        }


class SpinClient:
    """Run SPIN alg. 1 for one learner.

    ``model`` is a torch module of the task's architecture (its weights are replaced by every
    pulled model); ``x``, ``y`` the learner's partition in arrival order. ``rate`` is λ in
    samples/s, ``pull_threshold`` is D, ``epochs`` E, ``lr`` η, ``batch_size`` B and
    ``optimizer`` "sgd" or "adam" (a fresh optimiser every epoch).
    ``http`` is an ``httpx.Client`` whose base URL is the orchestrator; ``headers`` (e.g. the
    learner token), a mapping or a function returning one, are sent with every request.
    """

    def __init__(
        self,
        http: Any,
        task_id: int,
        model: Any,
        x: np.ndarray,
        y: np.ndarray,
        *,
        rate: float,
        pull_threshold: int,
        epochs: int = 1,
        lr: float = 0.05,
        batch_size: int = 16,
        optimizer: str = "sgd",
        seed: int = 0,
        retry_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
        source: Arrivals | None = None,
        poll_s: float = 0.2,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"arrival rate must be positive samples/s, got {rate}")
        if pull_threshold < 1:
            raise ValueError(f"pull_threshold must be at least 1 sample, got {pull_threshold}")
        self.http = http
        self.task_id = task_id
        self.model = model
        self.x = x
        self.y = y
        self.rate = rate
        self.pull_threshold = pull_threshold
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.seed = seed
        self.retry_s = retry_s
        self.clock = clock
        self._extra = headers
        # Real arrivals (device data): samples are what `source` holds, polled every poll_s;
        # without it the partition x, y is replayed by a Poisson clock (the emulation).
        self.source = source
        self.poll_s = poll_s
        rng = np.random.default_rng(seed)
        self._gaps = np.cumsum(rng.exponential(1.0 / rate, len(y)))
        self.report = SpinClientReport()

    def run(self, stop: threading.Event, max_rounds: int | None = None) -> SpinClientReport:
        """Loop until ``stop`` is set, ``max_rounds`` pushes are done, the data runs out or the
        task ends on the server (``report.ended`` says which)."""
        start = self.clock()
        trained_upto = 0
        failures = 0  # consecutive connection failures, for the back-off
        try:
            while not stop.is_set():
                elapsed = self.clock() - start
                held = self._arrived(elapsed)
                self.report.held = held
                if held >= self.pull_threshold and held > trained_upto:
                    try:
                        done = self._round(held, stop)
                    except (httpx.TransportError, _Unavailable):
                        self.report.unreachable += 1
                        failures += 1
                        stop.wait(min(10.0, self.retry_s * 2 ** min(failures, 8)))
                        continue
                    failures = 0
                    if done:
                        trained_upto = held
                        if max_rounds is not None and self.report.pushes >= max_rounds:
                            self.report.ended = f"pushed {max_rounds} updates"
                            break
                    else:
                        stop.wait(self.retry_s)
                    continue
                if self.source is not None:
                    stop.wait(self.poll_s)  # new samples come when new files do
                    continue
                if held >= len(self.y):
                    self.report.ended = "every sample has arrived and been trained on"
                    break
                # Wait for the next arrival (or for stop).
                stop.wait(max(0.0, float(self._gaps[held]) - elapsed))
        except _Ended as exc:
            self.report.ended = str(exc)
        if self.report.ended is None:
            self.report.ended = "told to stop"
        return self.report

    def _arrived(self, elapsed: float) -> int:
        """Samples held now: those the source has read so far, or the replay's arrivals."""
        if self.source is None:
            return int(np.searchsorted(self._gaps, elapsed, side="right"))
        self.source.poll()
        if self.source.x is not None:
            self.x, self.y = self.source.x, self.source.y
        return len(self.y)

    @property
    def headers(self) -> dict[str, str]:
        """Headers sent with every request (evaluated now when given as a function)."""
        extra = self._extra() if callable(self._extra) else self._extra
        return dict(extra or {})

    def _check(self, r: Any, what: str) -> None:
        """Raise `_Ended` for a task that is over, `_Unavailable` for a temporary refusal
        (503, 507), `OrchestratorRefused` for other errors."""
        if r.status_code < 400:
            return
        if r.status_code in TEMPORARY:
            log.warning("%s for task %s answered %s %s; retrying", what, self.task_id,
                        r.status_code, _code(r) or "error")
            raise _Unavailable(r.status_code)
        code, detail = "http_error", r.text[:300]
        try:
            body = r.json()
            code, detail = str(body.get("error", code)), str(body.get("detail", detail))
        except ValueError:
            pass
        if r.status_code == 404 or (r.status_code == 409 and code != "unknown_version"):
            raise _Ended(f"task {self.task_id} ended ({what} answered {r.status_code} {code}: "
                         f"{detail})")
        raise OrchestratorRefused(
            f"{what} for task {self.task_id} answered {r.status_code} {code}: {detail}",
            status=r.status_code, code=code)

    def _asked_to_stop(self) -> bool:
        r = self.http.get(f"/v1/tasks/{self.task_id}/stop", headers=self.headers)
        self._check(r, "stop query")
        return bool(r.json().get("stop", False))

    def _round(self, held: int, stop: threading.Event) -> bool:
        from plexus.training import train

        self.report.pulls += 1
        t0, early = time.monotonic(), self.report.stopped_early
        r = self.http.post(f"/v1/tasks/{self.task_id}/pull", json={"n_samples": held},
                           headers=self.headers)
        if r.status_code == 204:
            self.report.not_picked += 1
            return False
        self._check(r, "pull")
        state, meta = decode_state(r.content)
        version = int(meta["version"])
        self.model.load_state_dict(state)
        adversary = active_adversary()  # experiments only (learner_agent/adversary.py)
        y = self.y[:held]
        if adversary is not None:
            # the output layer's bias is the model's last tensor (in definition order)
            y = adversary.labels(y, int(list(self.model.state_dict().values())[-1].shape[0]))
        for epoch in range(self.epochs):
            if epoch > 0:
                if stop.is_set():
                    return False  # leaving: the half-trained model is not pushed
                if self._asked_to_stop():
                    # PORT: a client past the staleness bound stops and sends what it has.
                    self.report.stopped_early += 1
                    break
            train(
                self.model,
                self.x[:held],
                y,
                passes=1,
                batch_size=self.batch_size,
                optimizer=self.optimizer,
                lr=self.lr,
                seed=self.seed + self.report.pushes * self.epochs + epoch,
            )
        trained, n = self.model.state_dict(), held
        if adversary is not None:
            trained, n = adversary.update(trained, state), adversary.samples(held)
        body = encode_state(trained, {"base_version": version, "n_samples": n})
        log.info("uploading task %s update from version %s", self.task_id, version,
                 extra={"task_id": self.task_id, "base_version": version})
        answer = self.http.post(
            f"/v1/tasks/{self.task_id}/updates",
            content=body,
            headers={**self.headers, "content-type": "application/octet-stream"},
        )
        if answer.status_code == 409 and _code(answer) == "unknown_version":
            self.report.dropped += 1
            return True  # these samples were trained on; the next arrival pulls again
        self._check(answer, "update")
        self._pushed(answer.json(), version, n, time.monotonic() - t0,
                     self.report.stopped_early > early, len(body))
        return True

    def _pushed(self, acked: dict[str, Any], version: int, n: int, seconds: float,
                stopped_early: bool, size: int) -> None:
        """Count an accepted push and log it, with the id the orchestrator stored it under."""
        self.report.pushes += 1
        self.report.versions.append(version)
        log.info("pushed task %s update from version %s: %d samples in %.2f s (%s), upload "
                 "%.1f KiB", self.task_id, version, n, seconds,
                 "stopped early" if stopped_early else "not halted", size / 1024,
                 extra={"task_id": self.task_id, "base_version": version, "samples_trained": n,
                        "upload_bytes": size})
        self.report.answers.append(acked)
        if "update_id" in acked:
            # One line per acknowledged update: what the chaos matrix (benchmarks/chaos.py)
            # checks against the store's async_updates rows.
            log.info("acknowledged task %s update_id %s", self.task_id, acked["update_id"],
                     extra={"task_id": self.task_id, "update_id": acked["update_id"]})


def _code(r: Any) -> str:
    try:
        return str(r.json().get("error", ""))
    except ValueError:
        return ""

"""Live driver of an asynchronous (SPIN / FedBuff / PORT) task: a core, a lock, a real clock.

The aggregator core (``orchestrator.aggregation``) decides; this runner only feeds it events
with ``time.monotonic()`` times, keeps a per-learner mailbox of models the core dispatched, wakes
the core at ``next_deadline()`` from a timer thread (SPIN's π), decodes and validates uploaded
tensors, and scores each new version. The REST layer (``orchestrator.api.asynchronous``) is a thin
shell over it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from orchestrator.aggregation import (
    Aggregated,
    AggregationError,
    AsyncAggregator,
    BadUpdate,
    Decision,
    Dispatch,
    StopTraining,
)
from orchestrator.errors import BadInput, Forbidden, ServiceError
from plexus.errors import BadTensors
from plexus.tensors import decode_state, encode_state

Evaluator = Callable[[Mapping[str, torch.Tensor]], tuple[float, float]]


@dataclass
class AsyncTaskStats:
    """What a live async task has done so far."""

    pulls: int = 0
    accepted: int = 0
    rejected: int = 0
    # Refused by admission (no outstanding pull, inflated sample count), per error code.
    refused: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


class AsyncTaskRunner:
    """Serve one async task: answer pulls, accept pushes, fire timeouts.

    ``evaluate(state) -> (loss, accuracy)`` scores every new version (optional).
    ``max_updates`` ends the task once that many updates have been aggregated.
    ``clock`` returns seconds; tests may pass their own.

    Update admission (docs/security.md): a push is accepted only against the learner's
    outstanding pull (the model version it was sent and the sample count it declared), and
    its ``n_samples`` may not exceed that count; a pull may not declare more samples than the
    ``limit`` its caller knows the learner holds (its partition). Each refusal raises a
    ``ServiceError`` with a stable code, is counted in ``stats.refused`` and reported to
    ``on_refused(code)``.
    """

    def __init__(
        self,
        core: AsyncAggregator,
        *,
        evaluate: Evaluator | None = None,
        max_updates: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.core = core
        self.on_refused = on_refused
        # learner → (model version it was sent, samples it declared) of its last pull.
        self._outstanding: dict[str, tuple[int, int]] = {}
        self.evaluate = evaluate
        self.max_updates = max_updates
        self.clock = clock
        self.stats = AsyncTaskStats()
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._mailbox: dict[str, Dispatch] = {}
        self._stops: set[str] = set()
        self._updates_aggregated = 0
        self._timer: threading.Thread | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the timer thread that wakes the core at its deadlines."""
        with self._lock:
            self._handle(self.core.tick(self.clock()))
        self._timer = threading.Thread(target=self._run_timer, name="async-task-timer", daemon=True)
        self._timer.start()

    def close(self) -> None:
        """Stop the timer thread."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._timer is not None:
            self._timer.join(timeout=5)
        self.core.handler.close()

    def _run_timer(self) -> None:
        with self._wake:
            while not self._closed:
                deadline = self.core.next_deadline()
                now = self.clock()
                if deadline is not None and now >= deadline:
                    self._handle(self.core.tick(now))
                    continue
                # Wait until the deadline or until an event changes it (notify in _handle).
                self._wake.wait(None if deadline is None else max(0.0, deadline - now))

    # -- events ------------------------------------------------------------------------------

    def pull(self, learner: str, n_samples: int, limit: int | None = None
             ) -> tuple[int, bytes] | None:
        """A learner holding ``n_samples`` samples (at most ``limit``) asks for work.

        Returns ``(version, safetensors bytes)`` of the model to train, or ``None`` when the
        server has not picked this learner (FedBuff / PORT): pull again later.
        """
        if n_samples < 1:
            raise BadUpdate(f"n_samples must be at least 1, got {n_samples}")
        with self._wake:
            if limit is not None and n_samples > limit:
                raise self._refuse(BadInput(
                    f"pull from {learner} declares {n_samples} samples but its partition of "
                    f"this task holds {limit}", code="n_samples_over_partition"))
            self.stats.pulls += 1
            if learner not in self._mailbox:
                self._handle(self.core.pull(self.clock(), learner, n_samples))
            d = self._mailbox.pop(learner, None)
            if d is None:
                return None
            self._stops.discard(learner)
            self._outstanding[learner] = (d.version, n_samples)
            return d.version, encode_state(d.state, {"version": d.version})

    def _refuse(self, exc: ServiceError) -> ServiceError:
        """Count a refusal (lock held) and hand the error back for the caller to raise."""
        self.stats.refused[exc.code] = self.stats.refused.get(exc.code, 0) + 1
        if self.on_refused is not None:
            self.on_refused(exc.code)
        return exc

    def _admit(self, learner: str, base_version: int, n_samples: int) -> None:
        """Refuse an update that answers no outstanding pull or claims too many samples."""
        sent = self._outstanding.get(learner)
        if sent is None or sent[0] != base_version:
            raise self._refuse(Forbidden(
                f"update from {learner} answers no pull: it was "
                + ("sent no model of this task" if sent is None else
                   f"sent version {sent[0]}, not {base_version}")
                + "; pull first and push the model trained from it",
                code="no_outstanding_pull"))
        if n_samples > sent[1]:
            raise self._refuse(BadInput(
                f"update from {learner} claims {n_samples} samples but its pull declared "
                f"{sent[1]}", code="n_samples_too_large"))
        del self._outstanding[learner]

    def should_stop(self, learner: str) -> bool:
        """Whether the server asked ``learner`` to stop training and push (PORT)."""
        with self._lock:
            return learner in self._stops

    def push(self, learner: str, body: bytes) -> dict[str, Any]:
        """Accept an uploaded model: safetensors with metadata ``base_version``, ``n_samples``.

        Raises ``BadUpdate`` / ``UnknownVersion`` (both ``AggregationError``) for anything
        malformed; such an update is counted in ``stats.rejected`` and never aggregated.
        """
        with self._wake:
            try:
                state, meta = decode_state(body, reference=self.core.model)
                base_version = _int_meta(meta, "base_version")
                n_samples = _int_meta(meta, "n_samples")
            except (BadTensors, BadUpdate) as exc:
                self.stats.rejected += 1
                raise BadUpdate(f"update from {learner} rejected: {exc}") from None
            self._admit(learner, base_version, n_samples)
            try:
                decisions = self.core.push(self.clock(), learner, state, base_version, n_samples)
            except AggregationError:
                self.stats.rejected += 1
                raise
            self.stats.accepted += 1
            self._handle(decisions)
            return {
                "accepted": True,
                "version": self.core.version,
                "aggregated": any(isinstance(d, Aggregated) for d in decisions),
            }

    def status(self) -> dict[str, Any]:
        """Version, counters and the accuracy history of the task."""
        with self._lock:
            return {
                "version": self.core.version,
                "queued": len(self.core.queue),
                "pulls": self.stats.pulls,
                "accepted": self.stats.accepted,
                "rejected": self.stats.rejected,
                "refused": dict(self.stats.refused),
                "finished": self.finished.is_set(),
                "history": list(self.stats.history),
                # Staleness handler's own record (inversion: cost per update), or None.
                "staleness_handler": self.core.handler.summary(),
            }

    # -- decisions (called with the lock held) ------------------------------------------------

    def _handle(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Dispatch):
                self._mailbox[d.client] = d
            elif isinstance(d, StopTraining):
                self._stops.add(d.client)
            elif isinstance(d, Aggregated):
                self._updates_aggregated += len(d.clients)
                entry: dict[str, Any] = {
                    "version": d.version,
                    "trigger": d.trigger,
                    "clients": list(d.clients),
                    "staleness": list(d.staleness),
                }
                if self.evaluate is not None:
                    loss, acc = self.evaluate(self.core.model)
                    entry.update(loss=loss, accuracy=acc)
                self.stats.history.append(entry)
                if self.max_updates is not None and self._updates_aggregated >= self.max_updates:
                    self.finished.set()
        self._wake.notify_all()


def _int_meta(meta: Mapping[str, str], key: str) -> int:
    try:
        return int(meta[key])
    except KeyError:
        raise BadUpdate(f"update metadata lacks {key!r}") from None
    except ValueError:
        raise BadUpdate(f"update metadata {key!r} is not an integer: {meta[key]!r}") from None

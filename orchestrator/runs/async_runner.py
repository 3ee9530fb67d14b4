"""Live driver of an asynchronous (SPIN / FedBuff / PORT) task: a core, a lock, a real clock.

The aggregator core (``orchestrator.aggregation``) decides; this runner only feeds it events
with ``time.monotonic()`` times, keeps a per-learner mailbox of models the core dispatched, wakes
the core at ``next_deadline()`` from a timer thread (SPIN's π), decodes and validates uploaded
tensors, and scores each new version. The REST layer (``orchestrator.api.asynchronous``) is a thin
shell over it.

Durability (``journal``, docs/orchestrator.md): with a journal, every update is kept by
``journal.update`` (fsynced file + committed row) before ``push`` answers "accepted"; every
aggregation is committed by ``journal.aggregated`` (model file, version row, the ids of the
updates it consumed and the state to resume from, in one transaction) before the lock is
released, so no pull can be sent a version that a crash could take back; and the state after
every other event is saved by ``journal.save``. :meth:`snapshot` / :meth:`restore` carry that
state (times as wall-clock seconds) across a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from orchestrator.aggregation import (
    Aggregated,
    AggregationError,
    AsyncAggregator,
    BadUpdate,
    Decision,
    Dispatch,
    StopTraining,
    Update,
)
from orchestrator.errors import BadInput, Conflict, Forbidden, ServiceError, StorageFull
from plexus.errors import BadTensors
from plexus.tensors import decode_state, encode_state

Evaluator = Callable[[Mapping[str, torch.Tensor]], tuple[float, float]]


class AsyncJournal(Protocol):
    """Where a runner makes its events durable (``orchestrator.runs.asynchronous``)."""

    def update(self, learner: str, body: bytes, base_version: int, n_samples: int) -> int:
        """Keep one accepted update on disk; return its id."""

    def aggregated(self, entry: dict[str, Any], state: Mapping[str, torch.Tensor],
                   update_ids: list[int], snapshot: dict[str, Any]) -> None:
        """Commit one aggregation (``entry``: version, trigger, clients, loss, ...)."""

    def save(self, snapshot: dict[str, Any]) -> None:
        """Save the state to resume from."""


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
        journal: AsyncJournal | None = None,
    ) -> None:
        self.core = core
        self.on_refused = on_refused
        self.journal = journal
        # learner → (model version it was sent, samples it declared, its partition's size or
        # None) of its last pull.
        self._outstanding: dict[str, tuple[int, int, int | None]] = {}
        # Learners whose last accepted update trained on their whole partition.
        self.exhausted: set[str] = set()
        self.end_reason: str | None = None
        # Set when the journal failed to record an event: memory and disk may disagree, so
        # the task ends (failed, with this reason) and a restart resumes from the disk.
        self.failure: str | None = None
        # The failure was a full disk (StorageFull): the watcher resumes the task from the store
        # once space returns instead of failing it.
        self.storage_full = False
        self.evaluate = evaluate
        self.max_updates = max_updates
        self.clock = clock
        self.stats = AsyncTaskStats()
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._mailbox: dict[str, Dispatch] = {}
        self._seen: dict[str, float] = {}  # learner → when it last pulled or pushed (clock)
        self._stops: set[str] = set()
        self._updates_aggregated = 0
        self._timer: threading.Thread | None = None
        self._closed = False
        self._prev_aggregation = core.last_aggregation

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the timer thread that wakes the core at its deadlines."""
        with self._lock:
            self._handle(self.core.tick(self.clock()))
        self._timer = threading.Thread(target=self._run_timer, name="async-task-timer", daemon=True)
        self._timer.start()

    def tick(self) -> None:
        """Act on the core's timers now (the timer thread does this at each deadline)."""
        with self._wake:
            self._handle(self.core.tick(self.clock()))

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
                    try:
                        self._handle(self.core.tick(now))
                    except Exception:  # recorded in self.failure; the watcher ends the task
                        return
                    continue
                # Wait until the deadline or until an event changes it (notify in _handle).
                self._wake.wait(None if deadline is None else max(0.0, deadline - now))

    # -- durable state -----------------------------------------------------------------------

    def _to_wall(self, t: float | None) -> float | None:
        return None if t is None else time.time() - (self.clock() - t)

    def _from_wall(self, w: float | None) -> float | None:
        return None if w is None else self.clock() - (time.time() - w)

    def snapshot(self) -> dict[str, Any]:
        """The state to resume from (call with the lock held, or before ``start``)."""
        core = self.core.snapshot()
        core["times"] = {k: self._to_wall(v) for k, v in core["times"].items()}
        return {
            "core": core,
            "outstanding": {k: list(v) for k, v in self._outstanding.items()},
            "mailbox": {c: d.version for c, d in self._mailbox.items()},
            "stops": sorted(self._stops),
            "exhausted": sorted(self.exhausted),
            "updates_aggregated": self._updates_aggregated,
            "stats": {"pulls": self.stats.pulls, "accepted": self.stats.accepted,
                      "rejected": self.stats.rejected, "refused": dict(self.stats.refused)},
        }

    def restore(self, snap: dict[str, Any], models: Mapping[int, Mapping[str, torch.Tensor]],
                queue: list[Update]) -> None:
        """Take back a :meth:`snapshot` with the model versions it needs (the current one and
        every base version of the buffer, outstanding pulls and undelivered dispatches) and
        the buffer of accepted updates not yet merged. Call before :meth:`start`."""
        core = dict(snap["core"])
        core["times"] = {k: self._from_wall(v) for k, v in core["times"].items()}
        self.core.restore(core, models, queue)
        self._prev_aggregation = self.core.last_aggregation
        self._outstanding = {k: (int(v[0]), int(v[1]), None if v[2] is None else int(v[2]))
                             for k, v in snap.get("outstanding", {}).items()}
        self._mailbox = {c: Dispatch(self.clock(), c, int(v), self.core.base_state(int(v)))
                         for c, v in snap.get("mailbox", {}).items()}
        self._stops = set(snap.get("stops", []))
        self.exhausted = set(snap.get("exhausted", []))
        self._updates_aggregated = int(snap.get("updates_aggregated", 0))
        st = snap.get("stats", {})
        self.stats.pulls = int(st.get("pulls", 0))
        self.stats.accepted = int(st.get("accepted", 0))
        self.stats.rejected = int(st.get("rejected", 0))
        self.stats.refused = {str(k): int(v) for k, v in st.get("refused", {}).items()}
        if self.max_updates is not None and self._updates_aggregated >= self.max_updates:
            self.finished.set()

    def finish(self, reason: str) -> None:
        """End the task now (no further progress is possible): merge what the buffer holds,
        so every accepted update is applied, and set ``finished`` with ``end_reason``."""
        with self._wake:
            if self.finished.is_set():
                return
            self._handle(self.core.flush(self.clock()))
            self.end_reason = reason
            self.finished.set()

    def release_gone(self, alive: Iterable[str], quiet_s: float = 0.0) -> list[str]:
        """Free what learners not in ``alive`` that have not pulled or pushed for ``quiet_s``
        seconds hold in the aggregator (a FedBuff / PORT training slot, a model waiting for
        pickup), so the task goes on without them; returns those released. A released
        learner's pull stays known here, so the update it pushes once it is back is still
        admitted; its next pull asks for work again."""
        up = set(alive)
        with self._wake:
            now = self.clock()
            return self._release([c for c in list(self.core.outstanding) if c not in up
                                  and now - self._seen.get(c, float("-inf")) > quiet_s])

    def release(self, learners: Iterable[str]) -> list[str]:
        """Free what each of ``learners`` holds in the aggregator (a training slot, a model
        waiting for pickup); returns those that held something. The driver calls it for a
        learner declared gone (``release_gone``) and for one whose agent enrolled again while
        the task ran (a restarted agent lost what it was training). As with ``release_gone``,
        its pull stays known, so an update it still pushes is admitted."""
        with self._wake:
            return self._release(learners)

    def _release(self, learners: Iterable[str]) -> list[str]:
        """``release`` with the lock held."""
        if self.finished.is_set():
            return []
        now = self.clock()
        held = [c for c in dict.fromkeys(learners) if c in self.core.outstanding]
        for learner in held:
            self._mailbox.pop(learner, None)
            self._handle(self.core.release(now, learner))
        return held

    def stalled(self, also: Iterable[str] = ()) -> bool:
        """Whether every learner that has asked for work (and each of ``also``, learners the
        driver knows will) has trained on its whole partition, and nothing is in flight: no
        pull outstanding, no model waiting for pickup, no selection pending."""
        with self._lock:
            learners = set(self.core.clients) | set(also)
            return (bool(learners) and learners <= self.exhausted and not self._outstanding
                    and not self._mailbox and not self.core.outstanding)

    # -- events ------------------------------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self.failure is not None:
            raise Conflict(f"this asynchronous task has failed ({self.failure}); the {what} "
                           "is not taken", code="task_failed")
        if self.finished.is_set():
            why = self.end_reason or "its max_updates were aggregated"
            raise Conflict(f"this asynchronous task has ended ({why}); the {what} is not "
                           "taken", code="task_finished")

    def pull(self, learner: str, n_samples: int, limit: int | None = None
             ) -> tuple[int, bytes] | None:
        """A learner holding ``n_samples`` samples (at most ``limit``) asks for work.

        Returns ``(version, safetensors bytes)`` of the model to train, or ``None`` when the
        server has not picked this learner (FedBuff / PORT): pull again later.
        """
        if n_samples < 1:
            raise BadUpdate(f"n_samples must be at least 1, got {n_samples}")
        with self._wake:
            self._check_open("pull")
            if limit is not None and n_samples > limit:
                raise self._refuse(BadInput(
                    f"pull from {learner} declares {n_samples} samples but its partition of "
                    f"this task holds {limit}", code="n_samples_over_partition"))
            self.stats.pulls += 1
            self._seen[learner] = self.clock()
            self.exhausted.discard(learner)  # a pull says it holds data it has not used
            if learner not in self._mailbox:
                self._handle(self.core.pull(self.clock(), learner, n_samples), save=False)
            d = self._mailbox.pop(learner, None)
            if d is None:
                self._save()
                return None
            self._stops.discard(learner)
            self._outstanding[learner] = (d.version, n_samples, limit)
            self._save()
            return d.version, encode_state(d.state, {"version": d.version})

    def _refuse(self, exc: ServiceError) -> ServiceError:
        """Count a refusal (lock held) and hand the error back for the caller to raise."""
        self.stats.refused[exc.code] = self.stats.refused.get(exc.code, 0) + 1
        if self.on_refused is not None:
            self.on_refused(exc.code)
        return exc

    def _admit(self, learner: str, base_version: int, n_samples: int
               ) -> tuple[int, int, int | None]:
        """Refuse an update that answers no outstanding pull or claims too many samples;
        return the pull it answers."""
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
        return sent

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
            self._check_open("update")
            self._seen[learner] = self.clock()
            try:
                state, meta = decode_state(body, reference=self.core.model)
                base_version = _int_meta(meta, "base_version")
                n_samples = _int_meta(meta, "n_samples")
            except (BadTensors, BadUpdate) as exc:
                self.stats.rejected += 1
                raise BadUpdate(f"update from {learner} rejected: {exc}") from None
            sent = self._admit(learner, base_version, n_samples)
            try:
                self.core.check_update(state, base_version, n_samples)
            except AggregationError:
                self.core.rejected += 1
                self.stats.rejected += 1
                raise
            # On disk (fsynced file + committed row) before the answer can leave.
            uid = (-1 if self.journal is None else
                   self.journal.update(learner, body, base_version, n_samples))
            decisions = self.core.push(self.clock(), learner, state, base_version, n_samples,
                                       uid=uid)
            self.stats.accepted += 1
            # Exhausted by what the update trained on (an edge aggregator's pull declares its
            # whole partition; its partial may hold less: it says `exhausted` = "true" once
            # every child has trained on its whole stride, docs/hierarchy.md). A learner that
            # says so falsely only lets the task end sooner once every other one has too.
            if sent[2] is not None and (n_samples >= sent[2]
                                        or meta.get("exhausted") == "true"):
                self.exhausted.add(learner)
            self._handle(decisions)
            answer: dict[str, Any] = {
                "accepted": True,
                "version": self.core.version,
                "aggregated": any(isinstance(d, Aggregated) for d in decisions),
            }
            if uid >= 0:
                answer["update_id"] = uid
            return answer

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
                "end_reason": self.end_reason,
                "history": list(self.stats.history),
                # Staleness handler's own record (inversion: cost per update), or None.
                "staleness_handler": self.core.handler.summary(),
            }

    # -- decisions (called with the lock held) ------------------------------------------------

    def _save(self) -> None:
        if self.journal is not None:
            self.journal.save(self.snapshot())

    def _entry(self, d: Aggregated) -> dict[str, Any]:
        """The history entry (and event) of one aggregation, evaluated when it can be."""
        entry: dict[str, Any] = {
            "version": d.version,
            "trigger": d.trigger,
            "clients": list(d.clients),
            "staleness": list(d.staleness),
            "round_time_s": max(0.0, d.time - self._prev_aggregation),
        }
        handled = self.core.handler.summary()
        if handled is not None:  # the handler's running totals, kept with the event
            entry["staleness_handler"] = {
                k: handled[k] for k in ("inverted", "late", "dropped", "seconds", "iterations")
                if k in handled}
        self._prev_aggregation = d.time
        if self.evaluate is not None:
            loss, acc = self.evaluate(self.core.model)
            entry.update(loss=loss, accuracy=acc)
        return entry

    def _handle(self, decisions: list[Decision], *, save: bool = True) -> None:
        merged: list[tuple[Aggregated, dict[str, Any]]] = []
        reached = False  # max_updates: the task ends once this aggregation is recorded
        for d in decisions:
            if isinstance(d, Dispatch):
                self._mailbox[d.client] = d
            elif isinstance(d, StopTraining):
                self._stops.add(d.client)
            elif isinstance(d, Aggregated):
                self._updates_aggregated += len(d.clients)
                entry = self._entry(d)
                self.stats.history.append(entry)
                merged.append((d, entry))
                if self.max_updates is not None and self._updates_aggregated >= self.max_updates:
                    reached = True
        try:
            if self.journal is not None and merged:  # in practice one aggregation per event
                snap = self.snapshot()
                for d, entry in merged:
                    self.journal.aggregated(entry, self.core.model, list(d.update_ids), snap)
            elif save:
                self._save()
            # Only now: the driver's watcher marks the task finished as soon as this is set,
            # and a task no longer running refuses to record the aggregation that ended it.
            if reached:
                self.finished.set()
        except Exception as exc:
            self.failure = f"recording the task's progress failed: {type(exc).__name__}: {exc}"
            self.storage_full = isinstance(exc, StorageFull)
            self.finished.set()
            raise
        finally:
            self._wake.notify_all()


def _int_meta(meta: Mapping[str, str], key: str) -> int:
    try:
        return int(meta[key])
    except KeyError:
        raise BadUpdate(f"update metadata lacks {key!r}") from None
    except ValueError:
        raise BadUpdate(f"update metadata {key!r} is not an integer: {meta[key]!r}") from None

"""Asynchronous tasks (SPIN / FedBuff / PORT) through an edge aggregator: the buffer on disk.

Upstream the edge is ONE client of the async task (one client index, one partition, one
outstanding pull at a time: the orchestrator's admission, docs/security.md). Downstream it
serves its children the orchestrator's pull / updates / stop / partitions routes:

* **Partition**: the edge's own partition (upstream client c) is dealt to its k children in
  strides (child j holds rows j, j+k, ...), so the subtree holds exactly the data one flat client
  holds, and no sum of children's samples can exceed what the upstream allows the edge.
* **Cohort**: the first child pull opens a cohort: the edge pulls upstream once (declaring the
  whole partition) and every child pull until the cohort is flushed is answered with that same
  version v. A child that already pushed into the open cohort is answered 204 (pull again
  later), so a cohort holds at most one update per child.
* **Push**: a child's update is checked as the orchestrator checks one (safetensors; names,
  shapes, dtypes and finite values against v; integer `base_version` / `n_samples` metadata;
  it must answer the child's own pull of v and claim no more samples than that pull declared)
  and written to disk (fsync) BEFORE it is answered `accepted`.
* **Flush**: once every member of the cohort has pushed, or `flush_s` seconds after the first
  push, the buffer becomes one partial aggregate (sample-weighted FedAvg, `combine`) pushed up
  with `base_version` v and `n_samples` = the summed samples, so the upstream's staleness
  handling sees the true staleness (its version − v). The partial is written to disk before it
  leaves; after a crash it is pushed again. A member that pushes after the flush is answered
  `409 unknown_version` (as the orchestrator answers an update of a version it no longer
  takes): its client drops that training and pulls again.

This module is the state and its checks, synchronous (the edge calls it from worker threads
under its per-task lock); `edge.py` does the HTTP.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.store import write_atomic

MAX_CHILD_UPDATE_BYTES = 256 * 1024 * 1024  # the orchestrator's own limit on an update


class Refused(Exception):
    """A child's request refused: ``status`` and ``code`` are the HTTP answer (typed 4xx)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass
class Cohort:
    """Children training from the same upstream version: who pulled (samples declared), who
    pushed (samples claimed), since when (wall clock)."""

    version: int
    opened: float
    members: dict[str, int] = field(default_factory=dict)
    buffered: dict[str, int] = field(default_factory=dict)
    first_push: float | None = None
    sealed: bool = False  # the partial is on disk and on its way up


@dataclass
class TierTask:
    """One async task the edge takes part in: the task spec, its client index upstream, the
    children's slots (child name → index j of k) and the open cohort."""

    task: dict[str, Any]
    task_id: int
    client: int
    slots: dict[str, int]
    cohort: Cohort | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # child → samples of its slice
    trained: dict[str, int] = field(default_factory=dict)  # child → samples of its last update
    delivered: int = 0  # partials the upstream accepted
    dropped: int = 0  # cohorts the upstream refused (e.g. their version too stale)


def slice_rows(n: int, j: int, k: int) -> list[int]:
    """Rows of a partition of ``n`` samples that child ``j`` of ``k`` holds (a stride)."""
    return list(range(j, n, k))


class AsyncTier:
    """The edge's async tasks on disk: ``DIR/TASK/state.json``, ``base.safetensors`` (the
    cohort's model), ``buffer/CHILD.safetensors`` (accepted child updates, as pushed) and
    ``partial.safetensors`` (the partial on its way up)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.tasks: dict[int, TierTask] = {}
        self._base: dict[int, dict[str, Any]] = {}  # task → decoded cohort model (reference)
        if root.exists():
            for state in sorted(root.glob("*/state.json")):
                doc = json.loads(state.read_text())
                cohort = doc.pop("cohort", None)
                t = TierTask(**doc, cohort=Cohort(**cohort) if cohort else None)
                self.tasks[t.task_id] = t

    # -- persistence -------------------------------------------------------------------------

    def _dir(self, task_id: int) -> Path:
        return self.root / str(task_id)

    def save(self, t: TierTask) -> None:
        """Write the task's state atomically (fsync'd) — before an answer depends on it."""
        doc = asdict(t)
        write_atomic(self._dir(t.task_id) / "state.json", json.dumps(doc).encode())

    def join(self, task: dict[str, Any], task_id: int, client: int,
             children: list[str]) -> TierTask:
        """Take part in ``task_id`` as upstream client ``client`` with these children (their
        slots in name order); a repeated join keeps the slots and any open cohort."""
        with self.lock:
            t = self.tasks.get(task_id)
            if t is None or t.client != client:
                t = TierTask(task, task_id, client, {n: j for j, n in enumerate(sorted(children))})
                self.tasks[task_id] = t
                self.save(t)
            return t

    def leave(self, task_id: int) -> TierTask | None:
        """Forget ``task_id`` (it ended upstream) and its files."""
        with self.lock:
            t = self.tasks.pop(task_id, None)
            self._base.pop(task_id, None)
            shutil.rmtree(self._dir(task_id), ignore_errors=True)
            return t

    def base(self, task_id: int) -> dict[str, Any] | None:
        """The open cohort's model, decoded (the reference every child update must match)."""
        from plexus.tensors import decode_state

        t = self.tasks.get(task_id)
        if t is None or t.cohort is None:
            return None
        if task_id not in self._base:
            self._base[task_id] = decode_state(self.base_bytes(task_id))[0]
        return self._base[task_id]

    def base_bytes(self, task_id: int) -> bytes:
        return (self._dir(task_id) / "base.safetensors").read_bytes()

    def open_cohort(self, t: TierTask, version: int, model: bytes) -> Cohort:
        """Start a cohort on upstream version ``version`` (its model on disk first)."""
        with self.lock:
            write_atomic(self._dir(t.task_id) / "base.safetensors", model)
            self._base.pop(t.task_id, None)
            t.cohort = Cohort(version, time.time())
            self.save(t)
            return t.cohort

    # -- a child's pull and push ------------------------------------------------------------

    def slot(self, task_id: int, name: str) -> TierTask:
        """The task ``name`` is a client of, or the typed refusal."""
        t = self.tasks.get(task_id)
        if t is None:
            raise Refused(404, "not_found", f"task {task_id} is not a running asynchronous "
                          "task of this aggregator")
        if name not in t.slots:
            raise Refused(403, "not_a_client", f"learner {name} is not a client of "
                          f"asynchronous task {task_id} here")
        return t

    def check_pull(self, t: TierTask, name: str, n_samples: Any) -> None:
        """Refuse a pull that declares no samples or more than the child's slice holds."""
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise Refused(422, "bad_request", "n_samples must be a positive integer")
        size = t.sizes.get(name)
        if size is not None and n_samples > size:
            raise Refused(422, "n_samples_over_partition", f"pull from {name} declares "
                          f"{n_samples} samples but its partition holds {size}")

    def member(self, t: TierTask, name: str, n_samples: int) -> None:
        """Note ``name``'s pull of the open cohort (on disk before the model is answered)."""
        with self.lock:
            assert t.cohort is not None
            t.cohort.members[name] = n_samples
            self.save(t)

    def accept(self, task_id: int, name: str, body: bytes) -> dict[str, Any]:
        """Check a child's update as the orchestrator would and keep it on disk; the answer."""
        from plexus.errors import BadTensors
        from plexus.tensors import decode_state

        with self.lock:
            t = self.slot(task_id, name)
            c = t.cohort
            if len(body) > MAX_CHILD_UPDATE_BYTES:
                raise Refused(413, "too_large", f"update of {len(body)} bytes exceeds the limit")
            try:
                meta = decode_state(body)[1]
                base_version = _int_meta(meta, "base_version")
                n_samples = _int_meta(meta, "n_samples")
            except BadTensors as exc:
                raise Refused(422, "bad_update", f"update from {name} rejected: {exc}") from None
            if c is None or c.sealed or base_version != c.version:
                # Its cohort went up already (or it never was one): as the orchestrator answers
                # an update of a version it no longer takes; the client pulls again.
                raise Refused(409, "unknown_version", f"update from {name} trained from version "
                              f"{base_version}, which this aggregator no longer takes; pull the "
                              "current model and train again")
            if name not in c.members:
                raise Refused(403, "no_outstanding_pull", f"update from {name} answers no pull "
                              "of this aggregator; pull first and push the model trained from it")
            if name in c.buffered:
                raise Refused(403, "no_outstanding_pull", f"{name} already pushed its update "
                              f"of version {c.version}; pull again")
            if n_samples < 1:
                raise Refused(422, "bad_update", f"n_samples must be positive, got {n_samples}")
            if n_samples > c.members[name]:
                raise Refused(422, "n_samples_too_large", f"update from {name} claims "
                              f"{n_samples} samples but its pull declared {c.members[name]}")
            try:
                decode_state(body, reference=self.base(task_id))
            except BadTensors as exc:
                raise Refused(422, "bad_update", f"update from {name} rejected: {exc}") from None
            # On disk (fsync'd file, then the state that names it) before it is answered.
            write_atomic(self._dir(task_id) / "buffer" / f"{name}.safetensors", body)
            c.buffered[name] = n_samples
            t.trained[name] = n_samples
            c.first_push = c.first_push or time.time()
            self.save(t)
            return {"accepted": True, "version": c.version, "aggregated": False}

    # -- flushing ------------------------------------------------------------------------------

    def due(self, t: TierTask, flush_s: float, now: float | None = None) -> bool:
        """Whether the cohort should go up now: every member pushed, or ``flush_s`` seconds
        since its first push (a sealed cohort is always due: its partial is still to send)."""
        c = t.cohort
        if c is None or not c.buffered:
            return False
        now = time.time() if now is None else now
        return (c.sealed or set(c.members) <= set(c.buffered)
                or (c.first_push is not None and now - c.first_push >= flush_s))

    def seal(self, t: TierTask, alive: set[str] | None = None) -> tuple[bytes, int, int]:
        """The partial aggregate of the buffer as an update body (written to disk first):
        ``(body, base_version, n_samples)``. Idempotent once sealed. Its metadata says
        ``exhausted`` when every child that is alive (``alive``) or has trained has trained on
        its whole stride (the subtree has used its whole partition, as a flat client whose
        update trained on all of it)."""
        with self.lock:
            return self._seal(t, alive or set())

    @staticmethod
    def exhausted(t: TierTask, alive: set[str]) -> bool:
        """Whether every child alive or having trained has trained on its whole stride."""
        counted = [n for n in t.slots if n in alive or n in t.trained]
        return bool(counted) and all(
            n in t.sizes and t.trained.get(n, 0) >= t.sizes[n] for n in counted)

    def _seal(self, t: TierTask, alive: set[str]) -> tuple[bytes, int, int]:
        from orchestrator.hierarchy.combine import combine
        from plexus.tensors import decode_state, encode_state

        c = t.cohort
        assert c is not None and c.buffered
        path = self._dir(t.task_id) / "partial.safetensors"
        if c.sealed and path.exists():
            body = path.read_bytes()
            meta = decode_state(body)[1]
            return body, int(meta["base_version"]), int(meta["n_samples"])
        where = self._dir(t.task_id) / "buffer"
        updates = {n: (decode_state((where / f"{n}.safetensors").read_bytes())[0], k)
                   for n, k in sorted(c.buffered.items())}
        part = combine(updates)
        assert part.state is not None  # every buffered update claims ≥ 1 sample
        up: dict[str, object] = {"base_version": c.version, "n_samples": part.weight}
        if self.exhausted(t, alive):
            up["exhausted"] = "true"
        body = encode_state(part.state, up)
        write_atomic(path, body)
        c.sealed = True
        self.save(t)
        return body, c.version, part.weight

    def close_cohort(self, t: TierTask, delivered: bool) -> None:
        """The partial went up (or the upstream refused it for good): clear the cohort."""
        d = self._dir(t.task_id)
        with self.lock:
            t.cohort = None
            if delivered:
                t.delivered += 1
            else:
                t.dropped += 1
            self.save(t)  # first: a crash now leaves files no state names, never the reverse
            self._base.pop(t.task_id, None)
            shutil.rmtree(d / "buffer", ignore_errors=True)
            (d / "partial.safetensors").unlink(missing_ok=True)


def _int_meta(meta: dict[str, str], key: str) -> int:
    from plexus.errors import BadTensors

    try:
        return int(meta[key])
    except KeyError:
        raise BadTensors(f"update metadata lacks {key!r}") from None
    except ValueError:
        raise BadTensors(f"update metadata {key!r} is not an integer: {meta[key]!r}") from None

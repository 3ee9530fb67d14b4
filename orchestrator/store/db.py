"""The database: learners, tasks, rounds, jobs and model versions in SQL.

SQLAlchemy 2 over a SQLite file under the data directory by default, or any URL given (e.g.
PostgreSQL); the code path is the same. Model versions, shards, test splits and uploaded
updates are safetensors files under `<data_dir>/tasks/<id>/`, each written atomically (temp
file, fsync, rename), and a round row is committed only after its model file is on disk, so a
`kill -9` at any instant leaves the last committed round resumable.

Learners' liveness (docs/scale.md): a heartbeat is not acknowledged data, so `heartbeat` keeps
`last_seen` and the facts in memory and a flusher thread writes every pending heartbeat in one
transaction every `HEARTBEAT_FLUSH_S` (and `close` writes what is left); `learners` and
`learner_by_token` show the pending values at once. An enrolment is acknowledged (the learner
gets a token), so `enroll` commits before it returns; enrolments arriving together share one
transaction (group commit: one fsync for many).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from orchestrator.errors import Conflict, NotFound, StorageFull, StoreError
from orchestrator.store.files import Layout, sweep_temp_files, write_atomic

log = logging.getLogger(__name__)

TASK_STATES = ("pending", "running", "finished", "failed", "cancelled")
# Seconds between two writes of the pending heartbeats (one transaction each time).
HEARTBEAT_FLUSH_S = 1.0
# `learner_view`: seconds between two cheap syncs with the database (ids, tokens, last_seen:
# what other processes of the same database changed) and between two full reloads (facts).
VIEW_SYNC_S = 5.0
VIEW_RELOAD_S = 60.0
ACTIVE_STATES = ("pending", "running")


class Base(DeclarativeBase):
    """Declarative base of the orchestrator's tables."""


class LearnerRow(Base):
    __tablename__ = "learners"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    # Kept in clear: the orchestrator presents it when it calls the agent's RPC worker.
    token: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    endpoint: Mapped[str | None] = mapped_column(String(512), nullable=True)
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enrolled_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)


class TaskRow(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    rounds_done: Mapped[int] = mapped_column(Integer, default=0)
    model_version: Mapped[int] = mapped_column(Integer, default=0)
    num_shards: Mapped[int] = mapped_column(Integer, default=0)
    shard_samples: Mapped[int] = mapped_column(Integer, default=0)
    shard_bytes: Mapped[int] = mapped_column(Integer, default=0)
    model_bytes: Mapped[int] = mapped_column(Integer, default=0)
    # False while the task's files are being prepared: such a row is invisible to the API and
    # the driver, and removed at start-up if the process died before it became ready.
    ready: Mapped[bool] = mapped_column(Boolean, default=True)


class RoundRow(Base):
    __tablename__ = "rounds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    allocation: Mapped[dict[str, int]] = mapped_column(JSON)  # learner id -> shards
    shards: Mapped[dict[str, list[int]]] = mapped_column(JSON)  # learner id -> shard ids
    samples: Mapped[dict[str, int]] = mapped_column(JSON)  # learner id -> samples trained
    left_out: Mapped[dict[str, str]] = mapped_column(JSON)  # learner id -> why
    plan_s: Mapped[float] = mapped_column(Float)  # seconds spent asking learners
    round_time_s: Mapped[float] = mapped_column(Float)  # GUC time, seconds
    truancy: Mapped[float] = mapped_column(Float)  # (GUC time - D) / D, thesis 3.4
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_version: Mapped[int] = mapped_column(Integer)
    # learner id -> {"actual_s": dispatch to answer, "predicted_s": eq. 3.4 where b_k, c_k known,
    # "halt_s": the deadline_s the learner was sent}
    times: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=dict)


class JobRow(Base):
    """A multi-task job: several synchronous tasks allocated together (docs/orchestrator.md)."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256))
    options: Mapped[dict[str, Any]] = mapped_column(JSON)  # allocator, budget, prices, ...
    task_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    rounds_done: Mapped[int] = mapped_column(Integer, default=0)
    # What the job learned before its first round (state distributions, per-state benchmarks).
    setup: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ready: Mapped[bool] = mapped_column(Boolean, default=False)


class JobRoundRow(Base):
    """One task in one global update cycle of a job: the record the thesis 4.3 metrics use."""

    __tablename__ = "job_rounds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[int] = mapped_column(Integer)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)


class ModelVersionRow(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[float] = mapped_column(Float)


class ParticipantRow(Base):
    """A learner that was given work of a task (a probe, a train call, an async client index):
    its learner token may read that task's model and data (docs/security.md)."""

    __tablename__ = "task_participants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(Integer, index=True)
    learner_id: Mapped[int] = mapped_column(Integer, index=True)


class RefusalRow(Base):
    """How many requests of one kind (`reason`, a stable error code) a task refused."""

    __tablename__ = "task_refusals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(Integer, index=True)
    reason: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer, default=0)

# -- asynchronous tasks: acknowledged updates and resumable state (docs/orchestrator.md) --------


class AsyncUpdateRow(Base):
    """One update of an async task answered "accepted": its file is fsynced and this row
    committed before the answer leaves. `consumed_version` is the model version it was merged
    into (committed with that version), null while it waits in the buffer."""

    __tablename__ = "async_updates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(Integer, index=True)
    learner: Mapped[str] = mapped_column(String(128))
    base_version: Mapped[int] = mapped_column(Integer)
    n_samples: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))
    received_at: Mapped[float] = mapped_column(Float)
    consumed_version: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)


class AsyncStateRow(Base):
    """What an async task needs to resume besides its models and buffer: the runner's and
    the core's state (`state`, times as wall-clock seconds) and the client index of each
    learner (`clients`, learner id → partition)."""

    __tablename__ = "async_state"

    task_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    clients: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[float] = mapped_column(Float)


@dataclass
class _Enrolment:
    """One `enroll` call waiting for the group commit that carries it."""

    name: str
    facts: dict[str, Any]
    endpoint: str | None
    now: float
    secret: str | None
    done: bool = False
    row: LearnerRow | None = None
    error: BaseException | None = None


class Store:
    """The orchestrator's database plus its data directory; safe to use from many threads."""

    def __init__(self, data_dir: str | Path, db_url: str | None = None) -> None:
        self.layout = Layout(Path(data_dir).resolve())
        self.layout.root.mkdir(parents=True, exist_ok=True)
        url = db_url or f"sqlite:///{self.layout.root / 'plexus.db'}"
        self.url = url
        try:
            if url.startswith("sqlite"):
                self.engine = create_engine(
                    url, connect_args={"check_same_thread": False, "timeout": 30}
                )
                event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = create_engine(url, pool_pre_ping=True)
            Base.metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the database at {url}: {exc}; check --db-url") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Called inside every round commit's transaction (raises to refuse it): the driver
        # lease check of orchestrator.store.lease, set by the service that holds the lease.
        self.fence: Callable[[Session], None] | None = None
        sweep_temp_files(self.layout.root)
        self.discard_unready_jobs()
        self.discard_unready()
        # Heartbeats not yet written: learner id -> (last_seen, facts or None).
        self._beats: dict[int, tuple[float, dict[str, Any] | None]] = {}
        self._beats_lock = threading.Lock()
        self._known: set[int] = set()  # learner ids seen to exist (a heartbeat needs no read)
        # The in-memory view of every learner (`learner_view`), and when it was last synced
        # with and fully reloaded from the database (monotonic seconds; -inf: never).
        self._view: dict[int, LearnerRow] | None = None
        self._view_lock = threading.Lock()
        self._view_synced = self._view_loaded = float("-inf")
        # Group commit of enrolments: the queue, and whether a caller is committing a batch.
        self._enrol_cv = threading.Condition()
        self._enrol_queue: list[_Enrolment] = []
        self._enrol_leading = False
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None  # started by the first heartbeat

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except SQLAlchemyError as exc:
                s.rollback()
                if _disk_full(exc):
                    raise StorageFull(
                        f"the database could not write ({getattr(exc, 'orig', exc)}): the data "
                        "directory is full or the file size limit was reached; the transaction was "
                        "rolled back; free space and retry") from exc
                raise StoreError(f"database error: {exc}") from exc
            except BaseException:
                s.rollback()
                raise

    def close(self) -> None:
        """Write the pending heartbeats, then release the database."""
        if not self._closed.is_set():
            self._closed.set()
            flusher = self._flusher
            if flusher is not None and flusher is not threading.current_thread():
                flusher.join(timeout=30)
            self.flush_heartbeats()
        self.engine.dispose()

    # -- learners -------------------------------------------------------------------------

    def enroll(self, name: str, facts: dict[str, Any], endpoint: str | None, now: float,
               secret: str | None = None) -> LearnerRow:
        """Add a learner, or re-enroll one by name: same id, fresh token.

        Re-enrolling an existing name needs that learner's own secret (its current token);
        without it (another device, or a second agent under the same name) it is a Conflict
        `name_taken`, and nothing changes. Committed before it returns; calls arriving while
        another batch commits wait and are committed together in the next transaction.
        """
        me = _Enrolment(name, facts, endpoint, now, secret)
        with self._enrol_cv:
            self._enrol_queue.append(me)
            while not me.done and self._enrol_leading:
                self._enrol_cv.wait()
            if not me.done:  # lead: commit everything queued so far, this call included
                self._enrol_leading = True
                batch, self._enrol_queue = self._enrol_queue, []
        if not me.done:
            try:
                self._enroll_batch(batch)
            finally:
                with self._enrol_cv:
                    for e in batch:
                        if not e.done and e.row is None and e.error is None:
                            e.error = StoreError("the enrolment's transaction did not finish")
                        e.done = True
                    self._enrol_leading = False
                    self._enrol_cv.notify_all()
        if me.error is not None:
            raise me.error
        assert me.row is not None
        return me.row

    def _enroll_batch(self, batch: list[_Enrolment]) -> None:
        """Commit `batch` in one transaction; if that fails, each one in its own, so one bad
        enrolment (a race on a name with another process) fails alone."""
        try:
            with self.session() as s:
                for e in batch:
                    try:
                        e.row = self._enroll_in(s, e)
                    except Conflict as exc:
                        e.error = exc
                s.flush()
        except Exception:
            if len(batch) == 1:
                batch[0].row = None
                raise
            for e in batch:
                e.row, e.error = None, None
                try:
                    with self.session() as s:
                        e.row = self._enroll_in(s, e)
                except Exception as exc:
                    e.error = exc
        for e in batch:
            if e.row is not None:
                self._known.add(e.row.id)
                self._view_put(e.row)
                with self._beats_lock:  # an older pending heartbeat must not undo its facts
                    beat = self._beats.get(e.row.id)
                    if beat is not None and beat[0] <= e.now:
                        del self._beats[e.row.id]

    @staticmethod
    def _enroll_in(s: Session, e: _Enrolment) -> LearnerRow:
        """One enrolment inside transaction `s` (raises Conflict having changed nothing)."""
        token = secrets.token_urlsafe(24)
        row = s.scalar(select(LearnerRow).where(LearnerRow.name == e.name))
        if row is None:
            row = LearnerRow(name=e.name, token=token, endpoint=e.endpoint, facts=e.facts,
                             enrolled_at=e.now, last_seen=e.now)
            s.add(row)
            s.flush()
        elif e.secret is None or not _same(e.secret, row.token):
            raise Conflict(
                f"a learner named {e.name!r} is already enrolled and this request does not "
                "carry its secret (its current learner token): if this is another device "
                "or a second agent on the same host, start it with --name <another name>; "
                "if it is that learner restarted, keep its --data-dir, which holds the "
                "secret; an admin can remove the old learner with `plexus learners remove "
                f"{row.id}`", code="name_taken")
        else:
            row.token, row.endpoint, row.facts, row.last_seen = (token, e.endpoint, e.facts,
                                                                 e.now)
        return row

    def remove_learner(self, learner_id: int) -> LearnerRow:
        """Remove a learner: its token stops working at once (NotFound if unknown)."""
        with self.session() as s:
            row = s.get(LearnerRow, learner_id)
            if row is None:
                raise NotFound(f"learner {learner_id} is not enrolled; list learners with "
                               "GET /v1/learners", code="learner_not_found")
            s.execute(delete(ParticipantRow).where(ParticipantRow.learner_id == learner_id))
            s.delete(row)
        self._known.discard(learner_id)
        with self._beats_lock:
            self._beats.pop(learner_id, None)
        with self._view_lock:
            if self._view is not None:
                self._view.pop(learner_id, None)
        return row

    def add_participant(self, task_id: int, learner_id: int) -> None:
        """Record that a learner was given work of a task (idempotent)."""
        with self.session() as s:
            found = s.scalar(select(ParticipantRow.id).where(
                ParticipantRow.task_id == task_id, ParticipantRow.learner_id == learner_id))
            if found is None:
                s.add(ParticipantRow(task_id=task_id, learner_id=learner_id))

    def add_participants(self, task_id: int, learner_ids: list[int]) -> None:
        """`add_participant` for many learners in one transaction (idempotent)."""
        if not learner_ids:
            return
        with self.session() as s:
            have = set(s.scalars(select(ParticipantRow.learner_id).where(
                ParticipantRow.task_id == task_id)))
            for lid in dict.fromkeys(learner_ids):
                if lid not in have:
                    s.add(ParticipantRow(task_id=task_id, learner_id=lid))

    def takes_part(self, task_id: int, learner_id: int) -> bool:
        """Whether the learner was ever given work of the task."""
        with self.session() as s:
            return s.scalar(select(ParticipantRow.id).where(
                ParticipantRow.task_id == task_id,
                ParticipantRow.learner_id == learner_id)) is not None

    def add_refusal(self, task_id: int, reason: str) -> None:
        """Count one refused request of a task under `reason` (a stable error code)."""
        with self.session() as s:
            row = s.scalar(select(RefusalRow).where(RefusalRow.task_id == task_id,
                                                    RefusalRow.reason == reason))
            if row is None:
                s.add(RefusalRow(task_id=task_id, reason=reason, count=1))
            else:
                row.count += 1

    def refusals(self, task_id: int) -> dict[str, int]:
        """A task's refused requests, count per reason."""
        with self.session() as s:
            rows = s.scalars(select(RefusalRow).where(RefusalRow.task_id == task_id))
            return {r.reason: r.count for r in rows}

    def learner_by_token(self, token: str) -> LearnerRow | None:
        with self.session() as s:
            row = s.scalar(select(LearnerRow).where(LearnerRow.token == token))
            # A constant-time comparison on top of the indexed lookup.
            if row is None or not _same(row.token, token):
                return None
        return self._with_beats([row])[0]

    def heartbeat(self, learner_id: int, facts: dict[str, Any] | None, now: float) -> None:
        """The learner is alive at `now` (with new facts, if given): kept in memory and
        written with the others within `HEARTBEAT_FLUSH_S` (a heartbeat is not acknowledged
        data); `learners` shows it at once. NotFound if the learner is not enrolled."""
        if learner_id not in self._known:
            with self.session() as s:
                if s.get(LearnerRow, learner_id) is None:
                    raise NotFound(f"learner {learner_id} is not enrolled; enroll again",
                                   code="learner_not_found")
            self._known.add(learner_id)
        with self._beats_lock:
            if self._flusher is None and not self._closed.is_set():
                self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                                 name="heartbeat-flush")
                self._flusher.start()
            prev = self._beats.get(learner_id)
            if prev is not None:
                now = max(now, prev[0])
                facts = facts or prev[1]
            self._beats[learner_id] = (now, facts or None)
            seen = self._view.get(learner_id) if self._view is not None else None
            if seen is not None:
                seen.last_seen = max(seen.last_seen, now)
                if facts:
                    seen.facts = facts

    def flush_heartbeats(self) -> int:
        """Write every pending heartbeat in one transaction; how many were written. On a
        failure they stay pending (unless newer ones came) for the next flush."""
        with self._beats_lock:
            beats, self._beats = self._beats, {}
        if not beats:
            return 0
        table = _learners_table()
        seen = [{"b_id": i, "b_seen": t} for i, (t, _f) in beats.items()]
        with_facts = [{"b_id": i, "b_facts": f} for i, (_t, f) in beats.items() if f]
        try:
            with self.session() as s:
                s.execute(update(table).where(table.c.id == bindparam("b_id"))
                          .values(last_seen=bindparam("b_seen")), seen)
                if with_facts:
                    s.execute(update(table).where(table.c.id == bindparam("b_id"))
                              .values(facts=bindparam("b_facts")), with_facts)
        except Exception:
            with self._beats_lock:
                for i, beat in beats.items():
                    newer = self._beats.get(i)
                    if newer is None:
                        self._beats[i] = beat
                    elif not newer[1]:
                        self._beats[i] = (newer[0], beat[1])
            raise
        return len(beats)

    def _flush_loop(self) -> None:
        while not self._closed.wait(HEARTBEAT_FLUSH_S):
            try:
                self.flush_heartbeats()
            except Exception as exc:  # kept pending; the next flush tries again
                log.warning("writing heartbeats failed (kept for the next try): %s", exc)

    def _with_beats(self, rows: list[LearnerRow]) -> list[LearnerRow]:
        """`rows` with their pending heartbeats applied (detached rows, changed in place)."""
        with self._beats_lock:
            for row in rows:
                self._known.add(row.id)
                beat = self._beats.get(row.id)
                if beat is not None:
                    row.last_seen = max(row.last_seen, beat[0])
                    if beat[1]:
                        row.facts = beat[1]
        return rows

    def learners(self) -> list[LearnerRow]:
        """Every enrolled learner, pending heartbeats included."""
        with self.session() as s:
            rows = list(s.scalars(select(LearnerRow).order_by(LearnerRow.id)))
        return self._with_beats(rows)

    def learner_view(self) -> list[LearnerRow]:
        """Every enrolled learner from memory, for what reads them every second (liveness):
        this process's enrolments, removals and heartbeats at once; other processes' (one
        database, several orchestrators) within `VIEW_SYNC_S`, their facts within
        `VIEW_RELOAD_S`. Rows in id order; treat them as read-only."""
        now = time.monotonic()
        with self._view_lock:
            if self._view is None or now - self._view_loaded >= VIEW_RELOAD_S:
                rows = self.learners()
                self._view = {r.id: r for r in rows}
                self._view_loaded = self._view_synced = now
            elif now - self._view_synced >= VIEW_SYNC_S:
                self._view_sync()
                self._view_synced = now
            return sorted(self._view.values(), key=lambda r: r.id)

    def _view_sync(self) -> None:
        """Bring the view in line with the database (view lock held): new and re-enrolled
        learners read in full, removed ones dropped, newer `last_seen` taken."""
        assert self._view is not None
        table = _learners_table()
        with self.session() as s:
            found = s.execute(select(table.c.id, table.c.token, table.c.last_seen)).all()
        view, changed = self._view, []
        for lid, token, last_seen in found:
            row = view.get(lid)
            if row is None or row.token != token:
                changed.append(lid)
            elif last_seen > row.last_seen:
                row.last_seen = last_seen
        for gone in view.keys() - {lid for lid, _t, _s in found}:
            del view[gone]
        if changed:
            with self.session() as s:
                for row in s.scalars(select(LearnerRow).where(LearnerRow.id.in_(changed))):
                    view[row.id] = row
            self._with_beats([view[i] for i in changed if i in view])

    def _view_put(self, row: LearnerRow) -> None:
        """An enrolment of this process, into the view (if there is one yet)."""
        with self._view_lock:
            if self._view is not None:
                self._view[row.id] = LearnerRow(
                    id=row.id, name=row.name, token=row.token, endpoint=row.endpoint,
                    facts=row.facts, enrolled_at=row.enrolled_at, last_seen=row.last_seen)

    # -- tasks ----------------------------------------------------------------------------

    def create_task(self, spec: dict[str, Any],
                    prepare: Callable[[int, Path], dict[str, int]], now: float) -> TaskRow:
        """Insert a pending task and prepare its files, all or nothing.

        `prepare(task_id, directory)` writes the shards, test split and model v0 into
        `directory` and returns num_shards, shard_samples, shard_bytes and model_bytes. The
        row is hidden (`ready` false) while that runs, outside any transaction, so a slow
        preparation never holds the database's write lock; if it raises, row and directory
        are removed: no half-created task is ever visible.
        """
        with self.session() as s:
            row = TaskRow(name=str(spec.get("name", "task")), spec=spec, state="pending",
                          created_at=now, ready=False)
            s.add(row)
            s.flush()
            task_id = row.id
        target = self.layout.task_dir(task_id)
        try:
            if target.exists():  # left over from a task id that was given back
                shutil.rmtree(target)
            facts = prepare(task_id, target)
            with self.session() as s:
                made = s.get(TaskRow, task_id)
                assert made is not None
                for key, value in facts.items():
                    setattr(made, key, value)
                made.ready = True
                s.add(ModelVersionRow(task_id=task_id, version=0,
                                      path=str(self.layout.model(task_id, 0)), created_at=now))
            return made
        except BaseException:
            self._discard(task_id)
            raise

    def _discard(self, task_id: int) -> None:
        shutil.rmtree(self.layout.task_dir(task_id), ignore_errors=True)
        with self.session() as s:
            s.execute(delete(ModelVersionRow).where(ModelVersionRow.task_id == task_id))
            s.execute(delete(ParticipantRow).where(ParticipantRow.task_id == task_id))
            s.execute(delete(RefusalRow).where(RefusalRow.task_id == task_id))
            s.execute(delete(TaskRow).where(TaskRow.id == task_id))

    def discard_unready(self) -> None:
        """Remove tasks whose preparation a crash interrupted (called at start-up)."""
        with self.session() as s:
            ids = list(s.scalars(select(TaskRow.id).where(TaskRow.ready.is_(False))))
        for task_id in ids:
            self._discard(task_id)

    def task(self, task_id: int) -> TaskRow:
        with self.session() as s:
            row = s.get(TaskRow, task_id)
            if row is None or not row.ready:
                raise NotFound(f"task {task_id} does not exist; list tasks with GET /v1/tasks",
                               code="task_not_found")
            return row

    def tasks(self, states: tuple[str, ...] | None = None) -> list[TaskRow]:
        with self.session() as s:
            q = select(TaskRow).where(TaskRow.ready.is_(True)).order_by(TaskRow.id)
            if states:
                q = q.where(TaskRow.state.in_(states))
            return list(s.scalars(q))

    def set_state(self, task_id: int, state: str, reason: str | None, now: float,
                  *, only_from: tuple[str, ...] = ACTIVE_STATES) -> TaskRow:
        """Move a task to `state`; Conflict if it is not in one of `only_from`."""
        assert state in TASK_STATES
        with self.session() as s:
            row = s.get(TaskRow, task_id, with_for_update=True)
            if row is None or not row.ready:
                raise NotFound(f"task {task_id} does not exist", code="task_not_found")
            if row.state not in only_from:
                raise Conflict(f"task {task_id} is {row.state}"
                               + (f" ({row.reason})" if row.reason else "")
                               + f"; it cannot become {state}")
            row.state = state
            row.reason = reason
            if state == "running" and row.started_at is None:
                row.started_at = now
            if state in ("finished", "failed", "cancelled"):
                row.finished_at = now
            return row

    def record_round(self, task_id: int, values: dict[str, Any], model_path: Path,
                     now: float) -> RoundRow:
        """Commit a finished round, its model version and the task's progress together."""
        with self.session() as s:
            if self.fence is not None:  # first: on SQLite its write takes the lock at once
                self.fence(s)
            task = s.get(TaskRow, task_id, with_for_update=True)
            if task is None:
                raise NotFound(f"task {task_id} does not exist", code="task_not_found")
            if task.state != "running":
                raise Conflict(f"task {task_id} is {task.state}; its round is not recorded")
            row = RoundRow(task_id=task_id, **values)
            s.add(row)
            s.add(ModelVersionRow(task_id=task_id, version=values["model_version"],
                                  path=str(model_path), created_at=now))
            task.rounds_done = values["index"] + 1
            task.model_version = values["model_version"]
            s.flush()
            return row

    def rounds(self, task_id: int) -> list[RoundRow]:
        self.task(task_id)
        with self.session() as s:
            q = select(RoundRow).where(RoundRow.task_id == task_id).order_by(RoundRow.index)
            return list(s.scalars(q))


    # -- multi-task jobs ------------------------------------------------------------------

    def create_job(self, name: str, options: dict[str, Any], specs: list[dict[str, Any]],
                   prepare: Callable[[int, dict[str, Any], Path], dict[str, int]],
                   now: float) -> JobRow:
        """Insert a job and all its tasks, all or nothing.

        The job row stays hidden (`ready` false) while its tasks are prepared one by one with
        `prepare(task_id, spec, directory)`; if any preparation raises, every task made so far
        and the job are removed, and a crash in between is swept at the next start.
        """
        with self.session() as s:
            job = JobRow(name=name, options=options, task_ids=[], state="pending",
                         created_at=now, ready=False)
            s.add(job)
            s.flush()
            job_id = job.id
        try:
            for spec in specs:

                def prepare_one(tid: int, d: Path, sp: dict[str, Any] = spec) -> dict[str, int]:
                    return prepare(tid, sp, d)

                task = self.create_task(spec, prepare_one, now)
                with self.session() as s:
                    row = s.get(JobRow, job_id)
                    assert row is not None
                    row.task_ids = [*row.task_ids, task.id]
            with self.session() as s:
                row = s.get(JobRow, job_id)
                assert row is not None
                row.ready = True
                s.flush()
                return row
        except BaseException:
            self._discard_job(job_id)
            raise

    def _discard_job(self, job_id: int) -> None:
        with self.session() as s:
            row = s.get(JobRow, job_id)
            task_ids = list(row.task_ids) if row is not None else []
        for task_id in task_ids:
            self._discard(task_id)
        with self.session() as s:
            s.execute(delete(JobRoundRow).where(JobRoundRow.job_id == job_id))
            s.execute(delete(JobRow).where(JobRow.id == job_id))

    def discard_unready_jobs(self) -> None:
        """Remove jobs (and their tasks) whose creation a crash interrupted."""
        with self.session() as s:
            ids = list(s.scalars(select(JobRow.id).where(JobRow.ready.is_(False))))
        for job_id in ids:
            self._discard_job(job_id)

    def job(self, job_id: int) -> JobRow:
        with self.session() as s:
            row = s.get(JobRow, job_id)
            if row is None or not row.ready:
                raise NotFound(f"job {job_id} does not exist; list jobs with GET /v1/jobs",
                               code="job_not_found")
            return row

    def jobs(self, states: tuple[str, ...] | None = None) -> list[JobRow]:
        with self.session() as s:
            q = select(JobRow).where(JobRow.ready.is_(True)).order_by(JobRow.id)
            if states:
                q = q.where(JobRow.state.in_(states))
            return list(s.scalars(q))

    def job_task_ids(self) -> set[int]:
        """Ids of every task that belongs to a job (the single-task driver leaves them be)."""
        with self.session() as s:
            return {int(t) for ids in s.scalars(select(JobRow.task_ids)) for t in ids}

    def set_job_state(self, job_id: int, state: str, reason: str | None, now: float,
                      *, only_from: tuple[str, ...] = ACTIVE_STATES,
                      setup: dict[str, Any] | None = None) -> JobRow:
        """Move a job to `state` (and optionally store its setup); Conflict if not active."""
        assert state in TASK_STATES
        with self.session() as s:
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None or not row.ready:
                raise NotFound(f"job {job_id} does not exist", code="job_not_found")
            if row.state not in only_from:
                raise Conflict(f"job {job_id} is {row.state}"
                               + (f" ({row.reason})" if row.reason else "")
                               + f"; it cannot become {state}")
            row.state, row.reason = state, reason
            if setup is not None:
                row.setup = setup
            if state == "running" and row.started_at is None:
                row.started_at = now
            if state in ("finished", "failed", "cancelled"):
                row.finished_at = now
            return row

    def record_job_round(self, job_id: int, index: int,
                         entries: list[tuple[int, dict[str, Any], Path, dict[str, Any]]],
                         now: float) -> None:
        """Commit one GUC of a job: per task its round row, model version and metric record
        (`entries` holds (task_id, round values, model path, record)), all in one transaction."""
        with self.session() as s:
            if self.fence is not None:
                self.fence(s)
            job = s.get(JobRow, job_id, with_for_update=True)
            if job is None or job.state != "running":
                raise Conflict(f"job {job_id} is not running; its round is not recorded")
            if job.rounds_done != index:  # a GUC is committed once, and in order
                raise Conflict(f"job {job_id} has {job.rounds_done} GUCs committed; GUC "
                               f"{index} is not the next one and is not recorded")
            for task_id, values, model_path, record in entries:
                task = s.get(TaskRow, task_id, with_for_update=True)
                if task is None or task.state != "running":
                    raise Conflict(f"task {task_id} is not running; its round is not recorded")
                s.add(RoundRow(task_id=task_id, **values))
                s.add(ModelVersionRow(task_id=task_id, version=values["model_version"],
                                      path=str(model_path), created_at=now))
                task.rounds_done = values["index"] + 1
                task.model_version = values["model_version"]
                s.add(JobRoundRow(job_id=job_id, index=index, task_id=task_id, record=record))
            job.rounds_done = index + 1

    def job_rounds(self, job_id: int) -> list[JobRoundRow]:
        self.job(job_id)
        with self.session() as s:
            q = (select(JobRoundRow).where(JobRoundRow.job_id == job_id)
                 .order_by(JobRoundRow.index, JobRoundRow.task_id))
            return list(s.scalars(q))


    # -- asynchronous tasks (acknowledged updates, aggregation commits, resumable state) ----

    def add_async_update(self, task_id: int, learner: str, base_version: int,
                         n_samples: int, data: bytes, now: float) -> int:
        """Keep one accepted update of an async task; returns its id.

        The file `tasks/<id>/async_updates/u<update id>.safetensors` is written and fsynced
        inside the transaction that inserts the row, so when this returns both are durable;
        a crash before the commit leaves at most a file no row names (ignored).
        """
        with self.session() as s:
            if self.fence is not None:
                self.fence(s)
            row = AsyncUpdateRow(task_id=task_id, learner=learner, base_version=base_version,
                                 n_samples=n_samples, path="", received_at=now)
            s.add(row)
            s.flush()
            path = self.layout.task_dir(task_id) / "async_updates" / f"u{row.id}.safetensors"
            write_atomic(path, data)
            row.path = str(path)
            return int(row.id)

    def async_updates(self, task_id: int, *, pending: bool = False) -> list[AsyncUpdateRow]:
        """A task's accepted updates in arrival order; with `pending`, only those not yet
        merged into a committed model version."""
        with self.session() as s:
            q = select(AsyncUpdateRow).where(AsyncUpdateRow.task_id == task_id)
            if pending:
                q = q.where(AsyncUpdateRow.consumed_version.is_(None))
            return list(s.scalars(q.order_by(AsyncUpdateRow.id)))

    def commit_async_aggregation(self, task_id: int, values: dict[str, Any], model_path: Path,
                                 update_ids: list[int], state: dict[str, Any],
                                 now: float) -> None:
        """Commit one aggregation of an async task in one transaction: its round row and model
        version (the file already on disk), the updates it consumed, and the state to resume
        from. An update already consumed (or unknown) raises Conflict and nothing changes."""
        with self.session() as s:
            if self.fence is not None:  # only the holder of the driver lease commits
                self.fence(s)
            task = s.get(TaskRow, task_id, with_for_update=True)
            if task is None or task.state != "running":
                raise Conflict(f"task {task_id} is not running; its aggregation is not recorded")
            if update_ids:
                rows = list(s.scalars(select(AsyncUpdateRow).where(
                    AsyncUpdateRow.id.in_(update_ids), AsyncUpdateRow.task_id == task_id,
                    AsyncUpdateRow.consumed_version.is_(None))))
                if len(rows) != len(set(update_ids)):
                    raise Conflict(f"task {task_id}: updates {sorted(update_ids)} are not all "
                                   "waiting to be merged; the aggregation is not recorded")
                for row in rows:
                    row.consumed_version = int(values["model_version"])
            s.add(RoundRow(task_id=task_id, **values))
            s.add(ModelVersionRow(task_id=task_id, version=values["model_version"],
                                  path=str(model_path), created_at=now))
            task.rounds_done = values["index"] + 1
            task.model_version = values["model_version"]
            self._put_async_state(s, task_id, now, state=state)

    def save_async_state(self, task_id: int, now: float, *, state: dict[str, Any] | None = None,
                         clients: dict[str, int] | None = None) -> None:
        """Replace an async task's saved runner state and/or its learners' client indices."""
        with self.session() as s:
            self._put_async_state(s, task_id, now, state=state, clients=clients)

    @staticmethod
    def _put_async_state(s: Session, task_id: int, now: float, *,
                         state: dict[str, Any] | None = None,
                         clients: dict[str, int] | None = None) -> None:
        row = s.get(AsyncStateRow, task_id)
        if row is None:
            row = AsyncStateRow(task_id=task_id, state={}, clients={}, updated_at=now)
            s.add(row)
        if state is not None:
            row.state = state
        if clients is not None:
            row.clients = dict(clients)
        row.updated_at = now

    def async_state(self, task_id: int) -> AsyncStateRow | None:
        """An async task's saved state, None when it never saved one."""
        with self.session() as s:
            return s.get(AsyncStateRow, task_id)


# SQLite's result codes for a write that found no space: SQLITE_FULL, and SQLITE_IOERR_WRITE
# (what a write past RLIMIT_FSIZE, EFBIG, gives).
_SQLITE_FULL = {13, 778}


def _disk_full(exc: SQLAlchemyError) -> bool:
    """Whether a database error means the disk (or the file size limit) is exhausted."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlite_errorcode", None)
    if code in _SQLITE_FULL:
        return True
    text = str(orig or exc).lower()
    # PostgreSQL: SQLSTATE 53100 disk_full; SQLite's message when the code is not exposed.
    return getattr(orig, "sqlstate", None) == "53100" or "database or disk is full" in text


def _learners_table() -> Table:
    """The `learners` table, for Core statements (bulk updates, narrow selects)."""
    table = LearnerRow.__table__
    assert isinstance(table, Table)
    return table


def _same(a: str, b: str) -> bool:
    """Constant-time equality of two tokens, compared as UTF-8 bytes (any characters)."""
    return hmac.compare_digest(a.encode(), b.encode())


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while the round driver writes; FULL sync makes a commit durable.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()

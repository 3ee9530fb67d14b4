"""Durable relay state: calls queued for, running on, or answered by workers behind NAT.

`Relay(store=...)` writes each accepted call here before it answers the caller, marks it when
the worker acknowledges it, stores its result before it answers the worker, and forgets it once
the caller has it. A relay restarted over the same store queues again what no worker
acknowledged, waits for the results of what was running, and serves the results nobody fetched.
`SqliteRelayStore` keeps that in one SQLite file (WAL, `synchronous=FULL`: a commit is on disk
before the answer leaves). Any object with these methods will do (`RelayStore`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

QUEUED, RUNNING, DONE = "queued", "running", "done"


@dataclass
class RelayRecord:
    """One relayed call as stored. `key` is "<worker>/<call id>"; `body` is the encoded
    request (kept until the worker acknowledged it); `result` the encoded answer, with its
    HTTP `status` and `content_type`, once the worker sent it."""

    key: str
    procedure: str
    state: str = QUEUED
    body: bytes | None = None
    callback_url: str | None = None
    callback_token: str | None = None
    status: int | None = None
    content_type: str | None = None
    result: bytes | None = None

    @property
    def worker(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def call_id(self) -> str:
        return self.key.split("/", 1)[1]


class RelayStore(Protocol):
    """What a relay needs to survive a restart; every method returns once it is durable."""

    def load(self) -> list[RelayRecord]: ...

    def put(self, record: RelayRecord) -> None: ...

    def mark_running(self, key: str) -> None: ...

    def finish(self, key: str, status: int, content_type: str, result: bytes,
               expire_before: float) -> None: ...

    def drop(self, key: str) -> None: ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS relay_calls (
    key TEXT PRIMARY KEY, procedure TEXT NOT NULL, state TEXT NOT NULL, body BLOB,
    callback_url TEXT, callback_token TEXT, status INTEGER, content_type TEXT, result BLOB,
    seq INTEGER NOT NULL, finished_at REAL
)
"""


class SqliteRelayStore:
    """A `RelayStore` in one SQLite file; safe to call from several threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM relay_calls").fetchone()
        self._seq = int(row[0])

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def load(self) -> list[RelayRecord]:
        """Every stored call, in the order the relay accepted them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, procedure, state, body, callback_url, callback_token, status, "
                "content_type, result FROM relay_calls ORDER BY seq").fetchall()
        return [RelayRecord(*row) for row in rows]

    def put(self, record: RelayRecord) -> None:
        """Store a call the relay accepted (a key already stored is replaced)."""
        self._seq += 1
        self._write(
            "INSERT OR REPLACE INTO relay_calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (record.key, record.procedure, record.state, record.body, record.callback_url,
             record.callback_token, record.status, record.content_type, record.result,
             self._seq))

    def mark_running(self, key: str) -> None:
        """The worker acknowledged the call: it runs there; its body is no longer needed."""
        self._write("UPDATE relay_calls SET state = ?, body = NULL WHERE key = ? AND state = ?",
                    (RUNNING, key, QUEUED))

    def finish(self, key: str, status: int, content_type: str, result: bytes,
               expire_before: float) -> None:
        """The worker answered: keep the result until the caller has it; results that
        finished before `expire_before` (seconds since the epoch) nobody fetched are
        removed, as the relay forgets them after its result_ttl_s."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE relay_calls SET state = ?, body = NULL, status = ?, "
                    "content_type = ?, result = ?, finished_at = ? WHERE key = ?",
                    (DONE, status, content_type, result, time.time(), key))
                self._db.execute("DELETE FROM relay_calls WHERE state = ? AND finished_at < ?",
                                 (DONE, expire_before))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def drop(self, key: str) -> None:
        """The caller has the result (or the call failed for good): forget it."""
        self._write("DELETE FROM relay_calls WHERE key = ?", (key,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

"""The driver lease: at most one orchestrator process drives the tasks of one database.

A row in `leases` names the holder (`owner`, unique per process) and when its hold ends
(`expires_at`, wall-clock seconds since the epoch). The holder renews it well before then; any
other instance takes it only once it has expired — or at once when the holder is a process of
the same host that has exited (`take_from_dead`: a SIGKILLed orchestrator restarted in place
does not wait for its own old lease). Acquiring and renewing are one conditional
`UPDATE … WHERE owner = me OR expires_at < now` (or an `INSERT` of the first row, whose primary
key makes a race between two first instances end with one winner), so they are atomic on SQLite
and PostgreSQL alike, with no advisory-lock feature of either. Round commits call `check` first in
their own transaction (`Store.fence`): an instance that was paused past its expiry and lost the
lease cannot commit a round the new holder also runs.

Clocks: instances on different hosts compare their own `time.time()`; keep them NTP-synced and
the TTL well above their skew (the default is 30 s).
"""

from __future__ import annotations

import os
import secrets
import socket

from sqlalchemy import Float, String, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from orchestrator.errors import Conflict, StoreError
from orchestrator.store.db import Base, Store

DRIVER = "driver"  # the one lease name in use: who runs rounds, jobs and async tasks


class LeaseRow(Base):
    """Who holds a named lease and until when (seconds since the epoch)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[float] = mapped_column(Float)


def new_owner_id() -> str:
    """A holder name unique to this process: host, pid and a random part (for logs too)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def acquire(store: Store, owner: str, ttl_s: float, now: float, name: str = DRIVER) -> bool:
    """Take or renew lease `name` for `ttl_s` seconds from `now`; False when another owner
    holds it and it has not expired. Renewing is acquiring again by the same owner."""
    with store.session() as s:
        taken = s.execute(
            update(LeaseRow)
            .where(LeaseRow.name == name,
                   (LeaseRow.owner == owner) | (LeaseRow.expires_at < now))
            .values(owner=owner, expires_at=now + ttl_s))
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            return True
        if s.scalar(select(LeaseRow.name).where(LeaseRow.name == name)) is not None:
            return False  # held by someone else, not expired
    try:
        with store.session() as s:
            s.execute(insert(LeaseRow).values(name=name, owner=owner, expires_at=now + ttl_s))
        return True
    except StoreError as exc:  # another instance inserted the first row at the same instant
        if isinstance(exc.__cause__, IntegrityError):
            return False
        raise


def dead_here(owner: str) -> bool:
    """Whether `owner` (an id of `new_owner_id`) names a process of this host that has
    exited: a holder that a restart on the same host may replace without waiting for expiry.
    A pid taken by another process since reads as alive (the safe side: wait for expiry)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def take_from_dead(store: Store, owner: str, ttl_s: float, now: float,
                   name: str = DRIVER) -> bool:
    """Take lease `name` at once if its holder is a process of this host that has exited (a
    SIGKILLed orchestrator restarted on the same host), else False. One conditional UPDATE on
    the dead holder's id, so of two instances racing for it one wins."""
    held = holder(store, name)
    if held is None or not dead_here(held[0]):
        return False
    with store.session() as s:
        taken = s.execute(update(LeaseRow)
                          .where(LeaseRow.name == name, LeaseRow.owner == held[0])
                          .values(owner=owner, expires_at=now + ttl_s))
        return bool(taken.rowcount == 1)  # type: ignore[attr-defined]


def release(store: Store, owner: str, name: str = DRIVER) -> None:
    """Give the lease back at a clean shutdown, so a standby takes over at once."""
    with store.session() as s:
        s.execute(update(LeaseRow).where(LeaseRow.name == name, LeaseRow.owner == owner)
                  .values(expires_at=0.0))


def holder(store: Store, name: str = DRIVER) -> tuple[str, float] | None:
    """(owner, expires_at) of lease `name`, or None if nobody ever took it."""
    with store.session() as s:
        row = s.get(LeaseRow, name)
        return None if row is None else (row.owner, row.expires_at)


def check(session: Session, owner: str, name: str = DRIVER) -> None:
    """First statement of a commit's transaction: Conflict `lease_lost` unless `owner` still
    holds the lease (nobody took it over, even if a late renewal let it expire).

    It writes the row (an UPDATE that changes nothing), so the transaction holds the row lock
    on PostgreSQL and the write lock on SQLite until it commits: a takeover waits for it."""
    kept = session.execute(update(LeaseRow).where(LeaseRow.name == name,
                                                  LeaseRow.owner == owner)
                           .values(owner=owner))
    if kept.rowcount != 1:  # type: ignore[attr-defined]
        row = session.get(LeaseRow, name)
        who = "nobody" if row is None else row.owner
        raise Conflict(f"this orchestrator ({owner}) no longer holds the driver lease (held "
                       f"by {who}); another instance drives the tasks now, so this commit is "
                       "refused", code="lease_lost")

"""A task's events: what happened to it, in order, for `plexus task logs` and the dashboard.

Append-only and bounded: each task keeps its newest `MAX_EVENTS_PER_TASK` events (older ones
are dropped as new ones arrive). An event's `id` grows across the whole database, so it is a
cursor: `read_events(store, task_id, after=id)` returns only what came later (`task logs --follow`).

Kinds (`EVENT_KINDS`): `waiting` (no learner alive), `round_started`, `left_out` (a learner and
why), `aggregated` (how many updates made the new model version), `round_closed` (GUC time,
truancy, accuracy), `refused` (a learner request refused, by error code), `state` (the task
became running, finished, failed or cancelled).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Float, Integer, String, Text, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from orchestrator.store.db import Base

if TYPE_CHECKING:
    from orchestrator.store.db import Store

MAX_EVENTS_PER_TASK = 2000
EVENT_KINDS = ("waiting", "round_started", "left_out", "aggregated", "round_closed",
               "refused", "state")
MAX_MESSAGE = 1000


class EventRow(Base):
    """One event of one task."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(Integer, index=True)
    at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def add_event(store: Store, task_id: int, kind: str, message: str, now: float,
              data: dict[str, Any] | None = None) -> int:
    """Append an event to a task (dropping its oldest beyond the bound); returns its id."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r} (known: {', '.join(EVENT_KINDS)})")
    with store.session() as s:
        row = EventRow(task_id=task_id, at=now, kind=kind, message=message[:MAX_MESSAGE],
                       data=data or {})
        s.add(row)
        s.flush()
        # The oldest event still kept; everything of this task before it goes.
        floor = s.scalar(select(EventRow.id).where(EventRow.task_id == task_id)
                         .order_by(EventRow.id.desc()).offset(MAX_EVENTS_PER_TASK - 1).limit(1))
        if floor is not None:
            s.execute(delete(EventRow).where(EventRow.task_id == task_id, EventRow.id < floor))
        return row.id


def read_events(store: Store, task_id: int, after: int = 0, limit: int = 500) -> list[EventRow]:
    """A task's events with an id above `after`, oldest first, at most `limit`."""
    with store.session() as s:
        return list(s.scalars(select(EventRow).where(EventRow.task_id == task_id,
                                                      EventRow.id > after)
                              .order_by(EventRow.id).limit(limit)))


def event_view(e: EventRow) -> dict[str, Any]:
    """An event as the API shows it."""
    return {"id": e.id, "at": e.at, "kind": e.kind, "message": e.message, "data": e.data}

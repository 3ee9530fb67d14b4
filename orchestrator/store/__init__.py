"""Durable state: the database (`db`) and the data directory's files (`files`).

A round row is committed only after its model file is on disk, so a `kill -9` at any instant
leaves the last committed round resumable.
"""

from __future__ import annotations

from orchestrator.store import lease
from orchestrator.store.db import (
    ACTIVE_STATES,
    TASK_STATES,
    AsyncStateRow,
    AsyncUpdateRow,
    JobRoundRow,
    JobRow,
    LearnerRow,
    ModelVersionRow,
    ParticipantRow,
    RefusalRow,
    RoundRow,
    Store,
    TaskRow,
)
from orchestrator.store.events import (
    EVENT_KINDS,
    MAX_EVENTS_PER_TASK,
    EventRow,
    add_event,
    event_view,
    read_events,
)
from orchestrator.store.files import Layout, write_atomic, write_atomic_many
from orchestrator.store.lease import LeaseRow

__all__ = [
    "ACTIVE_STATES",
    "EVENT_KINDS",
    "MAX_EVENTS_PER_TASK",
    "TASK_STATES",
    "AsyncStateRow",
    "AsyncUpdateRow",
    "EventRow",
    "JobRoundRow",
    "JobRow",
    "Layout",
    "LearnerRow",
    "LeaseRow",
    "ModelVersionRow",
    "ParticipantRow",
    "RefusalRow",
    "RoundRow",
    "Store",
    "TaskRow",
    "add_event",
    "event_view",
    "lease",
    "read_events",
    "write_atomic",
    "write_atomic_many",
]

"""Durable state: the database (`db`) and the data directory's files (`files`).

A round row is committed only after its model file is on disk, so a `kill -9` at any instant
leaves the last committed round resumable.
"""

from __future__ import annotations

from orchestrator.store.db import (
    ACTIVE_STATES,
    TASK_STATES,
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
from orchestrator.store.files import Layout, write_atomic, write_atomic_many

__all__ = [
    "ACTIVE_STATES",
    "TASK_STATES",
    "JobRoundRow",
    "JobRow",
    "Layout",
    "LearnerRow",
    "ModelVersionRow",
    "ParticipantRow",
    "RefusalRow",
    "RoundRow",
    "Store",
    "TaskRow",
    "write_atomic",
    "write_atomic_many",
]

"""Allocators: pure functions that decide how many shards each learner gets.

`get_allocator(name)` returns a registered allocator; importing this package registers the
built-in ones (dab, csa, equal) and, when present, the multi-task planners (med, mmtt).
"""

from __future__ import annotations

import importlib

from orchestrator.allocation import csa, dab, equal
from orchestrator.allocation.base import (
    Allocator,
    LearnerReport,
    Probe,
    RoundContext,
    allocator_names,
    assign_shard_ids,
    get_allocator,
    largest_remainder,
    learner_time_s,
    register,
)
from orchestrator.allocation.errors import AllocationError, PlanInputError, SolverUnavailable

# MED and MMTT live in their own modules (another engineer's); they register themselves on
# import, and an installation without them still offers the three schemes above.
for _optional in ("orchestrator.allocation.med", "orchestrator.allocation.mmtt"):
    try:
        importlib.import_module(_optional)
    except ModuleNotFoundError as _exc:
        if _exc.name != _optional:
            raise

__all__ = [
    "AllocationError",
    "Allocator",
    "LearnerReport",
    "PlanInputError",
    "Probe",
    "RoundContext",
    "SolverUnavailable",
    "allocator_names",
    "assign_shard_ids",
    "csa",
    "dab",
    "equal",
    "get_allocator",
    "largest_remainder",
    "learner_time_s",
    "register",
]

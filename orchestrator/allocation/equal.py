"""Equal split: the heterogeneity-unaware baseline that gives every learner the same share."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.allocation.base import (
    Allocator,
    LearnerReport,
    RoundContext,
    largest_remainder,
    register,
)


@register
class EqualSplit(Allocator):
    """Split a fixed total of shards evenly; remainders go to the lowest learner ids."""

    name = "equal"
    probe = "none"

    def allocate(self, reports: Sequence[LearnerReport], ctx: RoundContext) -> dict[str, int]:
        total = ctx.total_shards if ctx.total_shards is not None else ctx.num_shards
        return largest_remainder(total, {r.learner_id: 1.0 for r in reports})

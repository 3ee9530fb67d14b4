"""CSA, the centralized baseline of thesis 3.4: a fixed total of data split by the orchestrator.

Learners reveal b_k (bytes/s) and c_k (samples/s). The orchestrator splits a fixed total T of
shards so that the slowest learner's predicted time (thesis eq. 3.4) is as small as possible,
with μ fixed. Nothing ties T to the deadline, so a tight deadline is simply overrun, which is
the behaviour thesis fig. 3.6–3.7 measure against DAB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from orchestrator.allocation.base import (
    Allocator,
    LearnerReport,
    RoundContext,
    learner_time_s,
    register,
)


def _most_shards_within(limit_s: float, r: LearnerReport, ctx: RoundContext, cap: int) -> int:
    """The most shards (≤ cap) learner r finishes within `limit_s` seconds under eq. 3.4."""
    assert r.bandwidth is not None and r.compute is not None
    per_shard = ctx.shard_bytes / max(r.bandwidth, 1e-9)
    per_shard += ctx.iterations * ctx.shard_samples / max(r.compute, 1e-9)
    fixed = 2 * ctx.model_bytes / max(r.bandwidth, 1e-9)
    if limit_s < fixed + per_shard:
        return 0
    # A tiny slack absorbs rounding so that η(a) == limit counts as within.
    return min(cap, math.floor((limit_s - fixed) / per_shard + 1e-9))


def min_makespan_split(
    reports: Sequence[LearnerReport], total: int, ctx: RoundContext
) -> dict[str, int]:
    """Split `total` shards among learners with known b_k, c_k minimising max η_k (eq. 3.4).

    The optimal makespan is one of the values η_k(a) for some learner k and a ≤ total, so the
    search runs over those candidates: the smallest one at which the learners together can take
    `total` shards. Any surplus is then trimmed from whoever would finish last.
    """
    known = [r for r in reports if r.bandwidth and r.compute]
    out = {r.learner_id: 0 for r in reports}
    if total <= 0 or not known:
        return out
    candidates = sorted(
        {learner_time_s(a, bandwidth=r.bandwidth or 0.0, compute=r.compute or 0.0, ctx=ctx)
         for r in known for a in range(1, total + 1)}
    )
    lo, hi = 0, len(candidates) - 1
    while lo < hi:  # smallest feasible candidate; the largest one is always feasible
        mid = (lo + hi) // 2
        if sum(_most_shards_within(candidates[mid], r, ctx, total) for r in known) >= total:
            hi = mid
        else:
            lo = mid + 1
    limit = candidates[lo]
    counts = {r.learner_id: _most_shards_within(limit, r, ctx, total) for r in known}
    surplus = sum(counts.values()) - total
    by_id = {r.learner_id: r for r in known}
    while surplus > 0:
        def eta(k: str) -> float:
            r = by_id[k]
            return learner_time_s(counts[k], bandwidth=r.bandwidth or 0.0,
                                  compute=r.compute or 0.0, ctx=ctx)
        worst = max((k for k in counts if counts[k] > 0), key=lambda k: (eta(k), k))
        counts[worst] -= 1
        surplus -= 1
    out.update(counts)
    return out


@register
class CSA(Allocator):
    """Centralized allocation of a fixed total, minimising the slowest learner's time."""

    name = "csa"
    probe = "benchmark"

    def allocate(self, reports: Sequence[LearnerReport], ctx: RoundContext) -> dict[str, int]:
        total = ctx.total_shards if ctx.total_shards is not None else ctx.num_shards
        return min_makespan_split(reports, total, ctx)

"""DAB, the decentralized allocation of thesis ch. 3: each learner picks its own a_k.

The learner computes its bound from its private benchmarks (thesis eq. 3.5, alg. 10) and
reveals only the whole number a_k; the orchestrator's part is to accept it, keep learners that
said a_k ≤ 0 out of the round, and deal shards (with duplicates when Σa_k exceeds the dataset).
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.allocation.base import Allocator, LearnerReport, RoundContext, register


@register
class DAB(Allocator):
    """Deadline-aware allocation: the learners' own a_k, unchanged (thesis 3.1–3.3)."""

    name = "dab"
    probe = "plan"
    # Under DAB each learner halts training when D passes and uploads what it has.
    halts_at_deadline = True

    def allocate(self, reports: Sequence[LearnerReport], ctx: RoundContext) -> dict[str, int]:
        # a_k ≤ 0 means the learner cannot finish even one shard by D (alg. 10, line 18).
        return {r.learner_id: max(0, int(r.a_k or 0)) for r in reports}

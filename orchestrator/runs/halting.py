"""When a DAB learner must halt so that its answer, not only its training, is in by D.

A learner halts `deadline_s` seconds after the train call *arrived* (docs/algorithms.md, DAB
step 9), but the round ends when its answer *arrives back*: the call's way in, the last batch
past the halt, the upload and the callback all come on top. On this machine that tail made one
DAB round in 15 overrun D by 4.9 % (docs/results.md, "DAB vs CSA"). So the orchestrator learns
each learner's tail from its own answers and tells it to halt that much earlier:

    tail_k = elapsed_k − download_s − train_s

where `elapsed_k` is the orchestrator's own dispatch-to-answer time and `download_s`,
`train_s` are what the learner reports of its work. The lead given to a learner is the largest
tail of its last `KEEP` answers (a spike is not forgotten at once), never more than
`MAX_SHARE`·D, so a learner reporting nonsense (or honestly slow links) can shorten only its
own halt and by at most that share. Kept per learner across tasks, in memory: after a restart
it is learnt again in one round.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.runs.gateway import Reply

KEEP = 3  # answers per learner the lead is the maximum of
MAX_SHARE = 0.3  # the lead never exceeds this share of D


def tail_s(value: Any, elapsed_s: float) -> float | None:
    """Seconds of an answer not spent on the learner's own work, or None when the answer does
    not say (an error, a refused answer, missing or non-finite times)."""
    if not isinstance(value, dict):
        return None
    parts = (value.get("download_s"), value.get("train_s"))
    if not all(isinstance(p, int | float) and not isinstance(p, bool) and math.isfinite(p)
               and p >= 0 for p in parts):
        return None
    return max(0.0, elapsed_s - float(parts[0]) - float(parts[1]))  # type: ignore[arg-type]


class HaltLead:
    """Per learner (kept across its tasks): how many seconds before D it is told to halt."""

    def __init__(self, keep: int = KEEP, max_share: float = MAX_SHARE) -> None:
        self.keep, self.max_share = keep, max_share
        self._tails: dict[str, deque[float]] = {}

    def lead_s(self, learner: str, deadline_s: float) -> float:
        seen = self._tails.get(learner)
        if not seen:
            return 0.0
        return min(max(seen), self.max_share * deadline_s)

    def halt_s(self, learner: str, deadline_s: float) -> float:
        """The `deadline_s` to send to `learner`: D less what its answers take beyond its work."""
        return deadline_s - self.lead_s(learner, deadline_s)

    def observe(self, learner: str, value: Any, elapsed_s: float) -> None:
        """Learn from one answer (answers that say nothing of their times are ignored)."""
        tail = tail_s(value, elapsed_s)
        if tail is not None:
            self._tails.setdefault(learner, deque(maxlen=self.keep)).append(tail)

    def observe_all(self, replies: Iterable[Reply]) -> None:
        """Learn from every reply of a round that is an answer (not an error or a cut-off)."""
        for r in replies:
            if r.error is None:
                self.observe(str(r.learner.id), r.value, r.elapsed_s)

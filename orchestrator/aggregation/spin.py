"""SPIN's server (SPIN paper, algorithm 2): answer every pull at once, aggregate on K or π."""

from __future__ import annotations

from orchestrator.aggregation.base import (
    AsyncAggregator,
    Decision,
    State,
    register_aggregator,
)
from orchestrator.aggregation.robust import RobustRule
from orchestrator.aggregation.staleness import StalenessHandler


@register_aggregator("spin")
class SpinAggregator(AsyncAggregator):
    """SPIN server core.

    * A pull is answered at once with the current model and its version (alg. 2, lines 3–4);
      the server never holds a pull back to wait for outstanding updates (section III-B).
    * A push joins the queue ``Q`` (lines 6–7).
    * Aggregation (line 9) happens as soon as ``|Q| ≥ K``, or once ``π`` seconds have passed
      since the last aggregation while ``Q`` is not empty; with an empty queue an expired
      timer does nothing, and the next push is then aggregated at once.
    * FedAvg weights ``|D_k| / Σ|D_k|`` (line 10), then the version goes up by one.

    ``pi_s`` is the timeout π in seconds; ``pi_s=None`` switches the timeout off (the
    "without π" curves of the paper's fig. 5).
    """

    def __init__(
        self,
        initial_state: State,
        *,
        k: int = 10,
        pi_s: float | None = 30.0,
        staleness: str | StalenessHandler = "none",
        history_limit: int = 256,
        start_time: float = 0.0,
        rule: RobustRule | None = None,
    ) -> None:
        super().__init__(
            initial_state,
            k=k,
            staleness=staleness,
            history_limit=history_limit,
            start_time=start_time,
            rule=rule,
        )
        if pi_s is not None and pi_s <= 0:
            raise ValueError(f"pi_s (timeout π) must be positive seconds or None, got {pi_s}")
        self.pi_s = pi_s

    def pull(self, t: float, client: str, n_samples: int) -> list[Decision]:
        return [self._dispatch(t, client)]

    def _after_push(self, t: float) -> list[Decision]:
        return self._maybe_aggregate(t)

    def tick(self, t: float) -> list[Decision]:
        return self._maybe_aggregate(t)

    def next_deadline(self) -> float | None:
        if self.pi_s is None or not self.queue:
            return None
        return self.last_aggregation + self.pi_s

    def _maybe_aggregate(self, t: float) -> list[Decision]:
        if len(self.queue) >= self.k:
            return [self._aggregate(t, "k")]
        # Compare against the deadline itself (not t − last ≥ π) so a tick scheduled at
        # next_deadline() always fires despite floating-point rounding.
        if self.queue and self.pi_s is not None and t >= self.last_aggregation + self.pi_s:
            return [self._aggregate(t, "timeout")]
        return []

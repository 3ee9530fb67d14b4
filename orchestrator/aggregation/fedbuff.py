"""FedBuff (Nguyen et al. 2022) as SPIN ran it: server-selected clients, a K-update buffer."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from orchestrator.aggregation.base import (
    AsyncAggregator,
    Decision,
    State,
    Update,
    register_aggregator,
)
from orchestrator.aggregation.robust import RobustRule
from orchestrator.aggregation.staleness import StalenessHandler


@register_aggregator("fedbuff")
class FedBuffAggregator(AsyncAggregator):
    """FedBuff server core, with the selection rule of SPIN's experiments (section V-B6).

    * The server, not the client, decides who trains: at the start of every round (the start
      of the task and after each aggregation) it draws up to ``concurrency`` clients uniformly
      at random from the registered clients that are not already training, to fill the free
      training slots.
    * A drawn client that holds no unused data (it has not pulled since its last training)
      cannot take part in that round; its slot stays empty. A pull from a FedBuff client only
      tells the server "I now hold unused data"; it is not answered by itself, except from a
      client counted as training, which has dropped that training: it gets the current model
      again at once.
    * A round that cannot complete (training + buffered < K) draws again every
      ``selection_interval_s`` seconds, so a server whose draws all missed does not wait
      forever.
    * Aggregation after exactly ``K`` buffered updates, FedAvg weights ``|D_k|``, no timeout.

    ``seed`` fixes the random draws, so a run is reproducible.
    """

    def __init__(
        self,
        initial_state: State,
        *,
        k: int = 10,
        concurrency: int = 20,
        selection_interval_s: float = 10.0,
        seed: int = 0,
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
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1 client per round, got {concurrency}")
        if selection_interval_s <= 0:
            raise ValueError(
                f"selection_interval_s must be positive seconds, got {selection_interval_s}"
            )
        self.concurrency = concurrency
        self.selection_interval_s = selection_interval_s
        self.rng = random.Random(seed)
        self.holding: dict[str, int] = {}
        self.last_selection: float | None = None
        self.skipped = 0

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        snap["times"]["last_selection"] = self.last_selection
        version, internal, gauss = self.rng.getstate()
        snap.update(holding=dict(self.holding), skipped=self.skipped,
                    rng=[version, list(internal), gauss])
        return snap

    def restore(self, snap: dict[str, Any], models: Mapping[int, State],
                queue: list[Update]) -> None:
        super().restore(snap, models, queue)
        last = snap["times"].get("last_selection")
        self.last_selection = None if last is None else float(last)
        self.holding = {str(c): int(n) for c, n in snap.get("holding", {}).items()}
        self.skipped = int(snap.get("skipped", 0))
        if snap.get("rng") is not None:
            version, internal, gauss = snap["rng"]
            self.rng.setstate((version, tuple(internal), gauss))

    def pull(self, t: float, client: str, n_samples: int) -> list[Decision]:
        self.register(client)
        if client in self.outstanding:
            # It pulls while counted as training: it dropped that training (its agent or this
            # server restarted, its upload was lost). Send it the current model again, in the
            # slot it holds; otherwise the slot would stay taken for ever.
            return [self._dispatch(t, client)]
        self.holding[client] = n_samples
        return []

    def _after_push(self, t: float) -> list[Decision]:
        if len(self.queue) >= self.k:
            out: list[Decision] = [self._aggregate(t, "k")]
            out.extend(self.select(t))
            return out
        return []

    def release(self, t: float, client: str) -> list[Decision]:
        """A selected client that is gone would hold its slot for ever (a round waits for K
        updates, no timeout): free the slot, forget that it holds data (it says so again by
        pulling once it is back) and draw for the free slot now."""
        held = client in self.outstanding
        super().release(t, client)
        self.holding.pop(client, None)
        if held and len(self.outstanding) + len(self.queue) < self.k:
            return self.select(t)
        return []

    def tick(self, t: float) -> list[Decision]:
        deadline = self.next_deadline()
        if deadline is not None and t >= deadline:
            return self.select(t)
        return []

    def next_deadline(self) -> float | None:
        if self.last_selection is None:
            return self.last_aggregation
        if len(self.outstanding) + len(self.queue) >= self.k:
            return None
        if len(self.outstanding) >= self.concurrency:
            return None
        return self.last_selection + self.selection_interval_s

    def select(self, t: float) -> list[Decision]:
        """Draw clients for the free training slots at time ``t`` (seconds); dispatch those
        that hold unused data. The others are excluded this round (counted in ``skipped``)."""
        self.last_selection = t
        free = self.concurrency - len(self.outstanding)
        idle = [c for c in self.clients if c not in self.outstanding]
        if free <= 0 or not idle:
            return []
        drawn = self.rng.sample(idle, min(free, len(idle)))
        out: list[Decision] = []
        for client in drawn:
            if client in self.holding:
                del self.holding[client]
                out.append(self._dispatch(t, client))
            else:
                self.skipped += 1
        return out

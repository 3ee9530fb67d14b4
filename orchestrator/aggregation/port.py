"""PORT (Su & Li, IWQoS 2022) as SPIN ran it: staleness- and similarity-weighted FedBuff."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from orchestrator.aggregation.base import (
    Decision,
    State,
    StopTraining,
    Update,
    register_aggregator,
)
from orchestrator.aggregation.fedbuff import FedBuffAggregator
from orchestrator.aggregation.robust import RobustRule
from orchestrator.aggregation.staleness import StalenessHandler


def _flat(state: State, names: list[str]) -> torch.Tensor:
    return torch.cat([state[n].detach().reshape(-1).to(torch.float64) for n in names])


@register_aggregator("port")
class PortAggregator(FedBuffAggregator):
    """PORT server core: FedBuff's selection and K-buffer, with two changes (docs/algorithms.md).

    Aggregation weight of update k (trained from ``w_base``, staleness ``τ_k``, ``|D_k|``
    samples), before normalisation::

        ω_k = |D_k|/Σ|D_j| · (β_sim · sim_k + β_stale / (1 + τ_k))
        sim_k = max(0, cos(w_k − w_base, w_now − w_base))   if τ_k ≥ 1, else 1

    An update that moves the model the way the server has moved since the client pulled is
    trusted more; a stale one less. Negative cosine is clipped to 0 so weights stay
    non-negative.

    Push-pull: after every aggregation, each client still training from a version at least
    ``staleness_bound`` versions old is told to stop and push what it has
    (:class:`StopTraining`, once per training).
    """

    def __init__(
        self,
        initial_state: State,
        *,
        k: int = 10,
        concurrency: int = 20,
        selection_interval_s: float = 10.0,
        seed: int = 0,
        staleness_bound: int = 3,
        similarity_weight: float = 1.0,
        staleness_weight: float = 1.0,
        staleness: str | StalenessHandler = "none",
        history_limit: int = 256,
        start_time: float = 0.0,
        rule: RobustRule | None = None,
    ) -> None:
        super().__init__(
            initial_state,
            k=k,
            concurrency=concurrency,
            selection_interval_s=selection_interval_s,
            seed=seed,
            staleness=staleness,
            history_limit=history_limit,
            start_time=start_time,
            rule=rule,
        )
        if staleness_bound < 1:
            raise ValueError(f"staleness_bound must be at least 1 version, got {staleness_bound}")
        if similarity_weight < 0 or staleness_weight < 0:
            raise ValueError("similarity_weight and staleness_weight must be ≥ 0")
        self.staleness_bound = staleness_bound
        self.similarity_weight = similarity_weight
        self.staleness_weight = staleness_weight
        self._stopped: set[tuple[str, int]] = set()
        self.similarities: list[float] = []

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        snap["stopped"] = sorted([c, b] for c, b in self._stopped)
        return snap

    def restore(self, snap: dict[str, Any], models: Mapping[int, State],
                queue: list[Update]) -> None:
        super().restore(snap, models, queue)
        self._stopped = {(str(c), int(b)) for c, b in snap.get("stopped", [])}

    def _raw_weights(self, updates: list[Update]) -> list[float]:
        names = [n for n, t in self.model.items() if t.is_floating_point()]
        now = _flat(self.model, names)
        total = float(sum(u.n_samples for u in updates))
        out: list[float] = []
        for u in updates:
            tau = self.version - u.base_version
            if tau >= 1:
                base = _flat(self.base_state(u.base_version), names)
                delta = _flat(u.state, names) - base
                sim = float(F.cosine_similarity(delta, now - base, dim=0).clamp(min=0.0))
            else:
                sim = 1.0
            self.similarities.append(sim)
            out.append(
                u.n_samples
                / total
                * (self.similarity_weight * sim + self.staleness_weight / (1.0 + tau))
            )
        return out

    def _after_push(self, t: float) -> list[Decision]:
        out = super()._after_push(t)
        if out:
            out.extend(self._stop_stale(t))
        return out

    def _stop_stale(self, t: float) -> list[Decision]:
        out: list[Decision] = []
        for client, base in self.outstanding.items():
            tau = self.version - base
            if tau >= self.staleness_bound and (client, base) not in self._stopped:
                self._stopped.add((client, base))
                out.append(StopTraining(t, client, tau))
        return out

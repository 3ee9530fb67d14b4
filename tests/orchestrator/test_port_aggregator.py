"""PORT core: similarity- and staleness-weighted aggregation and stop requests past the bound."""

from __future__ import annotations

import pytest
import torch

from orchestrator.aggregation import Aggregated, PortAggregator, StopTraining


def _state(*v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(v, dtype=torch.float32)}


def _port(**kw: object) -> PortAggregator:
    agg = PortAggregator(_state(0.0, 0.0), concurrency=10, seed=0, **kw)  # type: ignore[arg-type]
    for i in range(10):
        agg.register(f"c{i}")
        agg.pull(0.0, f"c{i}", 10)
    agg.tick(0.0)
    return agg


def test_fresh_updates_get_fedavg_weights() -> None:
    agg = _port(k=2)
    a, b = sorted(agg.outstanding)[:2]
    agg.push(1.0, a, _state(1.0, 0.0), 0, 10)
    rec = agg.push(2.0, b, _state(0.0, 1.0), 0, 30)[0]
    assert isinstance(rec, Aggregated)
    # τ = 0: ω_k = n_k/Σn · (1 + 1) -> normalised to the sample fractions.
    assert rec.weights == pytest.approx((0.25, 0.75))


def test_stale_update_weighted_by_similarity_and_staleness() -> None:
    agg = _port(k=2, staleness_bound=5)
    clients = sorted(agg.outstanding)
    agg.push(1.0, clients[0], _state(1.0, 0.0), 0, 10)
    agg.push(1.0, clients[1], _state(1.0, 0.0), 0, 10)  # version 1: model moved along +x
    assert torch.allclose(agg.model["w"], torch.tensor([1.0, 0.0]))
    # Two stale updates from version 0: one agrees with the server's move, one is orthogonal.
    agg.push(3.0, clients[2], _state(2.0, 0.0), 0, 10)  # cos = 1
    rec = agg.push(3.0, clients[3], _state(0.0, 2.0), 0, 10)[0]  # cos = 0
    assert isinstance(rec, Aggregated)
    assert rec.staleness == (1, 1)
    # ω = 1/2·(1 + 1/2) and 1/2·(0 + 1/2) -> 0.75, 0.25
    assert rec.weights == pytest.approx((0.75, 0.25))


def test_clients_past_the_staleness_bound_are_told_to_stop() -> None:
    agg = _port(k=1, staleness_bound=2)
    slow = sorted(agg.outstanding)[-1]
    fast = sorted(agg.outstanding)[:2]
    out1 = agg.push(1.0, fast[0], _state(1.0, 1.0), 0, 1)
    assert not any(isinstance(x, StopTraining) for x in out1)  # slow is 1 version behind
    out2 = agg.push(2.0, fast[1], _state(1.0, 1.0), 0, 1)
    stops = [x for x in out2 if isinstance(x, StopTraining)]
    assert slow in {s.client for s in stops}
    assert all(s.staleness >= 2 for s in stops)
    # Told once per training, not at every later aggregation.
    other = next(c for c in sorted(agg.outstanding) if c != slow)
    out3 = agg.push(3.0, other, _state(1.0, 1.0), agg.outstanding[other], 1)
    assert isinstance(out3[0], Aggregated)
    assert slow not in {x.client for x in out3 if isinstance(x, StopTraining)}

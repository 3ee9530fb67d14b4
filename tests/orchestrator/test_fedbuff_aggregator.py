"""FedBuff core as the SPIN paper ran it: random server selection, clients without data left out."""

from __future__ import annotations

import torch

from orchestrator.aggregation import Aggregated, Dispatch, FedBuffAggregator, create_aggregator


def _state(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3,), v)}


def _fedbuff(n_clients: int, **kw: object) -> FedBuffAggregator:
    agg = create_aggregator("fedbuff", _state(0.0), **kw)
    assert isinstance(agg, FedBuffAggregator)
    for i in range(n_clients):
        agg.register(f"c{i}")
    return agg


def test_selection_excludes_clients_without_data() -> None:
    agg = _fedbuff(50, k=2, concurrency=50, seed=3)
    with_data = {"c1", "c7", "c30"}
    for c in sorted(with_data):
        assert agg.pull(0.0, c, 5) == []  # a pull alone is not answered
    out = agg.tick(0.0)
    dispatched = {d.client for d in out if isinstance(d, Dispatch)}
    assert dispatched == with_data  # all drawn, only those with data take part
    assert agg.skipped == 47


def test_draw_is_a_random_subset_of_size_concurrency() -> None:
    agg = _fedbuff(100, k=10, concurrency=20, seed=1)
    for i in range(100):
        agg.pull(0.0, f"c{i}", 5)
    out = agg.tick(0.0)
    assert len(out) == 20 and len({d.client for d in out}) == 20
    assert len(agg.outstanding) == 20
    # Another seed draws another subset.
    other = _fedbuff(100, k=10, concurrency=20, seed=2)
    for i in range(100):
        other.pull(0.0, f"c{i}", 5)
    assert {d.client for d in other.tick(0.0)} != {d.client for d in out}


def test_aggregates_after_k_without_timeout_then_starts_a_new_round() -> None:
    agg = _fedbuff(4, k=2, concurrency=2, seed=0, selection_interval_s=5.0)
    for i in range(4):
        agg.pull(0.0, f"c{i}", 10)
    first = [d for d in agg.tick(0.0) if isinstance(d, Dispatch)]
    assert len(first) == 2
    a, b = (d.client for d in first)
    assert agg.push(1.0, a, _state(1.0), 0, 10) == []
    # One update waits: no timeout, however long.
    assert agg.next_deadline() is None
    assert agg.tick(1e6) == []
    out = agg.push(1e6 + 1, b, _state(3.0), 0, 30)
    rec = out[0]
    assert isinstance(rec, Aggregated) and rec.trigger == "k" and rec.version == 1
    assert torch.allclose(agg.model["w"], torch.full((3,), 2.5))
    redrawn = {d.client for d in out[1:] if isinstance(d, Dispatch)}
    # A new round draws two slots; only the two clients still holding data can take part.
    assert redrawn <= {"c0", "c1", "c2", "c3"} - {a, b}
    assert len(redrawn) + agg.skipped == 2
    assert all(agg.outstanding[c] == 1 for c in redrawn)
    assert redrawn.isdisjoint({a, b})  # a and b used their data and have not pulled again


def test_stuck_round_draws_again_after_the_interval() -> None:
    agg = _fedbuff(10, k=2, concurrency=1, seed=0, selection_interval_s=5.0)
    assert agg.tick(0.0) == []  # nobody holds data
    assert agg.next_deadline() == 5.0
    for i in range(10):
        agg.pull(1.0, f"c{i}", 5)
    assert agg.tick(4.0) == []
    out = agg.tick(5.0)
    assert len(out) == 1 and isinstance(out[0], Dispatch)


def test_a_client_that_pulls_while_training_gets_the_current_model_again() -> None:
    # It dropped its training (a restart, a lost upload): its slot must not stay taken.
    agg = FedBuffAggregator({"w": torch.zeros(2)}, k=2, concurrency=1, seed=0)
    agg.pull(0.0, "a", 5)
    (first,) = agg.select(0.0)
    assert first.client == "a" and agg.outstanding == {"a": 0}
    (again,) = agg.pull(1.0, "a", 5)
    assert again.client == "a" and again.version == 0 and agg.outstanding == {"a": 0}

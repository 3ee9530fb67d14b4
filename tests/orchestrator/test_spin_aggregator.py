"""SPIN server core (alg. 2): trigger rule, FedAvg weights, versions and staleness, by script."""

from __future__ import annotations

import pytest
import torch

from orchestrator.aggregation import (
    Aggregated,
    BadUpdate,
    Dispatch,
    SpinAggregator,
    UnknownVersion,
    create_aggregator,
)


def _state(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((4,), v), "b": torch.full((2,), v)}


def _spin(k: int = 3, pi_s: float | None = 10.0) -> SpinAggregator:
    agg = create_aggregator("spin", _state(0.0), k=k, pi_s=pi_s)
    assert isinstance(agg, SpinAggregator)
    return agg


def test_pull_is_answered_at_once_with_current_model_and_version() -> None:
    agg = _spin()
    (d,) = agg.pull(0.5, "a", 10)
    assert isinstance(d, Dispatch)
    assert (d.client, d.version, d.time) == ("a", 0, 0.5)
    assert torch.equal(d.state["w"], torch.zeros(4))


def test_aggregates_when_k_updates_are_queued() -> None:
    agg = _spin(k=3, pi_s=100.0)
    for c in "abc":
        agg.pull(0.0, c, 10)
    assert agg.push(1.0, "a", _state(1.0), 0, 10) == []
    assert agg.push(2.0, "b", _state(1.0), 0, 10) == []
    (rec,) = agg.push(3.0, "c", _state(1.0), 0, 10)
    assert isinstance(rec, Aggregated)
    assert (rec.trigger, rec.version, rec.time) == ("k", 1, 3.0)
    assert agg.version == 1 and agg.queue == []
    assert agg.last_aggregation == 3.0


@pytest.mark.parametrize("queued", [1, 2])
def test_timeout_aggregates_fewer_than_k(queued: int) -> None:
    agg = _spin(k=3, pi_s=10.0)
    for i in range(queued):
        agg.pull(0.0, f"c{i}", 5)
        agg.push(1.0 + i, f"c{i}", _state(2.0), 0, 5)
    assert agg.next_deadline() == 10.0
    assert agg.tick(9.999) == []
    (rec,) = agg.tick(10.0)
    assert isinstance(rec, Aggregated)
    assert rec.trigger == "timeout" and len(rec.clients) == queued
    assert agg.version == 1 and agg.next_deadline() is None


def test_expired_timeout_with_empty_queue_does_nothing() -> None:
    agg = _spin(k=3, pi_s=10.0)
    assert agg.next_deadline() is None
    assert agg.tick(50.0) == []
    assert agg.version == 0 and agg.aggregations == []
    # The next push finds π long expired and is aggregated on its own, at once.
    agg.pull(50.0, "a", 4)
    (rec,) = agg.push(60.0, "a", _state(1.0), 0, 4)
    assert isinstance(rec, Aggregated) and rec.trigger == "timeout"


def test_timer_restarts_at_every_aggregation() -> None:
    agg = _spin(k=2, pi_s=10.0)
    for c in "abc":
        agg.pull(0.0, c, 1)
    agg.push(1.0, "a", _state(1.0), 0, 1)
    agg.push(4.0, "b", _state(1.0), 0, 1)  # K reached at t = 4
    agg.push(5.0, "c", _state(1.0), 0, 1)
    assert agg.next_deadline() == 14.0
    assert agg.tick(10.5) == []


def test_no_timeout_when_pi_is_off() -> None:
    agg = _spin(k=3, pi_s=None)
    agg.pull(0.0, "a", 1)
    agg.push(1.0, "a", _state(1.0), 0, 1)
    assert agg.next_deadline() is None
    assert agg.tick(1e9) == []


def test_fedavg_weights_are_sample_fractions() -> None:
    agg = _spin(k=2)
    agg.pull(0.0, "a", 10)
    agg.pull(0.0, "b", 30)
    agg.push(1.0, "a", _state(1.0), 0, 10)
    (rec,) = agg.push(2.0, "b", _state(5.0), 0, 30)
    assert isinstance(rec, Aggregated)
    assert rec.weights == pytest.approx((0.25, 0.75))
    assert rec.n_samples == (10, 30)
    # Σ p_k w_k, the current model gets no weight (alg. 2 line 10).
    assert torch.allclose(agg.model["w"], torch.full((4,), 4.0))


def test_version_and_staleness_bookkeeping() -> None:
    agg = _spin(k=2, pi_s=100.0)
    agg.pull(0.0, "slow", 1)  # trains from version 0
    agg.pull(0.0, "a", 1)
    agg.pull(0.0, "b", 1)
    agg.push(1.0, "a", _state(1.0), 0, 1)
    agg.push(2.0, "b", _state(1.0), 0, 1)  # -> version 1
    (d,) = agg.pull(3.0, "a", 1)
    assert d.version == 1
    agg.push(4.0, "a", _state(1.0), 1, 1)
    (rec,) = agg.push(5.0, "slow", _state(1.0), 0, 1)  # merged into version 1 -> staleness 1
    assert isinstance(rec, Aggregated)
    assert rec.version == 2
    assert dict(zip(rec.clients, rec.staleness, strict=True)) == {"a": 0, "slow": 1}
    assert rec.base_versions == (1, 0)
    assert [r.version for r in agg.aggregations] == [1, 2]
    assert agg.outstanding == {}


def test_bad_updates_are_rejected_and_counted() -> None:
    agg = _spin(k=1)
    agg.pull(0.0, "a", 1)
    bad = [
        ({"w": torch.zeros(4)}, 0, BadUpdate),  # missing tensor
        ({"w": torch.zeros(5), "b": torch.zeros(2)}, 0, BadUpdate),  # shape
        ({"w": torch.zeros(4, dtype=torch.float64), "b": torch.zeros(2)}, 0, BadUpdate),
        ({"w": torch.tensor([0.0, float("nan"), 0, 0]), "b": torch.zeros(2)}, 0, BadUpdate),
        (_state(1.0), 7, UnknownVersion),
    ]
    for state, base, exc in bad:
        with pytest.raises(exc):
            agg.push(1.0, "a", state, base, 1)
    assert agg.rejected == len(bad)
    assert agg.queue == [] and agg.version == 0


@pytest.mark.parametrize("lr", [0.5, 1.0, 2.0])
def test_server_learning_rate_scales_the_buffers_step(lr: float) -> None:
    # model += η_g · (FedAvg of the buffer − model): 0 → 4 averaged, so the model lands at 4·η_g.
    agg = _spin(k=2, pi_s=None)
    agg.server_lr = lr
    for c in "ab":
        agg.pull(0.0, c, 10)
    agg.push(1.0, "a", _state(2.0), 0, 10)
    (rec,) = agg.push(2.0, "b", _state(6.0), 0, 10)
    assert isinstance(rec, Aggregated)
    assert torch.allclose(agg.model["w"], torch.full((4,), 4.0 * lr))
    assert torch.allclose(agg.base_state(1)["b"], torch.full((2,), 4.0 * lr))

"""Staleness handlers (001 §5 baselines) inside an async aggregator."""

from __future__ import annotations

import pytest
import torch

from orchestrator.aggregation import (
    Aggregated,
    DCASGDStaleness,
    PolynomialStaleness,
    SpinAggregator,
    UnknownAggregator,
    create_staleness,
)


def test_polynomial_scale() -> None:
    h = PolynomialStaleness(a=0.5)
    assert h.scale(0) == 1.0
    assert h.scale(3) == pytest.approx(0.5)
    assert create_staleness("none").scale(100) == 1.0


def test_unknown_handler_name() -> None:
    with pytest.raises(UnknownAggregator, match="choose one of"):
        create_staleness("exp")


def test_poly_keeps_the_weight_taken_from_a_stale_update_on_the_current_model() -> None:
    agg = SpinAggregator({"w": torch.zeros(1)}, k=1, pi_s=None, staleness="poly")
    agg.pull(0.0, "old", 1)
    agg.pull(0.0, "a", 1)
    agg.push(1.0, "a", {"w": torch.full((1,), 1.0)}, 0, 1)  # v1 = 1.0
    agg.pull(1.0, "b", 1)
    agg.push(2.0, "b", {"w": torch.full((1,), 1.0)}, 1, 1)  # v2 = 1.0
    agg.pull(2.0, "c", 1)
    agg.push(3.0, "c", {"w": torch.full((1,), 1.0)}, 2, 1)  # v3 = 1.0
    (rec,) = agg.push(4.0, "old", {"w": torch.full((1,), 5.0)}, 0, 1)  # τ = 3 -> s = 0.5
    assert isinstance(rec, Aggregated)
    assert rec.staleness == (3,) and rec.weights == pytest.approx((0.5,))
    assert agg.model["w"].item() == pytest.approx(0.5 * 1.0 + 0.5 * 5.0)


def test_dcasgd_compensation_formula_and_fresh_identity() -> None:
    h = DCASGDStaleness(c=2.0)
    base = {"w": torch.tensor([0.0, 1.0])}
    upd = {"w": torch.tensor([0.5, 0.0])}  # Δ = [0.5, -1]
    now = {"w": torch.tensor([1.0, 2.0])}  # drift = [1, 1]
    out = h.adjust(upd, base, now)
    # now + Δ − c Δ⊙Δ⊙drift = [1 + 0.5 − 2·0.25, 2 − 1 − 2·1]
    assert torch.allclose(out["w"], torch.tensor([1.0, -1.0]))
    same = h.adjust(upd, base, base)
    assert torch.allclose(same["w"], upd["w"])

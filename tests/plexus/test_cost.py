"""Cost model: η(a) (thesis eq. 3.4) and the DAB bound (eq. 3.5) on hand-worked values."""

from __future__ import annotations

import math

import pytest

from plexus.cost import dab_bound, eta

# Hand-worked case: Ω_m = 1 MB, Ω_d = 2 MB, b = 1 MB/s, μ = 2, s = 500, c = 1000 samples/s.
# η(a) = (1 + 2a)/1 + 2·a·500/1000 + 1/1 = 2 + 3a seconds.
CASE = dict(
    model_bytes=1e6,
    shard_bytes=2e6,
    bandwidth=1e6,
    iterations=2,
    shard_samples=500,
    compute=1000.0,
)


def test_eta_matches_eq_3_4_by_hand() -> None:
    assert eta(0, **CASE) == pytest.approx(2.0)
    assert eta(1, **CASE) == pytest.approx(5.0)
    assert eta(4, **CASE) == pytest.approx(14.0)


@pytest.mark.parametrize(
    ("deadline", "expected"),
    [
        (14.5, 4),  # (14.5 − 2)/3 = 4.17 → 4
        (14.0, 3),  # bound exactly 4: eq. 3.5 is strict, so 3 (η(4) = 14 is not < 14)
        (5.01, 1),
        (5.0, 0),  # one shard takes exactly D: sit out
        (1.5, 0),  # not even the model round trip fits: sit out (alg. 10 line 18)
    ],
)
def test_dab_bound_matches_eq_3_5(deadline: float, expected: int) -> None:
    a = dab_bound(deadline=deadline, **CASE)
    assert a == expected
    if a > 0:
        assert eta(a, **CASE) < deadline
    assert eta(a + 1, **CASE) >= deadline


def test_dab_bound_is_capped_by_max_shards() -> None:
    assert dab_bound(deadline=1000.0, max_shards=7, **CASE) == 7


def test_dab_bound_agrees_with_the_closed_form_on_a_grid() -> None:
    for deadline in (3.0, 7.7, 20.0, 61.3):
        for compute in (50.0, 800.0, 12_345.0):
            args = {**CASE, "compute": compute}
            per_shard = 2 * 500 / compute + 2e6 / 1e6
            closed = (deadline - 2 * 1e6 / 1e6) / per_shard
            expected = max(math.ceil(closed) - 1, 0)
            assert dab_bound(deadline=deadline, **args) == expected


def test_rates_must_be_positive() -> None:
    with pytest.raises(ValueError, match="bandwidth"):
        eta(1, **{**CASE, "bandwidth": 0.0})
    with pytest.raises(ValueError, match="deadline"):
        dab_bound(deadline=-1.0, **CASE)

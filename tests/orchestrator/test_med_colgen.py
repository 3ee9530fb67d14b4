"""MED's column-generation bound: exact 0/1 covers, and bounds that never pass a known optimum."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from orchestrator.allocation.med import (
    check_allocation,
    coefficients,
    expected_delays,
    greedy_allocation,
    med_objective,
    solve_med,
    thesis_instance,
)
from orchestrator.allocation.med.colgen import colgen_bound, int_cover, lp_cover
from orchestrator.allocation.med.lagrange import lagrangian_bound
from tests.orchestrator.test_med import small_instance


def _enumerate_cover(q: np.ndarray, w: np.ndarray, D: int) -> float:
    best = np.inf
    for pick in itertools.product((0, 1), repeat=q.size):
        z = np.array(pick)
        if (q * z).sum() >= D:
            best = min(best, float((w * z).sum()))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_integer_cover_is_the_enumerated_optimum_and_lp_cover_is_below_it(seed: int) -> None:
    rng = np.random.default_rng(seed)
    Q = rng.integers(0, 6, size=(5, 7)).astype(float)
    w = rng.normal(1.0, 1.0, size=7)  # some prices negative, as free multipliers can be
    D = int(rng.integers(4, 14))

    cost, z = int_cover(Q, w, D)
    lp, _ = lp_cover(Q, w, D)

    for r in range(Q.shape[0]):
        exact = _enumerate_cover(Q[r], w, D)
        assert cost[r] == pytest.approx(exact) if np.isfinite(exact) else cost[r] == np.inf
        if np.isfinite(exact):
            assert set(np.unique(z[r])) <= {0.0, 1.0}
            assert (Q[r] * z[r]).sum() >= D
            assert (w * z[r]).sum() == pytest.approx(exact)
        assert lp[r] <= cost[r] + 1e-9


def _incumbent(inst):  # type: ignore[no-untyped-def]
    alloc = greedy_allocation(inst)
    assert alloc is not None
    owner = np.where((alloc > 0).any(axis=0), np.argmax(alloc > 0, axis=0), -1)
    return owner, expected_delays(inst, alloc).max(axis=1)


@pytest.mark.parametrize("integer", [True, False])
@pytest.mark.parametrize(("seed", "min_shards"), [(0, 1), (1, 0), (4, 1), (5, 0), (6, 1)])
def test_bound_never_exceeds_the_milp_optimum(seed: int, min_shards: int,
                                              integer: bool) -> None:
    inst = small_instance(seed, n=5, m=2, min_shards=min_shards)
    exact = solve_med(inst, solver="highs", mip_gap=1e-9, time_limit_s=20)
    assert exact.status == "optimal" and exact.allocation is not None
    # The optimum is the objective of the MILP's allocation (its own t columns may sit up to
    # its feasibility tolerance, ~1e-6 s, under it).
    optimum = med_objective(inst, exact.allocation)
    co = coefficients(inst)
    need = max(1, min_shards)
    owner, times = _incumbent(inst)
    sub = lagrangian_bound(co, need=need, equality=min_shards > 0, incumbent=None,
                           owner=owner, task_times=times, max_iter=20)

    cg = colgen_bound(co, need=need, equality=min_shards > 0, owner=owner, task_times=times,
                      u_start=sub.u, deadline_s=20.0, integer_cover=integer)

    assert cg.integer_cover is integer
    assert cg.bound <= optimum * (1 + 1e-9)
    # It starts from the subgradient's multipliers with exact pricing: never looser.
    assert cg.bound >= sub.bound - 1e-9 * abs(sub.bound)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bound_on_thesis_instances_is_below_the_dp_optimum_and_the_answer_feasible(
        seed: int) -> None:
    inst = thesis_instance(seed=seed)
    optimum = solve_med(inst, solver="dp")
    assert optimum.status == "optimal" and optimum.objective is not None
    co = coefficients(inst)
    owner, times = _incumbent(inst)

    cg = colgen_bound(co, need=1, equality=True, owner=owner, task_times=times,
                      deadline_s=20.0)
    res = solve_med(inst, solver="lagrange", time_limit_s=1.5, mip_gap=1e-9)

    assert cg.converged
    assert cg.bound <= optimum.objective * (1 + 1e-9)
    assert res.allocation is not None and check_allocation(inst, res.allocation) == []
    assert res.bound is not None and res.objective is not None
    assert res.bound <= optimum.objective * (1 + 1e-9) <= res.objective * (1 + 1e-9)

"""MED (thesis eq. 4.4): optimum against brute force on both backends, constraints, diagnosis."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from orchestrator.allocation.med import (
    MedInstance,
    MedLearner,
    MedTask,
    build_milp,
    check_allocation,
    greedy_allocation,
    med_objective,
    scaled_instance,
    solve_med,
    thesis_instance,
)
from orchestrator.allocation.med.solvers import GUROBI_SIZE_LIMIT, gurobi_importable

BACKENDS = ["highs", pytest.param("gurobi", marks=pytest.mark.skipif(
    not gurobi_importable(), reason="gurobipy not installed"))]


def small_instance(seed: int, *, n: int = 4, m: int = 2, budget: float = 100.0,
                   min_shards: int = 1, deadline: float = 60.0) -> MedInstance:
    """Two states, a handful of shards: small enough to enumerate every allocation."""
    rng = np.random.default_rng(seed)
    tasks = [MedTask(name=f"t{i}", shards=int(rng.integers(3, 7)), deadline_s=deadline,
                      model_bytes=float(rng.uniform(1e6, 4e6)), shard_bytes=1e6)
             for i in range(m)]
    learners = []
    for j in range(n):
        p = float(rng.uniform(0.2, 0.8))
        learners.append(MedLearner(
            name=f"w{j}", price=float(np.round(rng.uniform(0.5, 1.5), 2)),
            state_probs=[p, 1 - p],
            bandwidth=[float(rng.uniform(2e6, 8e6)), float(rng.uniform(0.5e6, 2e6))],
            compute={t.name: [float(rng.uniform(0.3, 2.0)), float(rng.uniform(0.1, 0.5))]
                     for t in tasks},
        ))
    return MedInstance(budget=budget, min_shards=min_shards, tasks=tasks, learners=learners)


def brute_force(inst: MedInstance) -> float | None:
    """The optimum of eq. 4.4 by enumerating every integer allocation (None if infeasible)."""
    n = len(inst.learners)
    best: float | None = None
    per_task = []
    for t in inst.tasks:  # every way to write D_i as n non-negative parts
        parts = [c for c in itertools.product(range(t.shards + 1), repeat=n) if sum(c) == t.shards]
        per_task.append(parts)
    for combo in itertools.product(*per_task):
        alloc = np.array(combo)
        if ((alloc > 0).sum(axis=0) > 1).any():
            continue
        if check_allocation(inst, alloc):
            continue
        obj = med_objective(inst, alloc)
        if best is None or obj < best:
            best = obj
    return best


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("seed", "min_shards", "budget"), [(0, 1, 100.0), (1, 0, 100.0),
                                                            (2, 1, 9.0), (3, 0, 6.5)])
def test_optimum_matches_brute_force(backend: str, seed: int, min_shards: int,
                                     budget: float) -> None:
    inst = small_instance(seed, min_shards=min_shards, budget=budget)
    expected = brute_force(inst)
    assert expected is not None, "test instance should be feasible"

    res = solve_med(inst, solver=backend, time_limit_s=20, mip_gap=1e-9)

    assert res.status == "optimal" and res.backend == backend
    assert res.allocation is not None
    assert check_allocation(inst, res.allocation) == []
    assert med_objective(inst, res.allocation) == pytest.approx(expected, rel=1e-6)
    assert res.objective == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("seed", "min_shards"), [(0, 1), (1, 0), (4, 1), (5, 0)])
def test_subset_dp_matches_brute_force(seed: int, min_shards: int) -> None:
    inst = small_instance(seed, min_shards=min_shards)
    expected = brute_force(inst)
    assert expected is not None

    res = solve_med(inst, solver="dp")

    assert res.backend == "dp" and res.status == "optimal" and res.gap == 0.0
    assert res.allocation is not None and check_allocation(inst, res.allocation) == []
    assert res.objective == pytest.approx(expected, rel=1e-9)


def test_subset_dp_hands_a_binding_budget_to_the_milp() -> None:
    inst = small_instance(2, budget=8.0)  # the fastest split costs more than 8
    expected = brute_force(inst)
    res = solve_med(inst, solver="dp", mip_gap=1e-9)
    assert res.backend in ("highs", "gurobi")
    assert any("subset DP did not decide" in n and "budget" in n for n in res.notes)
    assert res.objective == pytest.approx(expected, rel=1e-6)


def test_subset_dp_agrees_with_milp_on_thesis_instance() -> None:
    inst = thesis_instance(seed=1, n_learners=6)
    dp = solve_med(inst, solver="auto")
    milp = solve_med(inst, solver="highs", time_limit_s=30, mip_gap=1e-9)
    assert dp.backend == "dp"
    assert milp.status == "optimal"
    assert dp.objective == pytest.approx(milp.objective, rel=1e-6)


@pytest.mark.skipif(not gurobi_importable(), reason="gurobipy not installed")
def test_backends_agree_on_thesis_sized_instance() -> None:
    inst = thesis_instance(seed=3, n_learners=6, n_tasks=2)
    a = solve_med(inst, solver="highs", time_limit_s=20, mip_gap=1e-9)
    b = solve_med(inst, solver="gurobi", time_limit_s=20, mip_gap=1e-9)
    assert a.status == b.status == "optimal"
    assert a.objective == pytest.approx(b.objective, rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_learner_serves_at_most_one_task(backend: str) -> None:
    inst = thesis_instance(seed=5)
    res = solve_med(inst, solver=backend, time_limit_s=1.0)
    assert res.allocation is not None
    assert ((res.allocation > 0).sum(axis=0) <= 1).all()  # 4.4f
    assert ((res.allocation > 0).sum(axis=0) == 1).all()  # D_l = 1: every learner serves one
    assert check_allocation(inst, res.allocation) == []
    assert res.gap is not None and res.bound is not None and res.bound <= res.objective + 1e-6


def test_greedy_start_is_feasible_on_large_instance() -> None:
    inst = scaled_instance(300, 10, seed=1)
    alloc = greedy_allocation(inst)
    assert alloc is not None
    assert check_allocation(inst, alloc) == []


@pytest.mark.parametrize(("change", "family"), [
    ({"budget": 2.0}, "budget"),
    ({"deadline": 0.5}, "deadline"),
    ({"min_shards": 4}, "min_shards"),
])
def test_infeasible_reports_family(change: dict[str, float], family: str) -> None:
    inst = small_instance(7, budget=change.get("budget", 100.0),
                          min_shards=int(change.get("min_shards", 1)),
                          deadline=change.get("deadline", 60.0))
    res = solve_med(inst, solver="highs", time_limit_s=5)
    assert res.status == "infeasible"
    assert res.allocation is None
    assert res.infeasible_families == [family]
    assert any(family_line in " ".join(res.notes) for family_line in ("4.4b", "4.4d", "4.4e"))


def test_budget_diagnosis_says_what_it_would_cost() -> None:
    inst = small_instance(7, budget=2.0)
    res = solve_med(inst, solver="highs", time_limit_s=5)
    assert any("cheapest allocation" in line for line in res.notes)


def test_more_tasks_than_learners_blames_one_task_rule() -> None:
    inst = small_instance(8, n=2, m=3, min_shards=0)
    res = solve_med(inst, solver="highs", time_limit_s=5)
    assert res.status == "infeasible"
    assert res.infeasible_families == ["one_task"]


def test_over_licence_model_is_detected_before_solving() -> None:
    inst = scaled_instance(200, 10, seed=0)
    assert build_milp(inst).num_vars > GUROBI_SIZE_LIMIT
    if gurobi_importable():
        res = solve_med(inst, solver="gurobi", time_limit_s=1)
        assert res.status == "licence_limit" and res.allocation is None
        assert any("size-limited Gurobi licence" in n for n in res.notes)
    auto = solve_med(inst, solver="auto", time_limit_s=1)
    # Past the DP, auto answers with the Lagrangian backend and says why no MILP ran.
    assert auto.backend == "lagrange" and auto.allocation is not None
    assert any("MILP not run" in n for n in auto.notes)


def test_soft_deadlines_give_an_allocation_when_hard_ones_cannot() -> None:
    inst = small_instance(7, deadline=0.5)
    res = solve_med(inst, solver="highs", enforce_deadlines=False, time_limit_s=5)
    assert res.allocation is not None
    assert check_allocation(inst, res.allocation, enforce_deadlines=False) == []


@pytest.mark.parametrize(("patch", "needle"), [
    ({"state_probs": [0.5, 0.4]}, "sum to 1"),
    ({"bandwidth": [1e6]}, "bandwidth has 1 entries"),
    ({"unexpected": 1}, "Extra inputs are not permitted"),
])
def test_instance_validation_names_the_problem(patch: dict[str, object], needle: str) -> None:
    raw = small_instance(0).model_dump()
    raw["learners"][1].update(patch)
    with pytest.raises(ValueError, match=needle):
        MedInstance.model_validate(raw)


def test_instance_needs_rates_for_every_task() -> None:
    raw = small_instance(0).model_dump()
    del raw["learners"][0]["compute"]["t1"]
    with pytest.raises(ValueError, match=r"w0.*no compute rates for \['t1'\]"):
        MedInstance.model_validate(raw)

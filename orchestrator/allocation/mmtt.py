"""MMTT baselines for multi-task allocation (thesis 4.3) and a multi-task equal split floor.

MMTT-Uncertain and MMTT-Ideal solve the min-max training time problem of eq. 4.1–4.2 under
the same constraints as MED (4.4b–4.4f), each with a deterministic view of the learners:
- MMTT-Uncertain believes every learner stays in the state it was benchmarked in;
- MMTT-Ideal knows the state each learner is actually in at the start of the GUC (and is
  called again every GUC, so it reallocates as states change).
Both reuse MED's model with one-hot state probabilities, so the only difference between the
three schemes is what they know about the states. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from orchestrator.allocation.errors import PlanInputError
from orchestrator.allocation.med import (
    MedInstance,
    MedResult,
    SolverName,
    expected_delays,
    solve_med,
)

Method = Literal["med", "mmtt-uncertain", "mmtt-ideal", "equal"]
METHODS: tuple[Method, ...] = ("med", "mmtt-uncertain", "mmtt-ideal", "equal")


def believed_instance(inst: MedInstance, states: Sequence[int]) -> MedInstance:
    """`inst` with each learner certain (γ = 1) of being in `states[j]` (eq. 4.3 → eq. 4.2)."""
    h = len(inst.learners[0].state_probs)
    if len(states) != len(inst.learners):
        raise PlanInputError(f"got {len(states)} states for {len(inst.learners)} learners; "
                             "give one state index per learner")
    if any(not 0 <= s < h for s in states):
        raise PlanInputError(f"state indices must lie in [0, {h}); got {list(states)}")
    return inst.with_state_probs(np.eye(h)[np.asarray(states, dtype=int)])


def equal_split(inst: MedInstance) -> np.ndarray:
    """Multi-task equal split (the floor): learners dealt to tasks in proportion to D_i, at
    least one each while learners last, then each task's shards split evenly in its group.

    Ignores speeds, prices and deadlines; returns the (tasks, learners) shard matrix.
    """
    m, n = len(inst.tasks), len(inst.learners)
    shards = np.array([t.shards for t in inst.tasks], dtype=float)
    groups = np.zeros(m, dtype=int)
    base = min(1, n // m) if n >= m else 0
    groups[:] = base
    left = n - groups.sum()
    if left > 0:  # largest remainder on the rest
        exact = left * shards / shards.sum()
        extra = np.floor(exact).astype(int)
        order = np.argsort(-(exact - extra), kind="stable")
        extra[order[: left - extra.sum()]] += 1
        groups += extra
    alloc = np.zeros((m, n), dtype=np.int64)
    j = 0
    for i in range(m):
        g = int(groups[i])
        if g == 0:
            continue
        q, r = divmod(int(shards[i]), g)
        alloc[i, j: j + g] = q
        alloc[i, j: j + r] += 1
        j += g
    return alloc


def plan(
    inst: MedInstance,
    method: Method = "med",
    *,
    actual_states: Sequence[int] | None = None,
    solver: SolverName = "auto",
    time_limit_s: float = 10.0,
    mip_gap: float = 1e-4,
    gurobi_size_limit: int | None = 2000,
    soft_deadlines_if_infeasible: bool = False,
    diagnose: bool = True,
    seed: int = 0,
) -> MedResult:
    """Allocate with `method`; `actual_states` (one state index per learner) is needed by
    MMTT-Ideal only. With `soft_deadlines_if_infeasible`, an instance infeasible under 4.4b is
    solved again without it (learners then halt at T_i); the first report's families are kept.
    """
    if method == "equal":
        alloc = equal_split(inst)
        return MedResult(
            "equal", "feasible", None, None, None, None, 0.0, alloc,
            [float(x) for x in expected_delays(inst, alloc).max(axis=1)], 0, 0,
            notes=["equal split ignores speeds, prices and deadlines"],
        )
    if method == "med":
        model = inst
    elif method == "mmtt-uncertain":
        model = believed_instance(inst, [w.benchmarked_state for w in inst.learners])
    elif method == "mmtt-ideal":
        if actual_states is None:
            raise PlanInputError("mmtt-ideal needs actual_states: the state of every learner now")
        model = believed_instance(inst, actual_states)
    else:
        raise PlanInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    kw = dict(solver=solver, time_limit_s=time_limit_s, mip_gap=mip_gap,
              gurobi_size_limit=gurobi_size_limit, seed=seed, method=method)
    res = solve_med(model, diagnose=diagnose, **kw)  # type: ignore[arg-type]
    if res.status == "infeasible" and soft_deadlines_if_infeasible:
        soft = solve_med(model, enforce_deadlines=False, diagnose=diagnose, **kw)  # type: ignore[arg-type]
        soft.infeasible_families = res.infeasible_families
        soft.notes = [*res.notes, "infeasible with deadlines; re-solved without 4.4b", *soft.notes]
        res = soft
    if res.allocation is not None and model is not inst:
        # Report the delays the true (uncertain) instance expects, not the believed ones.
        res.task_delay_s = [float(x) for x in expected_delays(inst, res.allocation).max(axis=1)]
    return res

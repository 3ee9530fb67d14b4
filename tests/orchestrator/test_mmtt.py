"""MMTT-Uncertain, MMTT-Ideal and the multi-task equal split (thesis 4.3 baselines)."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.allocation.errors import PlanInputError
from orchestrator.allocation.med import (
    MedInstance,
    MedLearner,
    MedTask,
    check_allocation,
    solve_med,
    thesis_instance,
)
from orchestrator.allocation.mmtt import believed_instance, equal_split, plan


def two_faced_instance() -> MedInstance:
    """Learner w0 was benchmarked idle (fast) but is almost always stressed (slow)."""
    task = MedTask(name="t", shards=12, deadline_s=100.0, model_bytes=1e5, shard_bytes=1e5)
    fast_then_slow = MedLearner(name="w0", price=1.0, state_probs=[0.05, 0.95],
                                 bandwidth=[1e7, 1e7], compute={"t": [4.0, 0.5]},
                                 benchmarked_state=0)
    steady = MedLearner(name="w1", price=1.0, state_probs=[0.5, 0.5], bandwidth=[1e7, 1e7],
                         compute={"t": [1.0, 1.0]}, benchmarked_state=0)
    return MedInstance(budget=100, min_shards=1, tasks=[task], learners=[fast_then_slow, steady])


def test_mmtt_uncertain_trusts_the_benchmark_state_and_med_does_not() -> None:
    inst = two_faced_instance()
    med = plan(inst, "med", solver="highs")
    mmtt = plan(inst, "mmtt-uncertain", solver="highs")
    assert med.allocation is not None and mmtt.allocation is not None
    # MMTT-Uncertain believes w0 is 4x faster than w1 and loads it; MED expects w0 to be slow.
    assert mmtt.allocation[0, 0] > mmtt.allocation[0, 1]
    assert med.allocation[0, 0] < med.allocation[0, 1]
    # Reported delays are the expected ones under the true distribution: MED's are lower.
    assert sum(med.task_delay_s or []) < sum(mmtt.task_delay_s or [])


def test_mmtt_ideal_uses_the_states_it_is_given() -> None:
    inst = two_faced_instance()
    idle = plan(inst, "mmtt-ideal", actual_states=[0, 0], solver="highs")
    stressed = plan(inst, "mmtt-ideal", actual_states=[1, 0], solver="highs")
    assert idle.allocation is not None and stressed.allocation is not None
    assert idle.allocation[0, 0] > stressed.allocation[0, 0]
    same = solve_med(believed_instance(inst, [1, 0]), solver="highs")
    assert same.allocation is not None
    assert np.array_equal(stressed.allocation, same.allocation)


def test_mmtt_ideal_requires_states() -> None:
    with pytest.raises(PlanInputError, match="actual_states"):
        plan(two_faced_instance(), "mmtt-ideal")
    with pytest.raises(PlanInputError, match="state indices"):
        believed_instance(two_faced_instance(), [0, 7])


def test_equal_split_covers_every_task_once_per_learner() -> None:
    inst = thesis_instance(seed=2)
    alloc = equal_split(inst)
    assert alloc.sum(axis=1).tolist() == [t.shards for t in inst.tasks]
    assert ((alloc > 0).sum(axis=0) == 1).all()
    res = plan(inst, "equal")
    assert res.method == "equal" and res.allocation is not None


def test_soft_deadline_fallback_keeps_the_diagnosis() -> None:
    inst = thesis_instance(seed=0, n_learners=4, deadline_extra_s=-35.0)
    hard = plan(inst, "mmtt-uncertain", solver="highs", time_limit_s=5)
    assert hard.status == "infeasible" and "deadline" in hard.infeasible_families
    soft = plan(inst, "mmtt-uncertain", solver="highs", time_limit_s=5,
                soft_deadlines_if_infeasible=True)
    assert soft.allocation is not None
    assert soft.infeasible_families == hard.infeasible_families
    assert check_allocation(inst, soft.allocation, enforce_deadlines=False) == []

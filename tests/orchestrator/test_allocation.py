"""Allocators as pure functions: DAB, CSA, equal split, shard dealing and the registry."""

from __future__ import annotations

import pytest

from orchestrator.allocation import (
    Allocator,
    LearnerReport,
    RoundContext,
    allocator_names,
    assign_shard_ids,
    get_allocator,
    largest_remainder,
    learner_time_s,
    register,
)
from orchestrator.allocation.csa import min_makespan_split

CTX = RoundContext(num_shards=8, shard_samples=500, shard_bytes=1_600_000, model_bytes=160_000,
                   iterations=1, deadline_s=10.0)


def test_registry_holds_the_three_schemes() -> None:
    assert {"dab", "csa", "equal"} <= set(allocator_names())
    assert get_allocator("dab").probe == "plan"
    assert get_allocator("csa").probe == "benchmark"
    assert get_allocator("equal").probe == "none"
    with pytest.raises(ValueError, match="unknown allocator 'nope'"):
        get_allocator("nope")


def test_register_rejects_bad_and_duplicate_names() -> None:
    class Bad(Allocator):
        name = "not an identifier"
        probe = "none"

        def allocate(self, reports, ctx):  # type: ignore[no-untyped-def]
            return {}

    with pytest.raises(ValueError, match="identifier"):
        register(Bad)

    class Dup(Allocator):
        name = "dab"
        probe = "none"

        def allocate(self, reports, ctx):  # type: ignore[no-untyped-def]
            return {}

    with pytest.raises(ValueError, match="already registered"):
        register(Dup)


def test_dab_takes_each_learners_bound_and_drops_non_positive() -> None:
    reports = [LearnerReport("1", a_k=5), LearnerReport("2", a_k=0), LearnerReport("3", a_k=-2)]
    assert get_allocator("dab").allocate(reports, CTX) == {"1": 5, "2": 0, "3": 0}


def test_equal_split_spreads_the_total_evenly() -> None:
    reports = [LearnerReport(str(i)) for i in (1, 2, 3)]
    out = get_allocator("equal").allocate(reports, CTX)
    assert sorted(out.values()) == [2, 3, 3] and sum(out.values()) == 8


def test_csa_gives_the_faster_learner_more_and_keeps_the_total() -> None:
    reports = [LearnerReport("fast", bandwidth=1e8, compute=4000.0),
               LearnerReport("slow", bandwidth=1e8, compute=1000.0)]
    out = get_allocator("csa").allocate(reports, CTX)
    assert sum(out.values()) == 8
    assert out["fast"] > out["slow"]


def test_csa_split_is_min_max_optimal_by_brute_force() -> None:
    reports = [LearnerReport("a", bandwidth=2e6, compute=3000.0),
               LearnerReport("b", bandwidth=5e7, compute=900.0),
               LearnerReport("c", bandwidth=1e7, compute=1500.0)]
    total = 9

    def makespan(split: dict[str, int]) -> float:
        return max(learner_time_s(split[r.learner_id], bandwidth=r.bandwidth or 0,
                                  compute=r.compute or 0, ctx=CTX) for r in reports)

    best = min(makespan({"a": i, "b": j, "c": total - i - j})
               for i in range(total + 1) for j in range(total + 1 - i))
    got = min_makespan_split(reports, total, CTX)
    assert sum(got.values()) == total
    assert makespan(got) == pytest.approx(best)


def test_csa_ignores_learners_without_benchmarks() -> None:
    reports = [LearnerReport("a", bandwidth=1e8, compute=1000.0), LearnerReport("b")]
    assert get_allocator("csa").allocate(reports, CTX) == {"a": 8, "b": 0}


def test_shard_ids_are_unique_until_the_dataset_runs_out_then_duplicated() -> None:
    within = assign_shard_ids({"1": 3, "2": 5}, 8, seed=0, round_index=0)
    flat = within["1"] + within["2"]
    assert sorted(flat) == list(range(8))
    beyond = assign_shard_ids({"1": 6, "2": 6}, 8, seed=0, round_index=0)
    assert len(beyond["1"]) == len(beyond["2"]) == 6
    assert len(set(beyond["1"])) == 6 and len(set(beyond["2"])) == 6  # no self-duplicates
    assert len(beyond["1"] + beyond["2"]) - len(set(beyond["1"] + beyond["2"])) == 4


def test_shard_ids_depend_on_seed_and_round_only() -> None:
    a = assign_shard_ids({"1": 4}, 8, seed=1, round_index=2)
    assert a == assign_shard_ids({"1": 4}, 8, seed=1, round_index=2)
    assert a != assign_shard_ids({"1": 4}, 8, seed=1, round_index=3)


def test_largest_remainder_sums_exactly() -> None:
    out = largest_remainder(10, {"a": 1.0, "b": 1.0, "c": 1.0})
    assert sum(out.values()) == 10 and max(out.values()) - min(out.values()) == 1

"""The `round_state` procedure: a learner draws its own stressor state for a multi-task round."""

from __future__ import annotations

from collections import Counter

import pytest

from learner_agent.errors import BadTask
from learner_agent.procedures import Agent


def agent(name: str) -> Agent:
    return Agent(name, None)  # type: ignore[arg-type]  # round_state never calls out


def test_the_state_is_revealed_only_when_asked() -> None:
    a = agent("w1")
    assert a.round_state({"training": 1.0}, False) == {"state": None}
    assert a.round_state({"downloading": 1.0}, True) == {"state": "downloading"}


def test_draws_follow_the_distribution_and_differ_between_learners() -> None:
    dist = {"idle": 0.787, "training": 0.1065, "downloading": 0.1065}
    a, b = agent("w1"), agent("w2")
    draws_a = [a.round_state(dist, True)["state"] for _ in range(3000)]
    draws_b = [b.round_state(dist, True)["state"] for _ in range(3000)]
    freq = Counter(draws_a)
    assert freq["idle"] / 3000 == pytest.approx(0.787, abs=0.03)
    assert freq["training"] / 3000 == pytest.approx(0.1065, abs=0.02)
    assert draws_a != draws_b  # same seed, different names: not in lockstep


@pytest.mark.parametrize("bad", [{}, {"sleeping": 1.0}, {"idle": -0.1}, {"idle": 0.0},
                                 {"idle": "high"}, ["idle"]])
def test_bad_distributions_are_refused(bad: object) -> None:
    with pytest.raises(BadTask):
        agent("w1").round_state(bad, False)  # type: ignore[arg-type]


def test_only_a_call_naming_drawn_uses_the_draw_and_only_once() -> None:
    a = agent("w1")
    a.round_state({"training": 1.0}, False)
    assert a._pick_state(None) == "idle"  # a single-task call never inherits the draw
    assert a._pick_state("drawn") == "training"
    with pytest.raises(BadTask, match="round_state"):
        a._pick_state("drawn")


def test_a_seeded_draw_depends_on_the_seed_alone() -> None:
    dist = {"idle": 0.4, "training": 0.3, "downloading": 0.3}
    a, b = agent("w1"), agent("w2")
    a.round_state(dist, True)  # a's own stream moved on; the seeded draw does not care
    seeded_a = [a.round_state(dist, True, seed)["state"] for seed in range(50)]
    seeded_b = [b.round_state(dist, True, seed)["state"] for seed in range(50)]
    assert seeded_a == seeded_b and len(set(seeded_a)) == 3
    for bad in (-1, 1.5, True, "7"):
        with pytest.raises(BadTask, match="seed"):
            a.round_state(dist, False, bad)  # type: ignore[arg-type]

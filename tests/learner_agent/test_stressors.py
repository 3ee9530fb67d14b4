"""Stressor states (thesis 4.3.1): heated-softmax state distribution and the two loads."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from learner_agent.stressors import (
    MATRIX_BYTES,
    STATES,
    download_stress,
    heated_softmax,
    sample_state,
    state_distribution,
    training_stress,
)


def test_thesis_heat_favours_one_state() -> None:
    dist = state_distribution(np.random.default_rng(0), heat=0.5)
    assert set(dist) == set(STATES) and math.isclose(sum(dist.values()), 1.0)
    top = max(dist.values())
    assert math.isclose(top, math.e**2 / (math.e**2 + 2))  # ≈ 0.787
    hot = heated_softmax(np.array([1.0, 0.0, 0.0]), heat=100.0)
    assert np.allclose(hot, 1 / 3, atol=0.01)


def test_sampled_states_follow_the_distribution() -> None:
    rng = np.random.default_rng(1)
    dist = {"idle": 0.8, "training": 0.1, "downloading": 0.1}
    draws = [sample_state(dist, rng) for _ in range(2000)]
    assert 0.75 < draws.count("idle") / 2000 < 0.85


def _poll(predicate: object, timeout_s: float = 20.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_training_state_runs_matmuls_only_when_asked() -> None:
    with training_stress("idle") as idle:
        pass
    assert idle[0] == 0
    with training_stress("training") as count:
        assert _poll(lambda: count[0] >= 2)


def test_downloading_state_pulls_a_matrix_worth_of_bytes() -> None:
    chunk = b"\0" * 1_000_000
    with download_stress("downloading", lambda: chunk) as got:
        assert _poll(lambda: got[0] >= MATRIX_BYTES)
    assert got[0] == 4_000_000  # stops once 3.24 MB arrived
    with pytest.raises(ValueError, match="unknown stressor state"), training_stress("sleeping"):
        pass

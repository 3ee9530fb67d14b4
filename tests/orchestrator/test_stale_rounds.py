"""The simulator of 001's setting: who is slow, and that their updates arrive τ rounds late."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.simulation.stale_rounds import (
    StaleRoundsConfig,
    affected_clients,
    estimation_errors,
    run_stale_rounds,
)
from plexus.spec import DatasetSpec


def test_affected_clients_are_those_holding_most_of_the_class() -> None:
    labels = np.array([5, 5, 5, 1, 5, 1, 5, 5, 2])
    parts = [np.array([0, 1, 3]), np.array([2, 4, 6, 7]), np.array([5, 8])]
    assert affected_clients(parts, labels, 5, 2) == [1, 0]


@pytest.mark.extended  # trains 4 clients × 5 rounds and inverts 6 updates: ~10 s of CPU
def test_late_updates_are_inverted_once_each_when_they_arrive() -> None:
    # Arrange: 4 clients on synthetic data, the top 2 of class 1 late by 2 rounds, 5 rounds.
    data = DatasetSpec(name="synthetic", samples=200)
    cfg = StaleRoundsConfig(clients=4, alpha=1.0, dataset=data, model="twonn", rounds=5,
                            tau=2, affected_class=1, affected_clients=2, lr=0.1, epochs=1,
                            eval_samples=50,
                            staleness="inversion",
                            staleness_params={"iterations": 2, "threshold": 2})
    # Act
    run = run_stale_rounds(cfg)
    # Assert: late updates arrive from round τ on (rounds 2, 3, 4), two clients each.
    assert run.handler is not None
    assert run.handler["inverted"] == 2 * 3 and run.handler["iterations"] == 2 * 3 * 2
    assert len(run.accuracy) == 5 and len(run.affected) == 2
    assert run.privacy and run.privacy["rec_samples"] > 0


def test_fig7_errors_at_tau_0_are_the_inversion_residual_alone() -> None:
    # Arrange: a 3-round trajectory without staleness on synthetic data, 3 clients.
    data = DatasetSpec(name="synthetic", samples=120)
    cfg = StaleRoundsConfig(clients=3, alpha=1.0, dataset=data, model="twonn", rounds=3,
                            tau=0, affected_class=1, affected_clients=1, lr=0.1, epochs=1,
                            eval_samples=30)
    history = run_stale_rounds(cfg, keep_history=True).history
    # Act
    errs = estimation_errors(cfg, history, [0, 2, 9], [0, 1], iterations=3)
    # Assert: τ beyond the trajectory is skipped; at τ = 0 the stale update *is* the true one,
    # so replaying it (direct, DC-ASGD) is exact and the inversion's error is its own residual.
    assert sorted(errs) == [0, 2]
    zero = errs[0]
    assert zero["direct"] == pytest.approx(0, abs=1e-4)
    assert zero["dcasgd"] == pytest.approx(0, abs=1e-4)
    assert zero["inversion"] == pytest.approx(zero["inversion_loss"], rel=1e-4)
    assert zero["inversion_s"] > 0
    assert errs[2]["direct"] > 0 and errs[2]["inversion"] > 0

"""The simulator of 001's setting: who is slow, and that their updates arrive τ rounds late."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.simulation.stale_rounds import (
    StaleRoundsConfig,
    affected_clients,
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

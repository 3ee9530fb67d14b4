"""Thesis 4.3 metrics (items 1–5) on hand-computed task rounds."""

from __future__ import annotations

import pytest

from orchestrator.allocation.metrics import (
    TaskRound,
    average_task_fulfillment,
    average_training_time,
    data_drop_rate,
    occupancy,
    satisfaction_ratio,
    summarize,
)

RECORDS = [
    # on time, everything trained, learners busy 10 and 5 of 10 s
    TaskRound("a", 0, deadline_s=12.0, duration_s=10.0, samples_total=1000,
              samples_trained=1000, learner_busy_s=[10.0, 5.0]),
    # late (a learner halted): 600 of 1000 samples trained, busy 20 and 20 of 20 s
    TaskRound("b", 0, deadline_s=15.0, duration_s=20.0, samples_total=1000,
              samples_trained=600, learner_busy_s=[20.0, 20.0]),
]


def test_each_metric_by_hand() -> None:
    assert average_training_time(RECORDS) == pytest.approx(15.0)
    assert satisfaction_ratio(RECORDS) == pytest.approx(0.5)
    assert average_task_fulfillment(RECORDS) == pytest.approx((1.0 + 0.6) / 2)
    assert data_drop_rate(RECORDS) == pytest.approx((0.0 + 0.4) / 2)
    assert occupancy(RECORDS) == pytest.approx((15 / 20 + 40 / 40) / 2)


def test_summary_and_complement() -> None:
    s = summarize(RECORDS)
    assert s["average_task_fulfillment"] + s["data_drop_rate"] == pytest.approx(1.0)
    assert set(s) == {"average_training_time_s", "satisfaction_ratio",
                      "average_task_fulfillment", "data_drop_rate", "occupancy"}


def test_bad_records_are_rejected() -> None:
    with pytest.raises(ValueError, match="samples_trained"):
        TaskRound("a", 0, 1.0, 1.0, samples_total=10, samples_trained=11, learner_busy_s=[1.0])
    with pytest.raises(ValueError, match="at least one"):
        average_training_time([])

"""The multi-task metrics of thesis 4.3 (items 1–5), computed from per-task per-round records.

Pure functions over plain records, so the live round driver, the simulator and the benchmarks
compute them the same way. A record is one task in one global update cycle (GUC).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskRound:
    """What happened to one task in one GUC.

    `duration_s`: from the start of the GUC until the last of its learners' updates arrived
    (seconds). `samples_total`: samples the task's dataset holds for the round (D_i shards ×
    samples per shard); `samples_trained`: samples actually trained on, summed over learners
    (a learner that halted at the deadline counts only what it finished). `learner_busy_s`:
    for each learner of the task, seconds spent in its local update routine (download, train,
    upload) during the GUC.
    """

    task: str
    round: int
    deadline_s: float
    duration_s: float
    samples_total: int
    samples_trained: float
    learner_busy_s: Sequence[float]

    def __post_init__(self) -> None:
        if self.samples_total <= 0:
            raise ValueError(f"task {self.task} round {self.round}: samples_total must be > 0")
        if not 0 <= self.samples_trained <= self.samples_total * (1 + 1e-9):
            raise ValueError(
                f"task {self.task} round {self.round}: samples_trained {self.samples_trained} "
                f"outside [0, {self.samples_total}]"
            )
        if self.duration_s < 0 or any(b < 0 for b in self.learner_busy_s):
            raise ValueError(f"task {self.task} round {self.round}: negative times")


def _need(records: Sequence[TaskRound]) -> None:
    if not records:
        raise ValueError("no task rounds recorded: metrics need at least one")


def average_training_time(records: Sequence[TaskRound]) -> float:
    """Item 1: mean time to complete a task's GUC, seconds."""
    _need(records)
    return sum(r.duration_s for r in records) / len(records)


def satisfaction_ratio(records: Sequence[TaskRound]) -> float:
    """Item 2: fraction of task rounds that finished by their deadline, in [0, 1]."""
    _need(records)
    return sum(r.duration_s <= r.deadline_s * (1 + 1e-9) for r in records) / len(records)


def average_task_fulfillment(records: Sequence[TaskRound]) -> float:
    """Item 3: samples trained on / samples in the task's dataset, averaged over task rounds."""
    _need(records)
    return sum(r.samples_trained / r.samples_total for r in records) / len(records)


def data_drop_rate(records: Sequence[TaskRound]) -> float:
    """Item 4: (samples in the dataset − samples trained) / samples in the dataset, averaged."""
    _need(records)
    return sum((r.samples_total - r.samples_trained) / r.samples_total for r in records) / len(
        records
    )


def occupancy(records: Sequence[TaskRound]) -> float:
    """Item 5: time learners spend in their update routine / time the task round took,
    averaged over each task's learners and then over task rounds, in [0, 1]. Rounds with no
    learners or zero duration are left out."""
    _need(records)
    vals = [
        sum(min(b, r.duration_s) for b in r.learner_busy_s) / (len(r.learner_busy_s) * r.duration_s)
        for r in records
        if r.learner_busy_s and r.duration_s > 0
    ]
    if not vals:
        raise ValueError("no task round had learners and a positive duration")
    return sum(vals) / len(vals)


def summarize(records: Sequence[TaskRound]) -> dict[str, float]:
    """All five thesis metrics at once (times in seconds, ratios in [0, 1])."""
    return {
        "average_training_time_s": average_training_time(records),
        "satisfaction_ratio": satisfaction_ratio(records),
        "average_task_fulfillment": average_task_fulfillment(records),
        "data_drop_rate": data_drop_rate(records),
        "occupancy": occupancy(records),
    }

"""Closing a synchronous round, the same for a single task and for a task of a job.

`close_round` checks the learners' answers (parameters shaped like the model, a non-negative
`samples_trained`), combines them with the spec's `sync.aggregation` rule (default FedAvg
weighted by samples trained; nobody answered: the model stays), evaluates the new model on
the task's held-out split and writes it as the next model version. The caller commits the
round: one round row for a task
(`Store.record_round`), one record per task for a job (`Store.record_job_round`). An
asynchronous task's model is aggregated by its core instead; its journal
(`runs.asynchronous.StoreJournal`) writes each version under the same name.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.metrics import Metrics
from orchestrator.runs.gateway import Reply
from orchestrator.store import Store, write_atomic, write_atomic_many

if TYPE_CHECKING:
    from plexus.spec import TaskSpec

# A task's held-out split as `load_test_split` returns it: x, y, input shape, classes.
TestSplit = tuple[Any, Any, tuple[int, ...], int]


@dataclass
class ClosedRound:
    """What a round produced: the new model (version `version`, at `model_path`), the samples
    each learner trained (by learner id), who was left out and why, and the evaluation."""

    state: dict[str, Any]
    version: int
    model_path: Path
    loss: float
    accuracy: float
    samples: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)


def evaluate_model(spec: TaskSpec, state: dict[str, Any], test: TestSplit) -> tuple[float, float]:
    """Loss and accuracy of parameters `state` on the task's held-out split."""
    from orchestrator.runs.taskdata import initial_model
    from plexus.training import evaluate

    x, y, shape, classes = test
    model = initial_model(spec, shape, classes)
    model.load_state_dict(state)
    loss, acc = evaluate(model, x, y)
    return float(loss), float(acc)


async def write_model(store: Store, task_id: int, version: int, state: Any,
                      meta: dict[str, Any]) -> Path:
    """Write model version `version` of a task (atomically); return its path."""
    from plexus.tensors import encode_state

    path = store.layout.model(task_id, version)
    await asyncio.to_thread(write_atomic, path, encode_state(state, meta))
    return path


async def close_round(store: Store, metrics: Metrics, task_id: int, spec: TaskSpec, index: int,
                      state: dict[str, Any], replies: list[Reply], test: TestSplit,
                      left_out: dict[str, str], *, keep_updates: bool = False) -> ClosedRound:
    """Check the answers, FedAvg them, evaluate and write model version `index + 1`.

    `left_out` (learner id → why) is extended with whoever failed or answered badly; with
    `keep_updates` every accepted update is also kept under the task's `updates/` directory.
    """
    from plexus.errors import BadTensors
    from plexus.tensors import encode_state, validate_state

    states, weights, samples = [], [], {}
    kept: list[tuple[Path, Callable[[], bytes]]] = []
    for r in replies:
        key = str(r.learner.id)
        if r.error is not None:
            left_out[key] = r.error
            continue
        try:
            params = r.value["params"]
            n = int(r.value["samples_trained"])
            if n < 0:
                raise ValueError(f"samples_trained is {n}")
            validate_state(params, state)
        except (BadTensors, KeyError, TypeError, ValueError) as exc:
            left_out[key] = f"bad answer: {exc}"
            continue
        metrics.updates.inc()
        samples[key] = n
        if n > 0:
            states.append(params)
            weights.append(float(n))
            if keep_updates:
                kept.append((store.layout.update(task_id, index, r.learner.id),
                             functools.partial(encode_state, params,
                                               {"round": index, "samples": n})))
    # Every kept update is on disk before the round can be committed, written together: one
    # at a time they cost two fsyncs each in a row (~60 ms per learner on a busy disk).
    if kept:
        await asyncio.to_thread(write_atomic_many, kept)
    if states:  # nobody answered: the model stays as it was
        from orchestrator.aggregation.fedavg import weighted_average
        from orchestrator.aggregation.robust import RobustRule, aggregate

        rule = RobustRule.from_spec(spec.sync.aggregation if spec.sync else None)
        if rule.rule == "fedavg":
            state = await asyncio.to_thread(weighted_average, states, weights)
        else:
            state = await asyncio.to_thread(aggregate, rule, state, states, weights)
    loss, accuracy = await asyncio.to_thread(evaluate_model, spec, state, test)
    version = index + 1  # round r turns model version r into r + 1
    path = await write_model(store, task_id, version, state,
                             {"version": version, "task_id": task_id, "round": index})
    return ClosedRound(state, version, path, loss, accuracy, samples, left_out)

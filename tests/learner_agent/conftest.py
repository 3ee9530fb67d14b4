"""Shared task data for the agent tests: a small synthetic task's spec, shards and model.

The agent's process tests run against the real orchestrator (see test_agent.py); the unit
tests of benchmarking and training only need the bytes a real orchestrator would serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plexus.datasets import load_dataset
from plexus.models import build_model
from plexus.shards import encode_shard, partition
from plexus.spec import TaskSpec, load_spec
from plexus.tensors import encode_state

TASK: dict[str, Any] = {
    "name": "agent-test",
    "model": "twonn",
    "seed": 0,
    "dataset": {"name": "synthetic", "samples": 750},
    "partition": {"kind": "iid", "shard_size": 100},
    "training": {"optimizer": "sgd", "lr": 0.1, "batch_size": 25, "iterations": 2},
    "mode": "sync",
    "sync": {"allocator": "dab", "deadline_s": 30.0, "benchmark_shards": 2},
}


@dataclass
class TaskData:
    """A task's spec, its encoded shards (safetensors bytes) and its initial model bytes."""

    spec: TaskSpec
    shards: list[bytes]
    model: bytes


def make_task_data(task: dict[str, Any] = TASK) -> TaskData:
    spec = load_spec(task)
    data = load_dataset(spec.dataset, seed=spec.seed)
    shards = [
        encode_shard(
            data.train_x[idx], data.train_y[idx], {"task_id": 1, "shard": i, "samples": len(idx)}
        )
        for i, idx in enumerate(partition(data.train_y, spec.partition, spec.seed))
    ]
    net = build_model(spec.model, data.input_shape, data.num_classes)
    return TaskData(spec=spec, shards=shards, model=encode_state(net.state_dict(), {"version": 5}))

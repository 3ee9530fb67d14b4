"""The round trainer: μ passes over the allocated shards, halting at the deadline (alg. 10, 21–27).

The deadline is checked between batches; when it passes, training stops and the partial
parameters go back with the true number of samples trained, so the orchestrator can weight
them (FedAvg by samples) instead of waiting or dropping the learner.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from learner_agent.adversary import active as active_adversary
from plexus.shards import decode_shard
from plexus.tensors import decode_state

if TYPE_CHECKING:
    import torch

    from plexus.spec import TaskSpec


@dataclass(frozen=True)
class RoundResult:
    """One round's outcome: parameters, model version, samples trained/allocated, seconds."""

    params: dict[str, torch.Tensor]
    model_version: int
    samples_trained: int
    samples_allocated: int
    loss: float
    download_s: float
    train_s: float
    halted: bool

    def to_wire(self) -> dict[str, object]:
        """The `train` procedure's answer (docs/protocol.md)."""
        return {
            "params": self.params,
            "model_version": self.model_version,
            "samples_trained": self.samples_trained,
            "samples_allocated": self.samples_allocated,
            "loss": self.loss,
            "download_s": self.download_s,
            "train_s": self.train_s,
            "halted": self.halted,
        }


def _decode_shards(
    shard_payloads: Sequence[bytes],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Samples and labels of every shard payload, in order; a repeated shard decodes once."""
    xs, ys = [], []
    decoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for payload in shard_payloads:
        if id(payload) not in decoded:
            x, y, _ = decode_shard(payload)
            decoded[id(payload)] = (x, y)
        x, y = decoded[id(payload)]
        xs.append(x)
        ys.append(y)
    return xs, ys


def _num_classes(spec: TaskSpec) -> int:
    """The task's class count: from the spec the orchestrator resolved, else the data's name."""
    from plexus.datasets import dataset_geometry

    if spec.model.num_classes is not None:
        return int(spec.model.num_classes)
    return int(dataset_geometry(spec.dataset.name)[1])


def _fit(model: Any, x: np.ndarray, y: np.ndarray, spec: TaskSpec, *, deadline: float | None,
         clock: Callable[[], float], seed: int,
         on_batch: Callable[[int], None] | None) -> tuple[int, float, bool, float]:
    """μ passes of the task's optimiser over (x, y): samples trained, loss, halted, seconds."""
    from plexus.training import train

    result = train(model, x, y, passes=spec.training.iterations,
                   batch_size=spec.training.batch_size, optimizer=spec.training.optimizer,
                   lr=spec.training.lr, deadline=deadline, clock=clock, seed=seed,
                   on_batch=on_batch)
    return result.samples_trained, result.loss, result.halted, result.seconds


def train_round(
    spec: TaskSpec,
    model_payload: bytes,
    shard_payloads: Sequence[bytes],
    *,
    deadline: float | None,
    clock: Callable[[], float] = time.monotonic,
    download_s: float = 0.0,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> RoundResult:
    """Load the global model from `model_payload`, train μ passes over the shards until done
    or until `deadline` (an instant on `clock`, seconds) passes; return the partial result."""
    from learner_agent.benchmarking import build_dummy
    from learner_agent.errors import BadTask
    from plexus.errors import SpecError

    try:
        model = build_dummy(spec)  # a fresh network of the task's architecture
    except SpecError as exc:
        raise BadTask(f"cannot build the task's model here: {exc}") from None
    state, meta = decode_state(model_payload, reference=model.state_dict())
    model.load_state_dict(state)
    xs, ys = _decode_shards(shard_payloads)
    allocated = sum(len(y) for y in ys)
    adversary = active_adversary()  # experiments only (learner_agent/adversary.py)
    if allocated:
        x_all, y_all = np.concatenate(xs), np.concatenate(ys)
        if adversary is not None:
            y_all = adversary.labels(y_all, _num_classes(spec))
        trained, loss, halted, train_s = _fit(model, x_all, y_all, spec, deadline=deadline,
                                              clock=clock, seed=seed, on_batch=on_batch)
    else:
        trained, loss, halted, train_s = 0, float("nan"), False, 0.0
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if adversary is not None:
        params, trained = adversary.update(params, state), adversary.samples(trained)
    return RoundResult(
        params=params,
        model_version=int(meta.get("version", "0")),
        samples_trained=trained,
        samples_allocated=allocated * spec.training.iterations,
        loss=loss,
        download_s=download_s,
        train_s=train_s,
        halted=halted,
    )

"""The round trainer: μ passes over the allocated shards, halting at the deadline (alg. 10, 21–27).

The deadline is checked between batches; when it passes, training stops and the partial
parameters go back with the true number of samples trained, so the orchestrator can weight
them (FedAvg by samples) instead of waiting or dropping the learner.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

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
    from plexus.training import train

    try:
        model = build_dummy(spec)  # a fresh network of the task's architecture
    except SpecError as exc:
        raise BadTask(f"cannot build the task's model here: {exc}") from None
    state, meta = decode_state(model_payload, reference=model.state_dict())
    model.load_state_dict(state)
    xs, ys = _decode_shards(shard_payloads)
    allocated = sum(len(y) for y in ys)
    if allocated:
        x_all, y_all = np.concatenate(xs), np.concatenate(ys)
        result = train(
            model,
            x_all,
            y_all,
            passes=spec.training.iterations,
            batch_size=spec.training.batch_size,
            optimizer=spec.training.optimizer,
            lr=spec.training.lr,
            deadline=deadline,
            clock=clock,
            seed=seed,
            on_batch=on_batch,
        )
        trained, loss, halted, train_s = (
            result.samples_trained,
            result.loss,
            result.halted,
            result.seconds,
        )
    else:
        trained, loss, halted, train_s = 0, float("nan"), False, 0.0
    return RoundResult(
        params={k: v.detach().clone() for k, v in model.state_dict().items()},
        model_version=int(meta.get("version", "0")),
        samples_trained=trained,
        samples_allocated=allocated * spec.training.iterations,
        loss=loss,
        download_s=download_s,
        train_s=train_s,
        halted=halted,
    )

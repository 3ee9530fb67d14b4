"""Local training with a deadline checked between batches, and evaluation.

`train` is what both the real trainer and the subset-benchmarking dummy run, so the benchmark
times exactly the code path it predicts (thesis 3.2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TrainResult:
    """What one call to `train` did.

    `samples_trained` counts every sample in every batch that was stepped (a sample seen in two
    passes counts twice); `loss` is their sample-weighted mean cross-entropy (nan if none);
    `halted` is true when the deadline cut training short; `seconds` is clock time spent.
    """

    samples_trained: int
    loss: float
    halted: bool
    seconds: float
    batches: int = 0


def _as_tensor(values: Any, dtype: Any) -> torch.Tensor:
    import torch

    if isinstance(values, torch.Tensor):
        return values.to(dtype)
    return torch.from_numpy(np.ascontiguousarray(values)).to(dtype)


def make_optimizer(model: torch.nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    """The optimizer a task spec names (`sgd` or `adam`) over `model`'s parameters."""
    import torch

    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def train(
    model: torch.nn.Module,
    x: Any,
    y: Any,
    *,
    passes: int,
    batch_size: int,
    optimizer: str,
    lr: float,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train `model` in place for `passes` passes (μ) over `x`, `y` in shuffled mini-batches.

    `deadline` is an instant on `clock` (seconds); it is checked before every batch, and once
    reached training halts and keeps what it has done so far. `on_batch(samples)` is called
    after each step (used by the stressors and by tests).
    """
    import torch
    import torch.nn.functional as F

    inputs = _as_tensor(x, torch.float32)
    targets = _as_tensor(y, torch.int64)
    n = len(targets)
    opt = make_optimizer(model, optimizer, lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    start = clock()
    trained = 0
    batches = 0
    loss_sum = 0.0
    halted = False
    for _ in range(passes):
        order = torch.randperm(n, generator=gen)
        for lo in range(0, n, batch_size):
            if deadline is not None and clock() >= deadline:
                halted = True
                break
            idx = order[lo : lo + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(inputs[idx]), targets[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            size = len(idx)
            trained += size
            batches += 1
            loss_sum += float(loss.detach()) * size
            if on_batch is not None:
                on_batch(size)
        if halted:
            break
    return TrainResult(
        samples_trained=trained,
        loss=loss_sum / trained if trained else float("nan"),
        halted=halted,
        seconds=clock() - start,
        batches=batches,
    )


def evaluate(model: torch.nn.Module, x: Any, y: Any, batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy (0–1) of `model` on `x`, `y`."""
    import torch
    import torch.nn.functional as F

    inputs = _as_tensor(x, torch.float32)
    targets = _as_tensor(y, torch.int64)
    if len(targets) == 0:
        return float("nan"), float("nan")
    model.eval()
    loss_sum = 0.0
    correct = 0
    with torch.no_grad():
        for lo in range(0, len(targets), batch_size):
            logits = model(inputs[lo : lo + batch_size])
            t = targets[lo : lo + batch_size]
            loss_sum += float(F.cross_entropy(logits, t, reduction="sum"))
            correct += int((logits.argmax(dim=1) == t).sum())
    return loss_sum / len(targets), correct / len(targets)

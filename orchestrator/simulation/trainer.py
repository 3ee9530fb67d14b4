"""Real local training for simulated clients, one at a time or many at once with torch.func.

Only time is virtual in the simulator: every update is the outcome of actual SGD on the client's
actual samples. A job is fixed the moment the model is dispatched (base model, the samples held,
a seed, a budget of samples), so jobs can be computed whenever it is convenient; the engine
computes all jobs in flight together when it first needs one, and :func:`train_jobs` runs
them as one vectorised SGD (``torch.func.vmap`` over per-client parameters), which gives the
same plain-SGD steps as training each client alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from plexus.training import train

State = Mapping[str, torch.Tensor]


@dataclass
class Job:
    """One client's local training: E passes of mini-batch SGD over ``indices``.

    ``budget`` caps the samples stepped (PORT's stop request); ``None`` means all
    ``epochs × len(indices)``. ``result`` and ``samples_trained`` are filled in by training.
    """

    base: State = field(repr=False)
    indices: np.ndarray = field(repr=False)
    epochs: int
    seed: int
    budget: int | None = None
    result: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    samples_trained: int = 0

    def batches(self, batch_size: int) -> list[torch.Tensor]:
        """Positions into ``indices`` of each mini-batch, in the order ``plexus.training.train``
        would step them with the same seed (so both paths agree)."""
        n = len(self.indices)
        gen = torch.Generator().manual_seed(self.seed)
        out: list[torch.Tensor] = []
        stepped = 0
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen)
            for lo in range(0, n, batch_size):
                if self.budget is not None and stepped >= self.budget:
                    return out
                idx = order[lo : lo + batch_size]
                out.append(idx)
                stepped += len(idx)
        return out


def train_one(
    model: torch.nn.Module,
    job: Job,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
) -> None:
    """Train ``job`` alone with ``plexus.training.train`` (in place on ``model``)."""
    model.load_state_dict(job.base)
    counter = [0]

    def on_batch(size: int) -> None:
        counter[0] += size

    result = train(
        model,
        x[job.indices],
        y[job.indices],
        passes=job.epochs,
        batch_size=batch_size,
        optimizer="sgd",
        lr=lr,
        seed=job.seed,
        # The "clock" counts samples stepped, so the deadline is the sample budget.
        deadline=float(job.budget) if job.budget is not None else None,
        clock=lambda: float(counter[0]),
        on_batch=on_batch,
    )
    job.result = {n: t.detach().clone() for n, t in model.state_dict().items()}
    job.samples_trained = result.samples_trained


class TrainBackend(Protocol):
    """Where the jobs in flight are trained: :func:`train_jobs` in this process, or
    ``orchestrator.simulation.ray_backend.RayTrainer`` on a Ray cluster. Either fills every
    job's ``result`` and ``samples_trained``, with the same numbers for the same jobs."""

    def __call__(
        self,
        model: torch.nn.Module,
        jobs: Sequence[Job],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        lr: float,
        batch_size: int,
        chunk: int = 128,
        batched: bool = True,
    ) -> None: ...


def one_at_a_time(model: torch.nn.Module, jobs: Sequence[Job], batched: bool) -> bool:
    """Whether ``jobs`` are trained one by one (not vectorised): the rule both backends use."""
    return not batched or not _vectorisable(model) or len(jobs) == 1


def _vectorisable(model: torch.nn.Module) -> bool:
    # Buffers (BatchNorm statistics) would need per-client running stats; plain SGD on
    # parameters only is what vmap reproduces exactly.
    return not any(True for _ in model.buffers())


def train_jobs(
    model: torch.nn.Module,
    jobs: Sequence[Job],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
    chunk: int = 128,
    batched: bool = True,
) -> None:
    """Train every job in ``jobs`` (filling ``result``), vectorised in chunks of ``chunk``."""
    if one_at_a_time(model, jobs, batched):
        for job in jobs:
            train_one(model, job, x, y, lr=lr, batch_size=batch_size)
        return
    for lo in range(0, len(jobs), chunk):
        train_chunk(model, list(jobs[lo : lo + chunk]), x, y, lr=lr, batch_size=batch_size)


def train_chunk(
    model: torch.nn.Module,
    jobs: list[Job],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
) -> None:
    from torch.func import functional_call, grad, vmap

    names = [n for n, _ in model.named_parameters()]
    params = {n: torch.stack([job.base[n].detach().float() for job in jobs]) for n in names}
    schedules = [job.batches(batch_size) for job in jobs]
    steps = max((len(s) for s in schedules), default=0)
    m = len(jobs)

    def loss_fn(
        p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        logits = functional_call(model, p, (xb,))
        ce = F.cross_entropy(logits, yb, reduction="none")
        # Mean over the real samples of the batch; an all-padding batch gives zero gradient,
        # i.e. no step, exactly like a client that has finished.
        return (ce * mask).sum() / mask.sum().clamp(min=1.0)

    step = vmap(grad(loss_fn))
    xb = torch.zeros((m, batch_size, *x.shape[1:]), dtype=x.dtype)
    yb = torch.zeros((m, batch_size), dtype=torch.int64)
    mask = torch.zeros((m, batch_size))
    model.train()
    for s in range(steps):
        xb.zero_()
        yb.zero_()
        mask.zero_()
        for j, (job, sched) in enumerate(zip(jobs, schedules, strict=True)):
            if s < len(sched):
                rows = job.indices[sched[s].numpy()]
                k = len(rows)
                xb[j, :k] = x[rows]
                yb[j, :k] = y[rows]
                mask[j, :k] = 1.0
        grads = step(params, xb, yb, mask)
        with torch.no_grad():
            for n in names:
                params[n].sub_(grads[n], alpha=lr)
    for j, (job, sched) in enumerate(zip(jobs, schedules, strict=True)):
        job.result = {n: params[n][j].clone().to(job.base[n].dtype) for n in names}
        job.samples_trained = int(sum(len(b) for b in sched))

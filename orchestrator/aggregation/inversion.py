"""Gradient inversion of a stale update (001 §4.1–4.2): recover D_rec, replay it on a newer model.

The compute half of the ``inversion`` staleness handler (the decision and the blend live in
``staleness.py``). Given the stale base model ``w_base``, the client's update ``w_k`` trained
from it and the current model ``w_now``:

1. :func:`invert` optimises a synthetic data set ``D_rec`` (inputs and soft labels) so that
   ``LocalUpdate(w_base; D_rec)`` reproduces ``w_k`` under the L1 norm (001 eq. 2 with the
   L1 disparity of §4.1), ``LocalUpdate`` simplified to a few full-batch gradient steps (§4.1,
   "only full-batch gradient descent"). It stops at ``max_iters`` or at the wall-clock
   ``deadline``, whichever comes first, and can warm-start from the same client's previous
   ``D_rec`` (§4.1, 43 % fewer iterations when the data is fixed).
2. :func:`recompute` replays ``D_rec`` on ``w_now``: ``ŵ = LocalUpdate(w_now; D_rec)`` (§4.2).

:class:`InversionWorker` runs such jobs off the request path (one thread, a bounded queue);
:class:`InlineWorker` runs them at once (the simulator, where runs must be reproducible).
Only floating-point parameters are trained; buffers are copied from the update.
"""

from __future__ import annotations

import copy
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

State = Mapping[str, torch.Tensor]
Clock = Callable[[], float]

MAX_REC = 512  # samples: D_rec never grows past this, whatever n_samples a client claims


@dataclass(frozen=True)
class Net:
    """The architecture updates are inverted through: a ``model`` (its weights unused), the
    ``input_shape`` of one sample and the number of ``classes``."""

    model: torch.nn.Module
    input_shape: tuple[int, ...]
    classes: int

    def copy(self) -> Net:
        """A private copy (the inversion thread must not share a module with anyone)."""
        return Net(copy.deepcopy(self.model), tuple(self.input_shape), int(self.classes))


@dataclass(frozen=True)
class Recipe:
    """How ``LocalUpdate`` is replayed: ``steps`` full-batch gradient steps of rate ``lr``.

    A client's E epochs of mini-batch SGD over n samples with batch B take S = E·⌈n/B⌉ steps
    of rate η; the full-batch stand-in takes min(S, ``max_steps``) steps of rate η·S/steps
    (the same first-order move, fewer unrolled steps to differentiate through), see
    :meth:`for_client`.
    """

    lr: float
    steps: int

    @classmethod
    def for_client(cls, lr: float, epochs: int, batch_size: int, n_samples: int,
                   max_steps: int = 8) -> Recipe:
        """The full-batch stand-in of E epochs of SGD (rate ``lr``, batch ``batch_size``)."""
        total = max(1, epochs) * max(1, math.ceil(max(1, n_samples) / max(1, batch_size)))
        steps = max(1, min(total, max_steps))
        return cls(lr=lr * total / steps, steps=steps)


@dataclass
class Recovered:
    """A recovered data set: inputs ``x`` ``[n, *input_shape]`` and label logits ``[n, C]``."""

    x: torch.Tensor
    label_logits: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class InversionCost:
    """What one inversion cost: wall ``seconds``, optimisation ``iterations``, the final
    relative L1 ``loss`` (|LocalUpdate(w_base; D_rec) − w_k|₁ / |w_k − w_base|₁), whether it
    was ``warm``-started and whether it ran to ``max_iters`` (``complete``) or hit the clock."""

    seconds: float
    iterations: int
    loss: float
    warm: bool
    complete: bool


def rec_size(n_samples: int, fraction: float, minimum: int = 8) -> int:
    """|D_rec| for a client that reports ``n_samples``: ``fraction`` of it (001 tables 1–2
    find 1/2 the knee), at least ``minimum``, at most :data:`MAX_REC`."""
    return int(min(MAX_REC, max(minimum, math.ceil(fraction * max(0, n_samples)))))


def _params(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters()]


def local_update(
    model: torch.nn.Module,
    start: Mapping[str, torch.Tensor],
    rec: Recovered,
    recipe: Recipe,
    *,
    differentiable: bool = False,
) -> dict[str, torch.Tensor]:
    """``LocalUpdate(start; D_rec)``: ``recipe.steps`` full-batch steps on soft-label CE.

    With ``differentiable`` the graph through every step is kept, so the result can be
    differentiated with respect to ``rec`` (second-order, as gradient inversion needs).
    """
    from torch.func import functional_call

    names = _params(model)
    params = {n: start[n].detach().float().requires_grad_(True) for n in names}
    targets = torch.softmax(rec.label_logits, dim=1)
    for _ in range(recipe.steps):
        logits = functional_call(model, params, (rec.x,))
        loss = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=differentiable)
        params = {n: p - recipe.lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
    return params


def _l1_gap(got: Mapping[str, torch.Tensor], want: State, names: list[str]) -> torch.Tensor:
    return sum((got[n] - want[n].float()).abs().sum() for n in names)  # type: ignore[return-value]


def _start(warm: Recovered | None, n: int, input_shape: tuple[int, ...], classes: int,
           seed: int) -> tuple[Recovered, bool]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *input_shape), generator=gen)
    y = torch.randn((n, classes), generator=gen) * 0.1
    if warm is not None and tuple(warm.x.shape[1:]) == tuple(input_shape):
        keep = min(n, len(warm))
        x[:keep] = warm.x[:keep]
        y[:keep] = warm.label_logits[:keep]
        return Recovered(x, y), True
    return Recovered(x, y), False


def invert(
    model: torch.nn.Module,
    base: State,
    update: State,
    *,
    n_rec: int,
    recipe: Recipe,
    input_shape: tuple[int, ...],
    classes: int,
    max_iters: int = 200,
    deadline: float | None = None,
    warm: Recovered | None = None,
    lr: float = 0.1,
    seed: int = 0,
    clock: Clock = time.perf_counter,
) -> tuple[Recovered, InversionCost]:
    """Recover ``D_rec`` (``n_rec`` samples) whose local update from ``base`` is ``update``.

    Adam (rate ``lr``) on the inputs and label logits minimises the relative L1 gap; the
    loop stops after ``max_iters`` iterations or once ``clock()`` passes ``deadline``
    (seconds on ``clock``), and the best ``D_rec`` seen is returned with its cost.
    """
    t0 = clock()
    names = _params(model)
    scale = float(_l1_gap(base, update, names).detach()) or 1.0
    rec, was_warm = _start(warm, n_rec, input_shape, classes, seed)
    rec.x.requires_grad_(True)
    rec.label_logits.requires_grad_(True)
    opt = torch.optim.Adam([rec.x, rec.label_logits], lr=lr)
    best = (math.inf, rec.x.detach().clone(), rec.label_logits.detach().clone())
    iters = 0
    while iters < max_iters and (deadline is None or clock() < deadline):
        opt.zero_grad()
        loss = _l1_gap(local_update(model, base, rec, recipe, differentiable=True),
                       update, names) / scale
        loss.backward()  # type: ignore[no-untyped-call]
        value = float(loss.detach())
        if value < best[0]:
            best = (value, rec.x.detach().clone(), rec.label_logits.detach().clone())
        opt.step()
        iters += 1
    if not math.isfinite(best[0]):  # no iteration ran: the start is the answer
        best = (float("nan"), rec.x.detach().clone(), rec.label_logits.detach().clone())
    cost = InversionCost(clock() - t0, iters, best[0], was_warm, iters >= max_iters)
    return Recovered(best[1], best[2]), cost


def recompute(model: torch.nn.Module, current: State, rec: Recovered, recipe: Recipe,
              like: State) -> dict[str, torch.Tensor]:
    """ŵ = LocalUpdate(current; D_rec) (001 §4.2), as a state dict shaped like ``like``
    (non-parameter entries copied from ``like``, dtypes kept)."""
    with torch.enable_grad():
        params = local_update(model, current, rec, recipe)
    out = {n: t for n, t in like.items()}
    for n, p in params.items():
        out[n] = p.detach().to(like[n].dtype)
    return out


# -- running jobs ----------------------------------------------------------------------------


@dataclass
class Job:
    """One inversion to run: ``fn(deadline)`` computes the result; ``deadline`` is absolute
    (seconds on the worker's clock); ``done`` is set when ``result`` holds the answer (None
    when the job was skipped because its deadline passed while it waited)."""

    key: tuple[str, int, int]
    fn: Callable[[float], object]
    deadline: float
    made_at: int = 0  # the server version the estimate is recomputed on
    done: threading.Event = field(default_factory=threading.Event)
    result: object | None = None


class InlineWorker:
    """Runs each job at once in the caller (deterministic; the simulator)."""

    def __init__(self, clock: Clock = time.perf_counter) -> None:
        self.clock = clock
        self.dropped = 0

    def submit(self, job: Job) -> bool:
        job.result = job.fn(job.deadline)
        job.done.set()
        return True

    def close(self) -> None:
        return None


class InversionWorker:
    """One daemon thread working through a bounded queue of jobs (the live service).

    ``submit`` never blocks: a full queue refuses the job (counted in ``dropped``) and the
    update is then aggregated as it came. A job still waiting at its deadline is skipped.
    """

    def __init__(self, queue_size: int = 8, clock: Clock = time.perf_counter) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1 job, got {queue_size}")
        self.clock = clock
        self.dropped = 0
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="inversion-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> bool:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                if self.clock() < job.deadline:
                    job.result = job.fn(job.deadline)
            except Exception:
                job.result = None
            finally:
                job.done.set()

    def close(self) -> None:
        """Stop the thread after the job in hand (jobs still queued are dropped)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join(timeout=10)

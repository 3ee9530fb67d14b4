"""Attacks on federated training, for experiments only: pure functions on model states.

Nothing in a task spec reaches this module: only `learner_agent.adversary` (switched on by a
hidden agent flag / environment variable read at agent start) and the simulator's own
`adversary` config use it, so that benchmarks and tests can measure robust aggregation.

An attack turns the update ``δ = w_trained − w_base`` of a malicious learner into a bad one
(``docs/algorithms.md``, "Attacks"):

* ``sign_flip`` — ``−s·δ``;
* ``gaussian`` — ``N(0, σ²)`` in every coordinate instead of ``δ``;
* ``alie`` — "a little is enough" (Baruch et al. 2019): ``μ + z·σ``, with ``μ``/``σ`` the
  coordinate-wise mean / (sample) standard deviation of the honest updates and ``z`` from ``n``
  and the number of attackers (:func:`alie_z`);
* ``ipm`` — inner-product manipulation (Xie et al. 2020): ``−ε·μ``;
* ``label_flip`` — train on labels ``C − 1 − y`` (a data attack, :func:`flip_labels`);
* ``inflate`` — claim ``factor ×`` the samples trained (:func:`inflate_samples`);
* ``stale_replay`` — push an update trained long ago again (kept by the caller).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads only when an attack runs (the agent CLI imports the names)
    import torch

State = Mapping[str, "torch.Tensor"]

ATTACK_NAMES: tuple[str, ...] = (
    "sign_flip", "gaussian", "alie", "ipm", "label_flip", "inflate", "stale_replay"
)


def _floats(state: State) -> list[str]:
    return [n for n, t in state.items() if t.is_floating_point()]


def delta(trained: State, base: State) -> dict[str, torch.Tensor]:
    """``trained − base`` for the floating tensors (float64)."""
    return {n: trained[n].detach().double() - base[n].detach().double() for n in _floats(base)}


def apply_delta(base: State, d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``base + d`` in ``base``'s dtypes; tensors ``d`` lacks (integers) stay as in ``base``."""
    return {
        n: (t.detach().double() + d[n]).to(t.dtype) if n in d else t.detach().clone()
        for n, t in base.items()
    }


def sign_flip(d: Mapping[str, torch.Tensor], scale: float = 1.0) -> dict[str, torch.Tensor]:
    """``−scale · δ``."""
    return {n: -scale * t for n, t in d.items()}


def gaussian(d: Mapping[str, torch.Tensor], sigma: float = 1.0, seed: int = 0
             ) -> dict[str, torch.Tensor]:
    """Independent ``N(0, σ²)`` noise in place of every coordinate of ``δ``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(t.shape, generator=g, dtype=torch.float64) * sigma
            for n, t in d.items()}


def mean_std(updates: Sequence[Mapping[str, torch.Tensor]]
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Coordinate-wise mean and sample standard deviation (0 for a single update)."""
    import torch

    if not updates:
        raise ValueError("mean_std needs at least one update")
    mean: dict[str, torch.Tensor] = {}
    std: dict[str, torch.Tensor] = {}
    for n in updates[0]:
        stack = torch.stack([u[n].double() for u in updates])
        mean[n] = stack.mean(dim=0)
        std[n] = stack.std(dim=0) if len(updates) > 1 else torch.zeros_like(mean[n])
    return mean, std


def alie_z(n: int, attackers: int) -> float:
    """Baruch et al.'s ``z_max``: ``s = ⌊n/2 + 1⌋ − attackers`` and ``z = Φ⁻¹((n − s)/n)``."""
    from statistics import NormalDist

    s = math.floor(n / 2 + 1) - attackers
    p = min(max((n - s) / n, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(p)


def alie(mean: Mapping[str, torch.Tensor], std: Mapping[str, torch.Tensor], z: float
         ) -> dict[str, torch.Tensor]:
    """``μ + z·σ``, coordinate-wise (ByzFL's ``ALittleIsEnough(tau=z)``)."""
    return {n: mean[n] + z * std[n] for n in mean}


def ipm(mean: Mapping[str, torch.Tensor], eps: float = 0.5) -> dict[str, torch.Tensor]:
    """``−ε · μ``."""
    return {n: -eps * t for n, t in mean.items()}


def flip_labels(y: Any, num_classes: int) -> Any:
    """``C − 1 − y`` (numpy array or tensor in, same kind out)."""
    return (num_classes - 1) - y


def inflate_samples(n: int, factor: float = 1000.0) -> int:
    """The sample count an inflating learner claims."""
    return max(1, int(n * factor))

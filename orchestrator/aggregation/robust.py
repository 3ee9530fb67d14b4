"""Robust aggregation rules: pure cores, tensor dicts in, tensor dict out, no I/O.

Every rule combines the *updates* ``δ_k = w_k − w`` of the learners against the current
global model ``w`` and returns ``w + δ`` (``docs/algorithms.md``, "Robust aggregation"):

* ``fedavg`` — ``δ = Σ_k p_k δ_k`` with ``p_k = ω_k / Σ ω_j`` (sample counts): plain FedAvg;
* ``clip`` — norm clipping: ``δ = Σ_k p_k δ_k · min(1, τ/‖δ_k‖)``;
* ``median`` — coordinate-wise median of the ``δ_k`` (Yin et al. 2018);
* ``trimmed_mean`` — per coordinate, drop the ``f`` largest and ``f`` smallest, average the
  rest (Yin et al. 2018);
* ``krum`` — the ``δ_k`` whose ``n − f − 2`` nearest neighbours are closest in squared
  distance (Blanchard et al. 2017); ``multi_krum`` — the mean of the ``m`` best-scored ones;
* ``centered_clip`` — ``L`` iterations of ``v ← v + 1/n Σ_k (δ_k − v) min(1, τ/‖δ_k − v‖)``
  from ``v = 0`` (Karimireddy et al. 2021).

Only ``fedavg`` and ``clip`` use the sample-count weights; the other rules count every update
once, as in their papers, so an inflated sample count buys an attacker nothing there. ``τ``
left unset is the median of the norms ``‖δ_k‖`` (``‖δ_k − v‖`` for centered clipping), which
stays an honest norm while fewer than half of the updates are malicious.

The vector cores (``*_rows``) take an ``n × d`` float64 matrix (one flattened update per row)
and are what the tests check against hand-computed vectors and ByzFL. ``aggregate`` flattens
the floating tensors of the states, applies the rule and unflattens; integer tensors (e.g.
BatchNorm's counters) keep the current model's values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

State = Mapping[str, torch.Tensor]


# -- vector cores ----------------------------------------------------------------------------


def _check_rows(x: torch.Tensor) -> None:
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"expected an n × d matrix with n ≥ 1 updates, got shape {tuple(x.shape)}")


def mean_rows(x: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
    """The weighted mean of the rows (weights normalised to sum to one; None = equal)."""
    _check_rows(x)
    if weights is None:
        return x.mean(dim=0)
    w = torch.tensor([float(v) for v in weights], dtype=x.dtype)
    if w.shape[0] != x.shape[0] or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError("weights must be one non-negative number per row with a positive sum")
    return (w / w.sum()) @ x


def median_norm(x: torch.Tensor) -> float:
    """The median of the row norms (mean of the two middle ones for an even count)."""
    return float(median_rows(x.norm(dim=1, keepdim=True))[0])


def clip_rows(x: torch.Tensor, tau: float | None = None,
              weights: Sequence[float] | None = None) -> torch.Tensor:
    """Norm clipping: scale each row to norm at most ``tau`` (None: the median row norm), then
    take the weighted mean."""
    _check_rows(x)
    tau = median_norm(x) if tau is None else float(tau)
    norms = x.norm(dim=1)
    scale = torch.where(norms > tau, tau / norms.clamp_min(1e-300), torch.ones_like(norms))
    return mean_rows(x * scale[:, None], weights)


def median_rows(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median; for an even number of rows the mean of the two middle values."""
    _check_rows(x)
    s, _ = torch.sort(x, dim=0)
    n = x.shape[0]
    if n % 2:
        return s[n // 2]
    return (s[n // 2 - 1] + s[n // 2]) / 2


def trimmed_mean_rows(x: torch.Tensor, f: int) -> torch.Tensor:
    """Coordinate-wise trimmed mean: drop the ``f`` largest and ``f`` smallest values of each
    coordinate and average the ``n − 2f`` left (needs ``n > 2f``)."""
    _check_rows(x)
    n = x.shape[0]
    if f < 0 or n <= 2 * f:
        raise ValueError(f"trimmed mean of {n} updates cannot trim f = {f} from each side")
    s, _ = torch.sort(x, dim=0)
    return s[f: n - f].mean(dim=0)


def krum_scores(x: torch.Tensor, f: int) -> torch.Tensor:
    """Krum's score of each row: the sum of its squared distances to its ``n − f − 2`` nearest
    other rows (at least one, at most ``n − 1``)."""
    _check_rows(x)
    n = x.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=x.dtype)
    d2 = torch.cdist(x, x).pow(2)
    d2.fill_diagonal_(float("inf"))
    k = min(n - 1, max(1, n - f - 2))
    near, _ = torch.topk(d2, k, dim=1, largest=False)
    return near.sum(dim=1)


def multi_krum_rows(x: torch.Tensor, f: int, m: int | None = None) -> torch.Tensor:
    """Multi-Krum: the mean of the ``m`` rows with the lowest Krum scores (default ``n − f``);
    ``m = 1`` is Krum. Ties go to the lower row index."""
    n = x.shape[0]
    m = n - f if m is None else m
    m = min(n, max(1, m))
    scores = krum_scores(x, f)
    order = sorted(range(n), key=lambda i: (float(scores[i]), i))
    return x[order[:m]].mean(dim=0)


def krum_rows(x: torch.Tensor, f: int) -> torch.Tensor:
    """Krum: the row with the lowest score."""
    return multi_krum_rows(x, f, 1)


def centered_clip_rows(x: torch.Tensor, tau: float | None = None, iterations: int = 1,
                       center: torch.Tensor | None = None) -> torch.Tensor:
    """Centered clipping: ``L`` steps of ``v ← v + mean_k (x_k − v)·min(1, τ/‖x_k − v‖)`` from
    ``center`` (default 0). ``tau`` None: the median of ``‖x_k − v‖`` at each step."""
    _check_rows(x)
    if iterations < 1:
        raise ValueError(f"centered clipping needs at least 1 iteration, got {iterations}")
    v = torch.zeros(x.shape[1], dtype=x.dtype) if center is None else center.to(x.dtype)
    for _ in range(iterations):
        diff = x - v
        t = median_norm(diff) if tau is None else float(tau)
        norms = diff.norm(dim=1)
        scale = torch.where(norms > t, t / norms.clamp_min(1e-300), torch.ones_like(norms))
        v = v + (diff * scale[:, None]).mean(dim=0)
    return v


# -- the rule a spec names -------------------------------------------------------------------


@dataclass(frozen=True)
class RobustRule:
    """A rule and its settings, as ``sync.aggregation`` / ``async.aggregation`` give them.

    ``byzantine`` is the fraction of updates assumed malicious: ``f = ⌊byzantine · n⌋`` for
    ``trimmed_mean`` (capped at ``⌈n/2⌉ − 1``), ``krum`` and ``multi_krum``; ``clip_norm`` is
    τ for ``clip`` and ``centered_clip`` (None: the median norm); ``select`` is multi-Krum's
    ``m`` (None: ``n − f``); ``iterations`` is centered clipping's ``L``.
    """

    rule: str = "fedavg"
    byzantine: float = 0.2
    clip_norm: float | None = None
    select: int | None = None
    iterations: int = 1

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(
                f"unknown aggregation rule {self.rule!r}; choose one of {', '.join(RULES)}"
            )

    @classmethod
    def from_spec(cls, spec: Any) -> RobustRule:
        """From a ``plexus.spec.AggregationSpec`` (or None: plain FedAvg)."""
        if spec is None:
            return cls()
        return cls(spec.rule, spec.byzantine, spec.clip_norm, spec.select, spec.iterations)

    @property
    def weighted(self) -> bool:
        """Whether the rule uses the sample-count weights."""
        return self.rule in ("fedavg", "clip")

    def f(self, n: int) -> int:
        """How many of ``n`` updates the rule assumes malicious."""
        f = math.floor(self.byzantine * n + 1e-9)
        if self.rule == "trimmed_mean":
            f = min(f, (n - 1) // 2)
        return max(0, f)

    def rows(self, x: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
        """Apply the rule to the rows of ``x`` (updates, one per row)."""
        return RULES[self.rule](self, x, weights)


# The rules by name; `registry.py` checks these equal `plexus.spec.RobustRuleName` at import.
RULES: dict[str, Callable[[RobustRule, torch.Tensor, Sequence[float] | None], torch.Tensor]] = {
    "fedavg": lambda r, x, w: mean_rows(x, w),
    "clip": lambda r, x, w: clip_rows(x, r.clip_norm, w),
    "median": lambda r, x, w: median_rows(x),
    "trimmed_mean": lambda r, x, w: trimmed_mean_rows(x, r.f(x.shape[0])),
    "krum": lambda r, x, w: krum_rows(x, r.f(x.shape[0])),
    "multi_krum": lambda r, x, w: multi_krum_rows(x, r.f(x.shape[0]), r.select),
    "centered_clip": lambda r, x, w: centered_clip_rows(x, r.clip_norm, r.iterations),
}


def _float_names(state: State) -> list[str]:
    return [n for n, t in state.items() if t.is_floating_point()]


def flatten(state: State, names: Sequence[str]) -> torch.Tensor:
    """The tensors ``names`` of ``state`` as one float64 vector."""
    return torch.cat([state[n].detach().reshape(-1).to(torch.float64) for n in names])


def aggregate(
    rule: RobustRule,
    current: State,
    states: Sequence[State],
    weights: Sequence[float] | None = None,
    scales: Sequence[float] | None = None,
) -> dict[str, torch.Tensor]:
    """``current + rule(δ_1 … δ_n)`` with ``δ_k = scales[k] · (states[k] − current)``.

    ``weights`` (e.g. sample counts) are used by ``fedavg`` and ``clip`` only; ``scales``
    (default 1) are the asynchronous staleness factors ``s_k``. The states must hold the same
    tensor names and shapes as ``current`` (callers check this first).
    """
    if not states:
        raise ValueError("robust aggregation needs at least one update; got none")
    names = _float_names(current)
    base = flatten(current, names)
    x = torch.stack([flatten(s, names) - base for s in states])
    if scales is not None:
        x = x * torch.tensor([float(s) for s in scales], dtype=x.dtype)[:, None]
    delta = rule.rows(x, weights if rule.weighted else None)
    out: dict[str, torch.Tensor] = {}
    offset = 0
    new = base + delta
    for name, ref in current.items():
        if name in names:
            size = ref.numel()
            out[name] = new[offset: offset + size].reshape(ref.shape).to(ref.dtype)
            offset += size
        else:
            out[name] = ref.detach().clone()
    return out

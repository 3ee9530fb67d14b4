"""Staleness handling for any asynchronous aggregator: none, polynomial, DC-ASGD compensation.

The three options are the baselines of section 5 of ``001_2b8873d72fd74cfd.txt``: direct
aggregation, weighted aggregation whose weight decays with staleness, and first-order
compensation as in DC-ASGD (Zheng et al. 2017). Each handler answers two questions for an update
of staleness ``τ`` (versions):

* ``scale(τ)`` — a factor in (0, 1] that multiplies the update's FedAvg weight; whatever weight
  is taken away stays with the current global model (see ``base.py``);
* ``adjust(w_k, w_base, w_now)`` — a model to aggregate in place of ``w_k``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch

from orchestrator.aggregation.errors import UnknownAggregator

State = Mapping[str, torch.Tensor]


class StalenessHandler(ABC):
    """How an aggregator treats an update computed from an older global model."""

    name: str = ""

    @abstractmethod
    def scale(self, staleness: int) -> float:
        """Weight factor in (0, 1] for an update ``staleness`` versions old."""

    def adjust(self, update: State, base: State, current: State) -> State:
        """The model to aggregate for ``update`` trained from ``base`` while ``current`` holds."""
        return update


class NoStaleness(StalenessHandler):
    """Direct aggregation: a stale update counts like a fresh one (001 §5, first baseline)."""

    name = "none"

    def scale(self, staleness: int) -> float:
        return 1.0


class PolynomialStaleness(StalenessHandler):
    """Weight ``(1 + τ)^(-a)``: the polynomial decay of FedAsync / FedBuff (001 §5, second).

    ``a`` (dimensionless, ≥ 0) sets how fast stale updates fade; 0.5 is FedBuff's choice.
    """

    name = "poly"

    def __init__(self, a: float = 0.5) -> None:
        if a < 0:
            raise ValueError(f"polynomial staleness exponent must be ≥ 0, got {a}")
        self.a = a

    def scale(self, staleness: int) -> float:
        return float((1.0 + max(0, staleness)) ** (-self.a))


class DCASGDStaleness(StalenessHandler):
    """First-order delay compensation of DC-ASGD (001 §5, third baseline).

    DC-ASGD corrects a gradient ``g`` computed at stale weights ``w_base`` for use at
    ``w_now`` by the Taylor term with the diagonal Hessian approximation ``λ g ⊙ g``:
    ``g̃ = g + λ g ⊙ g ⊙ (w_now − w_base)``. A client's update is ``Δ = w_k − w_base ≈ −η S g``
    after ``S`` local steps of rate ``η``; substituting ``g = −Δ/(ηS)`` gives

        Δ̃ = Δ − c · Δ ⊙ Δ ⊙ (w_now − w_base),   c = λ / (η S),

    and the compensated model ``w_now + Δ̃`` is what gets aggregated (the update is replayed
    on the current model rather than on the one it was computed from). ``c`` is the single
    parameter here (units 1/parameter). With ``τ = 0``, ``w_now = w_base`` and nothing changes.
    """

    name = "dcasgd"

    def __init__(self, c: float = 1.0) -> None:
        if c < 0:
            raise ValueError(f"DC-ASGD compensation strength c must be ≥ 0, got {c}")
        self.c = c

    def scale(self, staleness: int) -> float:
        return 1.0

    def adjust(self, update: State, base: State, current: State) -> State:
        out: dict[str, torch.Tensor] = {}
        for name, w_k in update.items():
            if not w_k.is_floating_point():
                out[name] = w_k
                continue
            delta = w_k - base[name]
            drift = current[name] - base[name]
            out[name] = current[name] + delta - self.c * delta * delta * drift
        return out


HANDLERS: dict[str, type[StalenessHandler]] = {
    NoStaleness.name: NoStaleness,
    PolynomialStaleness.name: PolynomialStaleness,
    DCASGDStaleness.name: DCASGDStaleness,
}

STALENESS_NAMES: tuple[str, ...] = tuple(HANDLERS)


def create_staleness(name: str, **params: float) -> StalenessHandler:
    """Build the staleness handler ``name`` (``none``, ``poly``, ``dcasgd``)."""
    try:
        cls = HANDLERS[name]
    except KeyError:
        raise UnknownAggregator(
            f"unknown staleness handler {name!r}; choose one of {', '.join(STALENESS_NAMES)}"
        ) from None
    return cls(**params)

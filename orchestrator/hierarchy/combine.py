"""The pure part of an edge aggregator: a subtree's updates become one partial aggregate.

FedAvg is associative when every partial carries its total weight: the orchestrator's
``Σ_g W_g·avg_g / Σ_g W_g`` over groups g with ``avg_g = Σ_{k∈g} n_k·w_k / W_g`` and
``W_g = Σ_{k∈g} n_k`` is ``Σ_k n_k·w_k / Σ_k n_k``, flat FedAvg over every learner (McMahan et
al.'s weighting by samples, see docs/algorithms.md). Only the float32 rounding of each partial
separates the two (tests check 1e-6).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from orchestrator.aggregation.fedavg import weighted_average


@dataclass(frozen=True)
class Partial:
    """A subtree's FedAvg: ``state`` weighted by ``weight`` (its total samples trained),
    ``samples`` per child name (the children that trained)."""

    state: dict[str, torch.Tensor] | None
    weight: int
    samples: dict[str, int] = field(default_factory=dict)


def combine(updates: Mapping[str, tuple[Mapping[str, torch.Tensor], int]]) -> Partial:
    """FedAvg of ``{child: (state, samples_trained)}`` weighted by samples; children that
    trained nothing count as zero. No sample at all: ``state`` is None, ``weight`` 0."""
    samples = {name: int(n) for name, (_s, n) in updates.items()}
    kept = [(s, n) for s, n in updates.values() if n > 0]
    if not kept:
        return Partial(None, 0, samples)
    state = weighted_average([s for s, _ in kept], [float(n) for _, n in kept])
    return Partial(state, sum(n for _, n in kept), samples)


def split_shards(shards: Sequence[int], shares: Mapping[str, int]) -> dict[str, list[int]]:
    """Deal an allocation of ``shards`` to children in proportion to ``shares`` (DAB's a_k,
    or 1 each for an equal split), in child-name order; each gets whole shards, the remainder
    goes one by one to the first children. A child with share ≤ 0 gets none."""
    names = sorted(n for n, s in shares.items() if s > 0)
    out: dict[str, list[int]] = {n: [] for n in sorted(shares)}
    if not names or not shards:
        return out
    total = sum(shares[n] for n in names)
    if total == len(shards):  # DAB: each child gets exactly the a_k it asked for
        counts = {n: shares[n] for n in names}
    else:
        counts = {n: len(shards) * shares[n] // total for n in names}
        for n in names[: len(shards) - sum(counts.values())]:
            counts[n] += 1
    pos = 0
    for n in names:
        out[n] = list(shards[pos : pos + counts[n]])
        pos += counts[n]
    return out

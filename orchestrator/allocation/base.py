"""The allocator family: one abstract base, one small class per scheme, a registry by name.

An allocator is a sans-IO core: it receives plain reports gathered from the learners and a
plain description of the round, and returns how many shards each learner trains on. It never
touches a socket or a clock, so the live round driver and the simulator share it unchanged.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeVar

import numpy as np

from plexus.cost import eta

# What the round driver must ask each learner before allocating:
#   "plan"      -> the learner answers only its own bound a_k (DAB, thesis eq. 3.5);
#   "benchmark" -> the learner reveals b_k (bytes/s) and c_k (samples/s) (CSA, MED, MMTT);
#   "none"      -> nothing is asked (equal split knows nothing about the learners).
Probe = Literal["plan", "benchmark", "none"]


@dataclass(frozen=True)
class LearnerReport:
    """What one learner told the orchestrator before a round.

    `a_k` is set under DAB; `bandwidth` (bytes/s) and `compute` (samples/s) under centralized
    allocators; `state` is the stressor state a learner reports, when it reports one.
    """

    learner_id: str
    a_k: int | None = None
    bandwidth: float | None = None
    compute: float | None = None
    state: str | None = None


@dataclass(frozen=True)
class RoundContext:
    """Plain facts about the task and round that an allocator may use.

    Sizes are in bytes, the deadline in seconds; `iterations` is μ (passes over the shards).
    `total_shards` is the fixed amount of data per round of the centralized baselines; when
    it is None they use `num_shards` (one pass over the whole training split per round).
    """

    num_shards: int
    shard_samples: int
    shard_bytes: int
    model_bytes: int
    iterations: int
    deadline_s: float
    total_shards: int | None = None
    extra: Mapping[str, object] = field(default_factory=dict)


class Allocator(ABC):
    """Decides a whole number of shards per learner for one synchronous round."""

    name: ClassVar[str]
    probe: ClassVar[Probe]
    # Whether learners halt at the deadline D (DAB's contract) or train their whole allocation
    # and are cut off only at D + grace (the centralized baselines of thesis 3.4 fix the data
    # and do not halt, which is why they overrun tight deadlines).
    halts_at_deadline: ClassVar[bool] = False
    # Whether learners are asked again every round. DAB and CSA benchmark once per task (thesis
    # alg. 10 fixes a_k before the G global updates); allocators that react to per-round
    # stressor states (MED, MMTT) set this to True.
    reprobe_each_round: ClassVar[bool] = False

    @abstractmethod
    def allocate(self, reports: Sequence[LearnerReport], ctx: RoundContext) -> dict[str, int]:
        """Return `{learner_id: shards}`; learners given 0 shards sit the round out."""


_REGISTRY: dict[str, type[Allocator]] = {}

A = TypeVar("A", bound=type[Allocator])


def register(cls: A) -> A:
    """Class decorator adding an allocator to the registry under its `name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"allocator {cls.__qualname__} needs a `name` that is an identifier")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"an allocator named {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def get_allocator(name: str) -> Allocator:
    """A fresh allocator registered under `name`; ValueError listing the known names if none."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ValueError(f"unknown allocator {name!r} (known: {known})") from None


def allocator_names() -> list[str]:
    """Names of every registered allocator, sorted."""
    return sorted(_REGISTRY)


def learner_time_s(
    shards: int,
    *,
    bandwidth: float,
    compute: float,
    ctx: RoundContext,
) -> float:
    """Predicted global-update-cycle time of one learner, seconds (thesis eq. 3.4).

    η = (Ω_m + Ω_d·a)/b + μ·a·s/c + Ω_m/b, with b in bytes/s, c in samples/s and s samples per
    shard. A learner with no shards takes no part and costs 0 s.
    """
    if shards <= 0:
        return 0.0
    return eta(
        shards,
        model_bytes=ctx.model_bytes,
        shard_bytes=ctx.shard_bytes,
        bandwidth=max(bandwidth, 1e-9),
        iterations=ctx.iterations,
        shard_samples=ctx.shard_samples,
        compute=max(compute, 1e-9),
    )


def assign_shard_ids(
    counts: Mapping[str, int],
    num_shards: int,
    *,
    seed: int,
    round_index: int,
) -> dict[str, list[int]]:
    """Turn shard counts into shard ids, deterministically in (seed, round).

    Shards are dealt from a fresh permutation of `range(num_shards)` each round. While the
    total asked stays within the dataset no shard is given twice; past it the deal wraps round
    to a new permutation, so shards are duplicated, as the thesis allows under DAB (ch. 3.1).
    A learner never receives the same shard twice unless it alone asks for more than the set.
    """
    if num_shards <= 0:
        raise ValueError("num_shards must be positive")
    rng = np.random.default_rng([seed, round_index])
    deck: list[int] = []
    out: dict[str, list[int]] = {}
    for learner_id in sorted(counts):
        want = max(0, int(counts[learner_id]))
        taken: list[int] = []
        held: set[int] = set()
        while len(taken) < want:
            if len(held) >= num_shards:
                held = set()  # this learner alone holds every shard: start a second copy
            pick = next((i for i in range(len(deck) - 1, -1, -1) if deck[i] not in held), None)
            if pick is None:
                deck = [int(i) for i in rng.permutation(num_shards)] + deck
                continue
            shard = deck.pop(pick)
            taken.append(shard)
            held.add(shard)
        out[learner_id] = taken
    return out


def largest_remainder(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split `total` whole units in proportion to `weights` (Hamilton's method, ties by id)."""
    keys = sorted(weights)
    wsum = sum(max(0.0, weights[k]) for k in keys)
    if total <= 0 or not keys:
        return dict.fromkeys(keys, 0)
    if wsum <= 0:
        wsum = float(len(keys))
        weights = dict.fromkeys(keys, 1.0)
    exact = {k: total * max(0.0, weights[k]) / wsum for k in keys}
    out = {k: math.floor(v) for k, v in exact.items()}
    left = total - sum(out.values())
    for k in sorted(keys, key=lambda k: (-(exact[k] - out[k]), k))[:left]:
        out[k] += 1
    return out


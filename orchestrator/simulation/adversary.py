"""The simulator's malicious clients, for experiments only (config key ``adversary``).

The attacks themselves are ``plexus.attacks``' pure functions, the ones a malicious agent uses
(``learner_agent/adversary.py``); here the attackers collude and know the honest updates:
ALIE and IPM take the coordinate-wise mean and standard deviation of the honest updates
trained in the same batch of jobs (all jobs in flight, trained together by the engine), as in
Baruch et al. 2019 and Xie et al. 2020. If the batch holds no honest job the attackers fall back
on the honest training of their own data (the papers' non-omniscient variant).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from orchestrator.simulation.config import AdversaryConfig
from plexus import attacks


@dataclass
class Attackers:
    """Who attacks and how; ``apply`` rewrites the malicious jobs' results in place."""

    config: AdversaryConfig
    clients: int
    seed: int
    malicious: frozenset[int] = field(init=False)
    _replay: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict, init=False)
    _calls: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        count = round(cfg.fraction * self.clients) if cfg.attack != "none" else 0
        self.malicious = frozenset(random.Random(self.seed).sample(range(self.clients), count))

    def is_malicious(self, client: int) -> bool:
        return client in self.malicious

    @property
    def flips_labels(self) -> bool:
        return self.config.attack == "label_flip" and bool(self.malicious)

    def samples(self, client: int, n: int) -> int:
        """The sample count ``client`` claims for ``n`` trained."""
        if self.config.attack == "inflate" and client in self.malicious:
            return attacks.inflate_samples(n, self.config.factor)
        return n

    def z(self) -> float:
        if self.config.z is not None:
            return self.config.z
        return attacks.alie_z(self.clients, len(self.malicious))

    def apply(self, trained: Sequence[tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]]]
              ) -> dict[int, dict[str, torch.Tensor]]:
        """``trained``: ``(client, base, result)`` of every job just trained. Returns the states
        the malicious ones send instead, by client."""
        bad = [t for t in trained if t[0] in self.malicious]
        attack = self.config.attack
        if not bad or attack in ("none", "label_flip", "inflate"):
            return {}
        deltas = {c: attacks.delta(result, base) for c, base, result in trained}
        honest = [deltas[c] for c, _, _ in trained if c not in self.malicious]
        mean, std = attacks.mean_std(honest or [deltas[c] for c, _, _ in bad])
        out: dict[int, dict[str, torch.Tensor]] = {}
        for c, base, result in bad:
            self._calls += 1
            if attack == "stale_replay":
                kept = self._replay.setdefault(c, {k: v.clone() for k, v in result.items()})
                out[c] = {k: v.clone() for k, v in kept.items()}
                continue
            if attack == "sign_flip":
                d = attacks.sign_flip(deltas[c], self.config.scale)
            elif attack == "gaussian":
                d = attacks.gaussian(deltas[c], self.config.sigma, self.seed * 7919 + self._calls)
            elif attack == "alie":
                d = attacks.alie(mean, std, self.z())
            else:  # ipm
                d = attacks.ipm(mean, self.config.eps)
            out[c] = attacks.apply_delta(base, d)
        return out

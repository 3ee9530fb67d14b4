"""A malicious learner, for experiments only: attacks applied to what this agent trains.

Switched on only at agent start, by the hidden option ``plexus agent run --adversary SPEC``
or the environment variable ``PLEXUS_ADVERSARY`` — never by anything the orchestrator sends.
``SPEC`` is an attack name from ``plexus.attacks.ATTACK_NAMES`` with optional settings,
e.g. ``sign_flip``, ``sign_flip:scale=4``, ``gaussian:sigma=1``, ``alie:z=1``, ``ipm:eps=0.5``,
``label_flip``, ``inflate:factor=1000``, ``stale_replay``.

One agent sees only its own update, so ALIE and IPM use the literature's weaker,
non-omniscient variant: the honest mean ``μ`` is estimated by the agent's own update ``δ`` and
the coordinate-wise standard deviation by ``|δ|`` (ALIE: ``δ + z|δ|``; IPM: ``−ε δ``). The
simulator's attackers know the honest updates (``orchestrator/simulation``).

The hooks (``learner_agent.trainer.train_round`` for sync rounds and
``learner_agent.spin_client`` for async pushes) call :func:`active` and, when an adversary is
configured, pass the labels, the trained state and the sample count through it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from plexus import attacks

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ENV_VAR = "PLEXUS_ADVERSARY"
_SETTINGS = {"scale": 1.0, "sigma": 1.0, "z": 1.0, "eps": 0.5, "factor": 1000.0, "seed": 0.0}


@dataclass
class Adversary:
    """One attack and its settings; keeps the first trained state for ``stale_replay``."""

    attack: str
    settings: dict[str, float] = field(default_factory=dict)
    _replay: dict[str, Any] | None = field(default=None, repr=False)
    _calls: int = 0

    def __post_init__(self) -> None:
        if self.attack not in attacks.ATTACK_NAMES:
            raise ValueError(
                f"unknown attack {self.attack!r}; choose one of {', '.join(attacks.ATTACK_NAMES)}"
            )
        unknown = sorted(set(self.settings) - set(_SETTINGS))
        if unknown:
            raise ValueError(f"unknown adversary setting(s) {unknown}; known: {sorted(_SETTINGS)}")

    def get(self, key: str) -> float:
        return float(self.settings.get(key, _SETTINGS[key]))

    def labels(self, y: Any, num_classes: int) -> Any:
        """The labels this learner trains on (flipped under ``label_flip``)."""
        return attacks.flip_labels(y, num_classes) if self.attack == "label_flip" else y

    def samples(self, n: int) -> int:
        """The sample count this learner reports (inflated under ``inflate``)."""
        return attacks.inflate_samples(n, self.get("factor")) if self.attack == "inflate" else n

    def update(self, trained: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
        """The state this learner sends instead of ``trained`` (trained from ``base``)."""
        self._calls += 1
        out = {k: v.detach().clone() for k, v in trained.items()}
        if self.attack in ("label_flip", "inflate"):
            return out
        if self.attack == "stale_replay":
            if self._replay is None:
                self._replay = out
            return {k: v.clone() for k, v in self._replay.items()}
        d = attacks.delta(trained, base)
        if self.attack == "sign_flip":
            bad = attacks.sign_flip(d, self.get("scale"))
        elif self.attack == "gaussian":
            bad = attacks.gaussian(d, self.get("sigma"), int(self.get("seed")) + self._calls)
        elif self.attack == "alie":
            spread = {n: t.abs() for n, t in d.items()}
            bad = attacks.alie(d, spread, self.get("z"))
        else:  # ipm
            bad = attacks.ipm(d, self.get("eps"))
        return attacks.apply_delta(base, bad)


def parse(text: str) -> Adversary:
    """``name[:key=value,...]`` → :class:`Adversary` (``ValueError`` naming what is wrong)."""
    name, _, rest = text.strip().partition(":")
    settings: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        try:
            if not eq:
                raise ValueError
            settings[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"adversary setting {item!r} must be key=number") from None
    return Adversary(name, settings)


_active: Adversary | None = None


def configure(text: str | None) -> Adversary | None:
    """Install the adversary ``text`` describes for this process (None or "": none)."""
    global _active
    _active = parse(text) if text else None
    if _active is not None:
        log.warning("EXPERIMENTS ONLY: this agent attacks training with %s", _active)
    return _active


def active() -> Adversary | None:
    """The adversary configured at agent start, if any."""
    return _active

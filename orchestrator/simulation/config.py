"""The simulator's configuration schema (YAML or JSON; unknown keys are an error)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.errors import BadInput
from plexus.attacks import ATTACK_NAMES
from plexus.spec import AggregationSpec, AggregatorName, DatasetSpec, ModelName, StalenessName


class SimulationConfigError(BadInput, ValueError):
    """A simulator config that does not parse or validate; the message says which key."""

    code = "invalid_config"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PretrainConfig(_Strict):
    """The deployed model SPIN fine-tunes: trained centrally on a held-out training slice."""

    samples: int = Field(500, ge=0)  # taken from the training split, never given to clients
    epochs: int = Field(10, ge=0)
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(0.001, gt=0.0)
    batch_size: int = Field(32, ge=1)


class TrainingConfig(_Strict):
    """Local training on a client (SPIN alg. 1, lines 6–11)."""

    optimizer: Literal["sgd"] = "sgd"  # plain SGD: what the vectorised trainer reproduces
    lr: float = Field(0.01, gt=0.0)
    batch_size: int = Field(16, ge=1)  # B
    epochs: int = Field(1, ge=1)  # E


class ArrivalConfig(_Strict):
    """Poisson arrivals of labelled samples at each client."""

    rate: float = Field(0.1, gt=0.0)  # λ, samples/s per client
    pull_threshold: int = Field(10, ge=1)  # D, samples held before the first pull
    alpha: float = Field(1.0, gt=0.0)  # Dirichlet concentration of the label mix per client


class DeviceConfig(_Strict):
    """How each client's compute rate (samples/s) and bandwidth (bytes/s) are drawn.

    ``lognormal``: median ``compute`` / ``bandwidth`` with log-space spread ``sigma``;
    ``uniform``: uniform on ``[x·(1−spread), x·(1+spread)]``; ``fixed``: every client the same;
    ``measured``: cycle through ``profiles`` (e.g. subset-benchmarking results of real agents,
    ``{"compute": samples/s, "bandwidth": bytes/s}``) in client order.
    """

    distribution: Literal["lognormal", "uniform", "fixed", "measured"] = "lognormal"
    compute: float = Field(5.0, gt=0.0)  # samples/s
    bandwidth: float = Field(1.0e6, gt=0.0)  # bytes/s
    sigma: float = Field(0.5, ge=0.0)
    spread: float = Field(0.5, ge=0.0, lt=1.0)
    profiles: list[dict[str, float]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _profiles_when_measured(self) -> DeviceConfig:
        if self.distribution == "measured":
            if not self.profiles:
                raise ValueError("devices.distribution 'measured' needs devices.profiles")
            for i, p in enumerate(self.profiles):
                if set(p) != {"compute", "bandwidth"} or min(p.values()) <= 0:
                    raise ValueError(
                        f"devices.profiles[{i}] must be {{compute: samples/s > 0, "
                        f"bandwidth: bytes/s > 0}}, got {p}"
                    )
        return self


class AggregatorConfig(_Strict):
    """Which server runs and its parameters (each used only by the aggregators named)."""

    name: AggregatorName = "spin"
    k: int = Field(10, ge=1)  # all: buffer size K
    pi_s: float | None = Field(30.0, gt=0.0)  # spin: timeout π (seconds); null = off
    concurrency: int = Field(20, ge=1)  # fedbuff, port: clients drawn per round
    selection_interval_s: float = Field(10.0, gt=0.0)  # fedbuff, port: redraw period
    staleness_bound: int = Field(3, ge=1)  # port: versions before a client is stopped
    similarity_weight: float = Field(1.0, ge=0.0)  # port
    staleness_weight: float = Field(1.0, ge=0.0)  # port
    staleness: StalenessName = "none"  # all
    poly_a: float = Field(0.5, ge=0.0)  # staleness = poly: exponent a
    dcasgd_c: float = Field(1.0, ge=0.0)  # staleness = dcasgd: strength c
    # all: server learning rate η_g, model += η_g · (aggregate − model); 1 = the papers' servers
    server_lr: float = Field(1.0, gt=0.0, le=10.0)
    # all: how the buffer is combined (fedavg, clip, median, ...), as a task spec's
    # `async.aggregation`
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec)


AttackName = Literal[
    "none", "sign_flip", "gaussian", "alie", "ipm", "label_flip", "inflate", "stale_replay"
]
if set(AttackName.__args__) != {"none", *ATTACK_NAMES}:  # type: ignore[attr-defined]
    raise ImportError("simulation AttackName differs from plexus.attacks.ATTACK_NAMES")


class AdversaryConfig(_Strict):
    """Experiments only: which clients are malicious and how they attack (docs/simulator.md).

    ``fraction`` of the clients (drawn with the run's seed) attack with ``attack``; ALIE and
    IPM know the honest updates trained at the same time (the papers' omniscient attacker).
    """

    attack: AttackName = "none"
    fraction: float = Field(0.0, ge=0.0, lt=1.0)
    scale: float = Field(1.0, gt=0.0)  # sign_flip: −scale·δ
    sigma: float = Field(1.0, gt=0.0)  # gaussian: N(0, σ²) per coordinate
    z: float | None = None  # alie; null = Baruch et al.'s z_max for these n and attackers
    eps: float = Field(0.5, gt=0.0)  # ipm: −ε·μ
    factor: float = Field(1000.0, ge=1.0)  # inflate: claimed samples × factor


class StopConfig(_Strict):
    """When a run ends (whichever comes first)."""

    max_time_s: float = Field(3600.0, gt=0.0)  # virtual seconds
    target_accuracy: float | None = Field(None, gt=0.0, le=1.0)
    stop_at_target: bool = True
    max_aggregations: int | None = Field(None, ge=1)


class SimulationConfig(_Strict):
    """A whole simulated run; see docs/simulator.md for every key."""

    name: str = "simulation"
    seed: int = 0
    clients: int = Field(100, ge=1)
    model: ModelName = "lenet5"
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    eval_samples: int | None = Field(None, ge=1)  # test samples scored after each aggregation
    # Score the model after an aggregation only if this many virtual seconds have passed since
    # the last score (null = after every aggregation): one time grid for every server.
    eval_interval_s: float | None = Field(None, gt=0.0)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    arrivals: ArrivalConfig = Field(default_factory=ArrivalConfig)
    devices: DeviceConfig = Field(default_factory=DeviceConfig)
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    stop: StopConfig = Field(default_factory=StopConfig)
    adversary: AdversaryConfig = Field(default_factory=AdversaryConfig)
    batched_training: bool = True  # train concurrent clients together (same result, faster)
    # Clients per vectorised batch (and per Ray task under `--ray`): the same value gives the
    # same result on both backends.
    chunk: int = Field(128, ge=1, le=4096)
    threads: int | None = Field(None, ge=1)  # torch CPU threads; null = leave as is


def load_config(source: str | Path | Mapping[str, Any]) -> SimulationConfig:
    """Parse a config from a YAML/JSON file path or a mapping; raise SimulationConfigError."""
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SimulationConfigError(f"cannot read simulator config {path}: {exc}") from exc
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise SimulationConfigError(f"{path} must hold a mapping at the top level")
    try:
        return SimulationConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: "
            + (
                "unexpected key (see docs/simulator.md for the schema)"
                if e["type"] == "extra_forbidden"
                else e["msg"]
            )
            for e in exc.errors()
        )
        raise SimulationConfigError(f"invalid simulator config: {problems}") from exc

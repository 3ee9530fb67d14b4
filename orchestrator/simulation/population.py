"""Simulated clients: device profiles, Dirichlet(α) data partitions and Poisson arrival times."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.simulation.config import DeviceConfig


@dataclass(frozen=True)
class DeviceProfile:
    """What a client's device can do: ``compute`` in samples/s, ``bandwidth`` in bytes/s."""

    compute: float
    bandwidth: float


def draw_devices(cfg: DeviceConfig, n: int, rng: np.random.Generator) -> list[DeviceProfile]:
    """Draw ``n`` device profiles from the distribution ``cfg`` names."""
    if cfg.distribution == "measured":
        return [
            DeviceProfile(
                float(cfg.profiles[i % len(cfg.profiles)]["compute"]),
                float(cfg.profiles[i % len(cfg.profiles)]["bandwidth"]),
            )
            for i in range(n)
        ]
    if cfg.distribution == "fixed":
        return [DeviceProfile(cfg.compute, cfg.bandwidth) for _ in range(n)]
    if cfg.distribution == "uniform":
        c = rng.uniform(1 - cfg.spread, 1 + cfg.spread, n) * cfg.compute
        b = rng.uniform(1 - cfg.spread, 1 + cfg.spread, n) * cfg.bandwidth
    else:  # lognormal around the median
        c = cfg.compute * np.exp(rng.normal(0.0, cfg.sigma, n))
        b = cfg.bandwidth * np.exp(rng.normal(0.0, cfg.sigma, n))
    return [DeviceProfile(float(ci), float(bi)) for ci, bi in zip(c, b, strict=True)]


def dirichlet_partition(
    labels: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Split sample indices among clients, label by label, in Dirichlet(α) proportions.

    The usual non-i.i.d. FL split (SPIN section V: α = 1): for each class, a Dir(α) draw over
    clients decides what share of that class each client gets. Each client's indices come back
    shuffled, which is the order its samples will arrive in.
    """
    parts: list[list[int]] = [[] for _ in range(n_clients)]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        shares = rng.dirichlet(np.full(n_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for client, chunk in enumerate(np.split(idx, cuts)):
            parts[client].extend(int(i) for i in chunk)
    out = []
    for p in parts:
        arr = np.asarray(p, dtype=np.int64)
        rng.shuffle(arr)
        out.append(arr)
    return out


def poisson_arrivals(
    n_samples: int, rate: float, horizon_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Arrival times (seconds) of up to ``n_samples`` samples at ``rate`` samples/s before the
    horizon: a Poisson process, i.e. exponential gaps of mean 1/rate."""
    if n_samples == 0:
        return np.zeros(0)
    times = np.cumsum(rng.exponential(1.0 / rate, n_samples))
    return times[times <= horizon_s]

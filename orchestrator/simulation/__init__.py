"""Virtual-clock simulator that drives the same aggregator cores as the live service.

``simulate(config)`` runs one configuration; ``build_world(config)`` + ``Simulation(world,
config)`` let several aggregators share one world (same data, devices and arrival traces).
"""

from __future__ import annotations

from typing import Any

from orchestrator.simulation.config import SimulationConfig, SimulationConfigError, load_config

# The engine imports torch; `plexus.cli` imports this package (for `plexus simulate`) on every
# command, `plexus agent run` included, so the engine loads only when one of its names is used.
_ENGINE_NAMES = frozenset({"Simulation", "World", "build_world", "make_core", "simulate"})


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from orchestrator.simulation import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Simulation",
    "SimulationConfig",
    "SimulationConfigError",
    "World",
    "build_world",
    "load_config",
    "make_core",
    "simulate",
]

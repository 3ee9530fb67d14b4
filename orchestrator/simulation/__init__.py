"""Virtual-clock simulator that drives the same aggregator cores as the live service.

``simulate(config)`` runs one configuration; ``build_world(config)`` + ``Simulation(world,
config)`` let several aggregators share one world (same data, devices and arrival traces).
"""

from __future__ import annotations

from orchestrator.simulation.config import SimulationConfig, SimulationConfigError, load_config
from orchestrator.simulation.engine import Simulation, World, build_world, make_core, simulate

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

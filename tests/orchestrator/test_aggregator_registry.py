"""The aggregator registry: one list of names, one builder for live tasks and the simulator."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
import torch

from orchestrator.aggregation import (
    AGGREGATORS,
    DCASGDStaleness,
    NoStaleness,
    PolynomialStaleness,
    PortAggregator,
    SpinAggregator,
    UnknownAggregator,
    build_aggregator,
)
from orchestrator.aggregation.staleness import HANDLERS
from orchestrator.simulation.config import AggregatorConfig, SimulationConfig
from orchestrator.simulation.engine import make_core
from plexus.spec import AGGREGATOR_NAMES, STALENESS_NAMES, AsyncSpec


def _state() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(3)}


def test_registries_hold_exactly_the_names_the_specs_accept() -> None:
    # Arrange: the names the two schemas validate against, read from their annotations.
    spec_aggs = typing.get_args(AsyncSpec.model_fields["aggregator"].annotation)
    spec_stale = typing.get_args(AsyncSpec.model_fields["staleness"].annotation)
    sim_aggs = typing.get_args(AggregatorConfig.model_fields["name"].annotation)
    sim_stale = typing.get_args(AggregatorConfig.model_fields["staleness"].annotation)
    # Assert
    assert set(AGGREGATORS) == set(AGGREGATOR_NAMES) == set(spec_aggs) == set(sim_aggs)
    assert set(HANDLERS) == set(STALENESS_NAMES) == set(spec_stale) == set(sim_stale)


def test_each_aggregator_takes_only_its_own_settings() -> None:
    shared = {"k": 4, "pi_s": 2.5, "concurrency": 3, "selection_interval_s": 7.0, "seed": 1,
              "staleness_bound": 5, "similarity_weight": 0.5, "staleness_weight": 2.0}
    spin = build_aggregator("spin", _state(), **shared)
    port = build_aggregator("port", _state(), **shared)
    assert isinstance(spin, SpinAggregator) and (spin.k, spin.pi_s) == (4, 2.5)
    assert isinstance(port, PortAggregator)
    assert (port.k, port.concurrency, port.selection_interval_s) == (4, 3, 7.0)
    assert (port.staleness_bound, port.similarity_weight, port.staleness_weight) == (5, 0.5, 2.0)


def test_left_out_settings_keep_the_aggregators_defaults() -> None:
    core = build_aggregator("fedbuff", _state(), k=2)
    assert core.k == 2
    assert core.concurrency == 20  # type: ignore[attr-defined]
    assert isinstance(core.handler, NoStaleness)


def test_staleness_params_go_to_the_handler_that_takes_them() -> None:
    params = {"a": 0.25, "c": 3.0}
    poly = build_aggregator("spin", _state(), staleness="poly", staleness_params=params)
    dc = build_aggregator("spin", _state(), staleness="dcasgd", staleness_params=params)
    assert isinstance(poly.handler, PolynomialStaleness) and poly.handler.a == 0.25
    assert isinstance(dc.handler, DCASGDStaleness) and dc.handler.c == 3.0


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"name": "fedasync"}, UnknownAggregator, "choose one of"),
    ({"staleness": "exp"}, UnknownAggregator, "choose one of"),
    ({"kk": 3}, TypeError, "unknown aggregator setting"),
    ({"staleness_params": {"b": 1.0}}, TypeError, "unknown staleness setting"),
])
def test_bad_names_and_misspelt_settings_are_refused(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    name = kwargs.pop("name", "spin")
    with pytest.raises(error, match=match):
        build_aggregator(name, _state(), **kwargs)  # type: ignore[arg-type]


def test_simulator_builds_its_core_through_the_registry() -> None:
    config = SimulationConfig.model_validate({"aggregator": {
        "name": "port", "k": 3, "concurrency": 4, "staleness_bound": 2,
        "staleness": "poly", "poly_a": 0.75}})
    core = make_core(config, _state())
    assert isinstance(core, PortAggregator)
    assert (core.k, core.concurrency, core.staleness_bound) == (3, 4, 2)
    assert isinstance(core.handler, PolynomialStaleness) and core.handler.a == 0.75


def test_registry_refuses_to_import_when_the_spec_lists_other_names() -> None:
    # A fresh interpreter whose plexus.spec lists one aggregator fewer than are registered.
    code = ("import plexus.spec as s\n"
            "s.AGGREGATOR_NAMES = ('spin', 'fedbuff')\n"
            "import orchestrator.aggregation\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode != 0
    assert "differs from plexus.spec.AggregatorName" in done.stderr

"""Aggregator settings → aggregator core, written once for live async tasks and the simulator.

Importing this module imports every aggregator module, so ``AGGREGATORS`` (filled by
``@register_aggregator``) and ``staleness.HANDLERS`` are complete. Their names must equal
``plexus.spec.AGGREGATOR_NAMES`` / ``STALENESS_NAMES``, the lists a task spec and a simulator
config are validated against (``plexus`` may not import the orchestrator); the import fails
otherwise.

Adding an aggregator: write its module (a class under ``@register_aggregator("name")`` whose
keyword parameters are its settings), import it below, and add ``"name"`` to
``plexus.spec.AggregatorName``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.aggregation.base import AGGREGATORS, AsyncAggregator, State
from orchestrator.aggregation.errors import UnknownAggregator
from orchestrator.aggregation.fedbuff import FedBuffAggregator
from orchestrator.aggregation.inversion import Net
from orchestrator.aggregation.port import PortAggregator
from orchestrator.aggregation.robust import RULES, RobustRule
from orchestrator.aggregation.spin import SpinAggregator
from orchestrator.aggregation.staleness import HANDLERS, STALENESS_NAMES, StalenessHandler
from plexus.spec import AGGREGATOR_NAMES as SPEC_AGGREGATOR_NAMES
from plexus.spec import ROBUST_RULE_NAMES as SPEC_RULE_NAMES
from plexus.spec import STALENESS_NAMES as SPEC_STALENESS_NAMES

# Importing an aggregator's module registers it; these are every built-in one.
BUILT_IN: tuple[type[AsyncAggregator], ...] = (SpinAggregator, FedBuffAggregator, PortAggregator)
AGGREGATOR_NAMES: tuple[str, ...] = tuple(AGGREGATORS)

if set(AGGREGATORS) != set(SPEC_AGGREGATOR_NAMES):
    raise ImportError(
        f"aggregator registry {sorted(AGGREGATORS)} differs from plexus.spec.AggregatorName "
        f"{sorted(SPEC_AGGREGATOR_NAMES)}; register the aggregator and list its name in both"
    )
if set(STALENESS_NAMES) != set(SPEC_STALENESS_NAMES):
    raise ImportError(
        f"staleness handlers {sorted(STALENESS_NAMES)} differ from plexus.spec.StalenessName "
        f"{sorted(SPEC_STALENESS_NAMES)}; add the handler and list its name in both"
    )
if set(RULES) != set(SPEC_RULE_NAMES):
    raise ImportError(
        f"robust aggregation rules {sorted(RULES)} differ from plexus.spec.RobustRuleName "
        f"{sorted(SPEC_RULE_NAMES)}; add the rule to robust.RULES and list its name in both"
    )

# Constructor parameters that are not settings: the builder passes them itself.
_NOT_SETTINGS = frozenset({"self", "initial_state", "staleness", "rule", "net", "clock"})


def aggregator_class(name: str) -> type[AsyncAggregator]:
    """The registered aggregator ``name``; :class:`UnknownAggregator` naming the choices."""
    try:
        return AGGREGATORS[name]
    except KeyError:
        raise UnknownAggregator(
            f"unknown aggregator {name!r}; choose one of {', '.join(sorted(AGGREGATORS))}"
        ) from None


def staleness_class(name: str) -> type[StalenessHandler]:
    """The staleness handler ``name``; :class:`UnknownAggregator` naming the choices."""
    try:
        return HANDLERS[name]
    except KeyError:
        raise UnknownAggregator(
            f"unknown staleness handler {name!r}; choose one of {', '.join(STALENESS_NAMES)}"
        ) from None


def _keywords(cls: type) -> set[str]:
    return {
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in _NOT_SETTINGS
    }


def _taken_by(cls: type, given: Mapping[str, Any], family: Iterable[type], what: str
              ) -> dict[str, Any]:
    """The entries of ``given`` that ``cls`` takes; a key that no class of ``family`` takes is a
    typo and raises ``TypeError`` (settings meant for another member are dropped)."""
    known = set().union(*(_keywords(c) for c in family))
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"unknown {what} setting(s) {unknown}; known: {', '.join(sorted(known))}")
    mine = _keywords(cls)
    return {k: v for k, v in given.items() if k in mine}


def create_aggregator(name: str, initial_state: State, **params: Any) -> AsyncAggregator:
    """Build the registered aggregator ``name`` with exactly ``params`` (strict: a parameter it
    does not take is a ``TypeError``). ``staleness`` may be a handler name or instance."""
    return aggregator_class(name)(initial_state, **params)


def build_aggregator(
    name: str,
    initial_state: State,
    *,
    staleness: str = "none",
    staleness_params: Mapping[str, float] | None = None,
    rule: RobustRule | None = None,
    net: Net | None = None,
    **settings: Any,
) -> AsyncAggregator:
    """The core for aggregator ``name`` (``spin``, ``fedbuff``, ``port``) from shared settings.

    ``settings`` may hold any aggregator's parameters: ``k`` (updates per aggregation),
    ``pi_s`` (SPIN timeout, seconds; None = off), ``concurrency`` (clients per FedBuff/PORT
    round), ``selection_interval_s`` (seconds between FedBuff/PORT redraws), ``seed`` (their
    draws), ``staleness_bound``, ``similarity_weight``, ``staleness_weight`` (PORT), ...; each
    goes to the aggregator only if its constructor takes it, and one left out keeps that
    aggregator's default. ``staleness_params`` likewise for the handler ``staleness`` (``a``
    for ``poly``, ``c`` for ``dcasgd``; ``threshold``, ``budget_s``, … for
    ``inversion``). A setting no aggregator (or handler) takes is a
    ``TypeError``, so a misspelt key cannot pass silently. ``rule`` is the robust
    aggregation rule the buffer is combined with (default plain FedAvg). ``net`` (the task's
    architecture, input shape and class count) goes to a handler that replays updates
    through the model (``inversion``).
    """
    cls = aggregator_class(name)
    handler_cls = staleness_class(staleness)
    takes_net = "net" in inspect.signature(handler_cls).parameters
    extra: dict[str, Any] = {"net": net} if takes_net else {}
    handler = handler_cls(
        **_taken_by(handler_cls, staleness_params or {}, HANDLERS.values(), "staleness"), **extra
    )
    params = _taken_by(cls, settings, AGGREGATORS.values(), "aggregator")
    return cls(initial_state, staleness=handler, rule=rule, **params)

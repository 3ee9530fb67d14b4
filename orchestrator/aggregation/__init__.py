"""Aggregators: pure cores that combine learner updates into the global model.

``weighted_average`` is FedAvg for the synchronous rounds; ``create_aggregator(name, state,
**params)`` builds an asynchronous core (``spin``, ``fedbuff``, ``port``) driven by events.
"""

from __future__ import annotations

from orchestrator.aggregation.base import (
    AGGREGATORS,
    Aggregated,
    AsyncAggregator,
    Decision,
    Dispatch,
    StopTraining,
    Update,
    create_aggregator,
    register_aggregator,
)
from orchestrator.aggregation.errors import (
    AggregationError,
    BadUpdate,
    UnknownAggregator,
    UnknownVersion,
)
from orchestrator.aggregation.fedavg import weighted_average
from orchestrator.aggregation.fedbuff import FedBuffAggregator
from orchestrator.aggregation.port import PortAggregator
from orchestrator.aggregation.spin import SpinAggregator
from orchestrator.aggregation.staleness import (
    STALENESS_NAMES,
    DCASGDStaleness,
    NoStaleness,
    PolynomialStaleness,
    StalenessHandler,
    create_staleness,
)

__all__ = [
    "AGGREGATORS",
    "STALENESS_NAMES",
    "Aggregated",
    "AggregationError",
    "AsyncAggregator",
    "BadUpdate",
    "DCASGDStaleness",
    "Decision",
    "Dispatch",
    "FedBuffAggregator",
    "NoStaleness",
    "PolynomialStaleness",
    "PortAggregator",
    "SpinAggregator",
    "StalenessHandler",
    "StopTraining",
    "UnknownAggregator",
    "UnknownVersion",
    "Update",
    "create_aggregator",
    "create_staleness",
    "register_aggregator",
    "weighted_average",
]

"""Aggregators: pure cores that combine learner updates into the global model.

``weighted_average`` is FedAvg for the synchronous rounds; ``build_aggregator(name, state,
**settings)`` (``registry.py``, used by live async tasks and the simulator alike) builds an
asynchronous core (``spin``, ``fedbuff``, ``port``) driven by events.
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
from orchestrator.aggregation.registry import (
    AGGREGATOR_NAMES,
    aggregator_class,
    build_aggregator,
    create_aggregator,
    staleness_class,
)
from orchestrator.aggregation.spin import SpinAggregator
from orchestrator.aggregation.staleness import (
    STALENESS_NAMES,
    DCASGDStaleness,
    InversionStaleness,
    NoStaleness,
    PolynomialStaleness,
    StalenessHandler,
    create_staleness,
)

__all__ = [
    "AGGREGATORS",
    "AGGREGATOR_NAMES",
    "STALENESS_NAMES",
    "Aggregated",
    "AggregationError",
    "AsyncAggregator",
    "BadUpdate",
    "DCASGDStaleness",
    "Decision",
    "Dispatch",
    "FedBuffAggregator",
    "InversionStaleness",
    "NoStaleness",
    "PolynomialStaleness",
    "PortAggregator",
    "SpinAggregator",
    "StalenessHandler",
    "StopTraining",
    "UnknownAggregator",
    "UnknownVersion",
    "Update",
    "aggregator_class",
    "build_aggregator",
    "create_aggregator",
    "create_staleness",
    "register_aggregator",
    "staleness_class",
    "weighted_average",
]

"""Errors raised by the aggregator cores.

::

    AggregationError (orchestrator.errors.ServiceError, ValueError)
    ├── UnknownAggregator   a name that is not in the registry
    ├── UnknownVersion      an update trained from a model version the server never sent
    └── BadUpdate           an update whose tensors do not match the global model

They subclass ``ValueError`` so a REST handler can map the whole family to a 4xx answer, and
belong to the orchestrator's one error tree (``orchestrator.errors``).
"""

from __future__ import annotations

from orchestrator.errors import ServiceError


class AggregationError(ServiceError, ValueError):
    """Base class of every error raised by an aggregator core."""


class UnknownAggregator(AggregationError):
    """The requested aggregator or staleness handler name is not registered."""


class UnknownVersion(AggregationError):
    """An update names a base model version that the server did not hand out (or forgot)."""


class BadUpdate(AggregationError):
    """An update's tensors differ from the global model in names, shapes, dtypes or finiteness."""

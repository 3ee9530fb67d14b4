"""Hierarchical aggregation: an edge aggregator that a subtree of learners enrols with.

`plexus aggregator serve --upstream URL` (docs/hierarchy.md). Upstream it is one learner of the
orchestrator (or of another aggregator); downstream it is the orchestrator its learners enrol
with. `combine` holds the pure part (FedAvg of a subtree into one partial aggregate with its total
weight, splitting an allocation among children); `children` the enrolled learners on disk;
`edge` the service; `asynctier` (state on disk, checks) and `edge_async` (routes) carry async
tasks (SPIN / FedBuff / PORT) through the tier as buffered partial aggregates.
"""

from __future__ import annotations

from orchestrator.hierarchy.combine import Partial, combine, split_shards

__all__ = ["Partial", "combine", "split_shards"]

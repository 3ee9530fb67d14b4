"""Two-tier FedAvg equals flat FedAvg; an allocation is dealt to children by their shares."""

from __future__ import annotations

import torch

from orchestrator.aggregation.fedavg import weighted_average
from orchestrator.hierarchy import combine, split_shards


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(7, 5, generator=g), "b": torch.randn(5, generator=g)}


def test_two_tiers_of_fedavg_equal_flat_fedavg() -> None:
    # Arrange: 7 learners with their samples, in two subtrees and one learner alone.
    learners = {f"l{i}": (_state(i), n) for i, n in enumerate([30, 0, 12, 250, 7, 64, 1])}
    groups = [["l0", "l1", "l2"], ["l3", "l4", "l5"]]
    # Act: each edge aggregator combines its subtree; the top FedAvgs partials + l6.
    partials = [combine({k: learners[k] for k in g}) for g in groups]
    top = weighted_average([p.state for p in partials if p.state is not None]
                           + [learners["l6"][0]],
                           [float(p.weight) for p in partials] + [1.0])
    flat = weighted_average([s for s, n in learners.values() if n > 0],
                            [float(n) for s, n in learners.values() if n > 0])
    # Assert
    assert [p.weight for p in partials] == [42, 321]
    assert partials[0].samples == {"l0": 30, "l1": 0, "l2": 12}
    for name in flat:
        assert torch.allclose(top[name], flat[name], rtol=0, atol=1e-6), name


def test_a_subtree_that_trained_nothing_has_no_state_and_no_weight() -> None:
    p = combine({"a": (_state(1), 0)})
    assert p.state is None and p.weight == 0 and p.samples == {"a": 0}


def test_split_shards_by_share() -> None:
    # DAB: the allocation is the sum of the children's a_k, each gets its own a_k.
    assert split_shards([9, 4, 7, 1, 3], {"b": 2, "a": 3}) == {"a": [9, 4, 7], "b": [1, 3]}
    # Equal shares of 5 shards over 2 children: the first child in name order gets the extra.
    assert split_shards([0, 1, 2, 3, 4], {"x": 1, "y": 1}) == {"x": [0, 1, 2], "y": [3, 4]}
    # A child that sits out (a_k <= 0) gets nothing; no shards: nobody gets any.
    assert split_shards([5, 6], {"a": 0, "b": 4}) == {"a": [], "b": [5, 6]}
    assert split_shards([], {"a": 1}) == {"a": []}

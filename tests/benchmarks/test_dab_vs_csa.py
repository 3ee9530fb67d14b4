"""benchmarks/dab_vs_csa.py: its shard-order check flags a DAB round in which a slower learner
took more shards than a faster one, and only DAB rounds."""

from __future__ import annotations

from typing import Any

import dab_vs_csa


def _row(allocator: str, allocations: list[dict[str, int]]) -> dict[str, Any]:
    return {"allocator": allocator, "deadline_s": 2.0, "allocations": allocations}


def test_shard_order_counts_rounds_where_a_slower_learner_took_more() -> None:
    speeds = {"fast": 1.0, "medium": 0.5, "slow": 0.25}
    rows = [
        _row("dab", [{"fast": 40, "medium": 20, "slow": 10},
                     {"fast": 40, "medium": 20, "slow": 21},  # slow above medium
                     {"fast": 40, "medium": 20}]),            # slow got none: in order
        _row("csa", [{"fast": 1, "medium": 9, "slow": 30}]),  # CSA's split is not DAB's
    ]
    got = dab_vs_csa.shard_order(rows, speeds)
    assert got["dab_rounds"] == 3
    assert got["rounds_out_of_order"] == 1
    assert got["out_of_order"][0]["round"] == 1
    # Equal shares are not an inversion: only strictly more shards for a slower learner.
    tie = [_row("dab", [{"fast": 20, "medium": 20, "slow": 20}])]
    assert dab_vs_csa.shard_order(tie, speeds)["rounds_out_of_order"] == 0


def test_allocations_are_keyed_by_learner_name() -> None:
    rows = [_row("dab", [{"1": 5, "2": 3, "9": 1}])]
    dab_vs_csa._name_allocations(rows, {"1": "fast", "2": "slow"})
    assert rows[0]["allocations"] == [{"fast": 5, "slow": 3, "9": 1}]

"""`plexus.protocol`: procedure names and argument shapes declared once, checked at registration."""

from __future__ import annotations

from typing import Any

import pytest

from plexus import protocol


def test_every_call_has_a_distinct_identifier_name() -> None:
    names = [c.name for c in protocol.CALLS]
    assert len(names) == len(set(names))
    assert all(n.isidentifier() for n in names)
    assert {c.name: c for c in protocol.CALLS} == protocol.PROCEDURES


def test_args_are_the_fields_in_order_and_not_copied() -> None:
    task: dict[str, Any] = {"name": "t"}
    call = protocol.Train(task, 3, 0, [4, 5], 20.0)
    assert call.name == "train"
    assert call.args() == (task, 3, 0, [4, 5], 20.0, None)
    assert call.args()[0] is task
    assert protocol.Status().args() == ()
    assert protocol.RoundState({"idle": 1.0}).args() == ({"idle": 1.0}, False, None)


def test_check_signature_accepts_a_matching_function() -> None:
    def benchmark(task: dict[str, Any], task_id: int, state: str | None = None) -> None: ...

    protocol.check_signature(protocol.Benchmark, benchmark)


@pytest.mark.parametrize(
    "fn",
    [
        lambda task, task_id: None,  # a parameter missing
        lambda task_id, task, state=None: None,  # wrong order
        lambda task, task_id, state: None,  # default missing
        lambda task, task_id, state="idle": None,  # another default
        lambda task, task_id, state=None, extra=1: None,  # one too many
    ],
)
def test_check_signature_refuses_a_drifted_function(fn: Any) -> None:
    with pytest.raises(ValueError, match="'benchmark'"):
        protocol.check_signature(protocol.Benchmark, fn)

"""The agent's remote procedures: their names and argument shapes, declared once.

The orchestrator calls them and the learner agent serves them (docs/protocol.md); both take
the names and the argument order from here, so the two sides cannot drift apart. Each call is a
frozen dataclass whose fields are the procedure's parameters in order:

    call = Train(task=spec, task_id=3, round=0, shards=[4, 5], deadline_s=20.0)
    answer = await stub[call.name].acall(*call.args())

The agent registers each procedure under `call.name` and checks at registration that the
function's parameters are the dataclass's fields (`check_signature`). Answers are plain JSON
mappings, described by the `...Answer` TypedDicts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, TypedDict


@dataclass(frozen=True)
class Call:
    """One procedure call: `name` is the registered procedure, the fields its arguments."""

    name: ClassVar[str]

    def args(self) -> tuple[Any, ...]:
        """The arguments in the procedure's parameter order (not copied)."""
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class Status(Call):
    """The agent's name, busy flag, stressor state, device facts and joined async tasks."""

    name: ClassVar[str] = "status"


@dataclass(frozen=True)
class Plan(Call):
    """DAB (thesis alg. 10): subset-benchmark privately, answer only the bound a_k (eq. 3.5)."""

    name: ClassVar[str] = "plan"
    task: dict[str, Any]
    task_id: int


@dataclass(frozen=True)
class Benchmark(Call):
    """Subset benchmarking for centralized allocators (CSA, MED, MMTT) in stressor `state`."""

    name: ClassVar[str] = "benchmark"
    task: dict[str, Any]
    task_id: int
    state: str | None = None


@dataclass(frozen=True)
class Train(Call):
    """Train μ passes over `shards` of the global model; halt `deadline_s` seconds after the
    call arrived."""

    name: ClassVar[str] = "train"
    task: dict[str, Any]
    task_id: int
    round: int
    shards: list[int]
    deadline_s: float
    state: str | None = None


@dataclass(frozen=True)
class JoinAsync(Call):
    """Take part in async task `task_id` as client index `client` (returns at once)."""

    name: ClassVar[str] = "join_async"
    task: dict[str, Any]
    task_id: int
    client: int


@dataclass(frozen=True)
class LeaveAsync(Call):
    """Stop taking part in async task `task_id`."""

    name: ClassVar[str] = "leave_async"
    task_id: int


@dataclass(frozen=True)
class RoundState(Call):
    """Draw this round's stressor state from `distribution` (state → probability, thesis
    4.3.1); answered only when `reveal` is true (MMTT-Ideal). With a `seed` the draw comes
    from that seed alone (a job's GUC draws the same after an orchestrator restart)."""

    name: ClassVar[str] = "round_state"
    distribution: dict[str, float]
    reveal: bool = False
    seed: int | None = None


@dataclass(frozen=True)
class SplitTrain(Call):
    """Split learning (DynSplit, docs/split-learning.md): load the device half `device`
    (tensors), train it on `shards` (device data: the agent's own) sending one request per
    batch to the orchestrator's server half; answer the trained device half."""

    name: ClassVar[str] = "split_train"
    task: dict[str, Any]
    task_id: int
    round: int
    shards: list[int]
    device: dict[str, Any]


CALLS: tuple[type[Call], ...] = (
    Status, Plan, Benchmark, Train, JoinAsync, LeaveAsync, RoundState, SplitTrain,
)
"""Every procedure the agent serves."""

PROCEDURES: dict[str, type[Call]] = {c.name: c for c in CALLS}
"""Procedure name → its call class."""


class PlanAnswer(TypedDict):
    a_k: int  # whole shards; ≤ 0 sits the round out


class BenchmarkAnswer(TypedDict):
    bandwidth: float  # bytes/s
    compute: float  # samples/s
    state: str


class RoundStateAnswer(TypedDict):
    state: str | None  # None unless the call asked to reveal it


class JoinAsyncAnswer(TypedDict):
    task_id: int
    client: int
    joined: bool  # false when the agent already runs this task


class LeaveAsyncAnswer(TypedDict):
    left: bool  # false when the agent was not running this task


def check_signature(call: type[Call], fn: Callable[..., Any]) -> None:
    """Raise ValueError unless `fn`'s parameters are `call`'s fields, in order and with the
    same defaults (the agent checks each procedure it registers)."""
    params = [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]
    expected = [
        (f.name, inspect.Parameter.empty if f.default is MISSING else f.default)
        for f in fields(call)
    ]
    if params != expected:
        raise ValueError(
            f"procedure {call.name!r}: {getattr(fn, '__qualname__', fn)} takes {params}, "
            f"plexus.protocol.{call.__name__} declares {expected}"
        )

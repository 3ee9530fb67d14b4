"""Checks on the arguments of the agent's procedures: a bad one is answered with `BadTask`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from learner_agent.errors import BadTask

if TYPE_CHECKING:
    from plexus.spec import TaskSpec


def parse_task(task: Any) -> TaskSpec:
    """The task spec as a `TaskSpec`, or `BadTask` naming the bad field."""
    from plexus.errors import SpecError
    from plexus.spec import load_spec

    if not isinstance(task, dict):
        raise BadTask(f"task must be a task spec mapping, got {type(task).__name__}")
    try:
        spec = load_spec(task)
    except SpecError as exc:
        raise BadTask(str(exc)) from None
    check_factory(spec)
    return spec


def check_factory(spec: TaskSpec) -> None:
    """`BadTask` when the task's model comes from a factory this agent has not installed
    (or installed in another version than the orchestrator's): never imported from a string."""
    from plexus.models import factory_distribution

    name = spec.model.factory
    if name is None:
        return
    have = factory_distribution(name)
    if have is None:
        raise BadTask(f"model.factory {name!r} is not installed on this learner (entry-point "
                      "group 'plexus.models'); install its package here")
    want = spec.model.distribution
    if want is not None and want != have:
        raise BadTask(f"model.factory {name!r}: this learner has {have}, the task needs {want}")


def check_int(name: str, value: Any, minimum: int = 0) -> int:
    """`value` when it is an integer ≥ `minimum` (not a bool), else `BadTask`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadTask(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return value

"""Which learners can take part in a task: those that can build its model and hold it.

A factory model needs its factory installed on the learner in the orchestrator's version (the
learner lists its factories in its facts, `model_factories`); every model needs the memory to
train one batch (`plexus.models.training_bytes`) within the learner's `memory_bytes`. Whoever
cannot is skipped, with the reason shown in the round's `left_out` and the task view.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.store import LearnerRow
    from plexus.spec import TaskSpec

MIB = 1024 * 1024


@lru_cache(maxsize=64)
def _training_bytes(model_json: str, batch_size: int, optimizer: str) -> int:
    from plexus.models import as_model_spec, training_bytes

    model = as_model_spec(json.loads(model_json))
    assert model.input_shape is not None and model.num_classes is not None
    return training_bytes(model, tuple(model.input_shape), model.num_classes, batch_size,
                          optimizer)


def training_bytes(spec: TaskSpec) -> int | None:
    """Estimated bytes to train the task's model on one batch; None when the spec does not
    carry its data's shape (a task created before the orchestrator recorded it)."""
    model = spec.model
    if model.input_shape is None or model.num_classes is None:
        return None
    dumped = model.model_dump(mode="json")
    return _training_bytes(json.dumps(dumped, sort_keys=True), spec.training.batch_size,
                           spec.training.optimizer)


def why_not(spec: TaskSpec, facts: dict[str, Any], need_bytes: int | None) -> str | None:
    """Why a learner with `facts` cannot take part in the task, or None when it can."""
    model = spec.model
    if model.factory is not None:
        have = [f for f in facts.get("model_factories") or []
                if isinstance(f, dict) and model.factory in (f.get("name"), f.get("value"))]
        if not have:
            return (f"cannot build the model: factory {model.factory!r} is not installed "
                    "there (its facts list no such entry point in 'plexus.models')")
        versions = {f"{f.get('distribution')}=={f.get('version')}" for f in have}
        if model.distribution is not None and model.distribution not in versions:
            return (f"cannot build the model: it has {', '.join(sorted(versions))}, the task "
                    f"needs {model.distribution}")
    memory = facts.get("memory_bytes")
    if need_bytes is not None and isinstance(memory, int | float) and memory < need_bytes:
        return (f"not enough memory: training this model on batches of "
                f"{spec.training.batch_size} needs about {need_bytes / MIB:.1f} MiB, the "
                f"learner has {memory / MIB:.1f} MiB")
    return None


def skipped(spec: TaskSpec, learners: list[LearnerRow]) -> dict[str, str]:
    """Learner id → why it is skipped, for every learner of `learners` that cannot take part."""
    need = training_bytes(spec)
    out: dict[str, str] = {}
    for lr in learners:
        reason = why_not(spec, lr.facts or {}, need)
        if reason is not None:
            out[str(lr.id)] = f"skipped: {reason}"
    return out

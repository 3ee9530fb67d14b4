"""A task's files: shards, held-out test split and model versions, made once at submission.

Everything a round needs is derived from the spec here and written under the task's directory,
so a restarted orchestrator reads files instead of re-deriving data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.errors import BadInput
from orchestrator.store import Layout, write_atomic

if TYPE_CHECKING:
    import torch

    from plexus.datasets import Dataset
    from plexus.spec import TaskSpec


def initial_model(spec: TaskSpec, input_shape: tuple[int, ...], num_classes: int
                  ) -> torch.nn.Module:
    """The task's model with seeded initial parameters (model version 0)."""
    import torch

    from plexus.models import build

    torch.manual_seed(spec.seed)
    return build(spec.model, input_shape, num_classes)


def resolve_spec(spec: TaskSpec) -> tuple[TaskSpec, Dataset]:
    """Load the task's data and check its model against it, before anything is created.

    Returns the spec with `model.input_shape`, `model.num_classes` (read from the data) and,
    for a factory, `model.distribution` filled in, so a learner builds the same network
    without seeing the data; and the loaded data. BadInput (422) names the field: the data
    (`invalid_spec`), a size the spec gives that the data contradicts or a layer that cannot
    take its input (`model_does_not_fit`), a factory not installed here
    (`model_factory_missing`).
    """
    from plexus.datasets import load_dataset
    from plexus.errors import DatasetError, SpecError
    from plexus.models import check_model, factory_distribution

    try:
        data = load_dataset(spec.dataset, seed=spec.seed)
    except DatasetError as exc:
        raise BadInput(f"dataset: {exc}", code="invalid_spec") from None
    model = spec.model
    shape, classes = tuple(data.input_shape), int(data.num_classes)
    if model.input_shape is not None and tuple(model.input_shape) != shape:
        raise BadInput(f"model.input_shape: {list(model.input_shape)} but dataset "
                       f"{spec.dataset.name} has inputs shaped {list(shape)}; drop it to "
                       "take the data's", code="model_does_not_fit")
    if model.num_classes is not None and model.num_classes != classes:
        raise BadInput(f"model.num_classes: {model.num_classes} but dataset "
                       f"{spec.dataset.name} has {classes} classes; drop it to take the "
                       "data's", code="model_does_not_fit")
    update: dict[str, Any] = {"input_shape": shape, "num_classes": classes}
    if model.factory is not None:
        dist = factory_distribution(model.factory)
        if dist is None:
            raise BadInput(f"model.factory: {model.factory!r} is not installed on the "
                           "orchestrator (Python entry-point group 'plexus.models'); install "
                           "the package that provides it here and on the learners",
                           code="model_factory_missing")
        if model.distribution is not None and model.distribution != dist:
            raise BadInput(f"model.distribution: {model.distribution} but the orchestrator "
                           f"has {dist}", code="model_factory_missing")
        update["distribution"] = dist
    try:
        check_model(model, shape, classes)
    except SpecError as exc:
        message = str(exc) if str(exc).startswith("model") else f"model: {exc}"
        raise BadInput(message, code="model_does_not_fit") from None
    return spec.model_copy(update={"model": model.model_copy(update=update)}), data


def prepare_task(spec: TaskSpec, task_id: int, layout: Layout, data: Dataset | None = None
                 ) -> dict[str, int]:
    """Cut shards, write shards, test split and model v0 of a resolved spec; return sizes.

    `data` is what `resolve_spec` loaded (loaded and checked here when not given). Sizes:
    `num_shards`, `shard_samples` (samples per shard), `shard_bytes` (bytes of one shard
    file, Ω_d) and `model_bytes` (bytes of the model file, Ω_m). Raises BadInput naming the
    spec field when the dataset or model cannot serve this spec.
    """
    from plexus.errors import PlexusError
    from plexus.shards import encode_shard, partition
    from plexus.tensors import encode_state

    if data is None:
        spec, data = resolve_spec(spec)
    cut = spec.partition
    if spec.async_ is not None and cut.kind != "dirichlet":
        # An async task's shards are its clients' partitions (shard c for client c), always
        # non-i.i.d. by Dirichlet(partition.alpha) as in SPIN's experiments (SPIN paper, V).
        cut = cut.model_copy(update={"kind": "dirichlet"})
    try:
        shards = partition(data.train_y, cut, spec.seed)
    except PlexusError as exc:
        raise BadInput(f"partition: {exc}", code="invalid_spec") from None
    shard_bytes = 0
    for n, idx in enumerate(shards):
        blob = encode_shard(data.train_x[idx], data.train_y[idx],
                            {"task_id": task_id, "shard": n, "samples": len(idx)})
        write_atomic(layout.shard(task_id, n), blob)
        shard_bytes = max(shard_bytes, len(blob))
    test_meta = {"task_id": task_id, "input_shape": json.dumps(list(data.input_shape)),
                 "num_classes": data.num_classes}
    write_atomic(layout.test_split(task_id),
                 encode_shard(data.test_x, data.test_y, test_meta))
    model = initial_model(spec, data.input_shape, data.num_classes)
    blob = encode_state(model.state_dict(), {"version": 0, "task_id": task_id})
    write_atomic(layout.model(task_id, 0), blob)
    return {"num_shards": len(shards), "shard_samples": spec.partition.shard_size,
            "shard_bytes": shard_bytes, "model_bytes": len(blob)}


def client_shard(num_shards: int, client: int) -> int:
    """The shard holding async client `client`'s partition: shard c, wrapping round when a
    task has more clients than shards (two clients then share one partition)."""
    return client % num_shards


def load_test_split(layout: Layout, task_id: int
                    ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], int]:
    """The held-out split `(x, y, input_shape, num_classes)` written by `prepare_task`."""
    from plexus.shards import decode_shard

    x, y, meta = decode_shard(layout.test_split(task_id).read_bytes())
    return x, y, tuple(json.loads(meta["input_shape"])), int(meta["num_classes"])


def read_state(path: Path) -> dict[str, Any]:
    """A model version's parameters (torch tensors) from its safetensors file."""
    from plexus.tensors import decode_state

    state, _meta = decode_state(path.read_bytes())
    return state

"""A task's files: shards, held-out test split and model versions, made once at submission.

Everything a round needs is derived from the spec here and written under the task's directory,
so a restarted orchestrator reads files instead of re-deriving data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.errors import BadInput
from orchestrator.store import Layout, write_atomic, write_atomic_many

if TYPE_CHECKING:
    import torch

    from plexus.datasets import Dataset
    from plexus.spec import TaskSpec


# Nominal shard count of a device-data task: its "shards" are slices of each agent's own
# samples, so ids only number them; an agent never asks the orchestrator for one.
DEVICE_SHARDS = 1_000_000


def load_task_data(spec: TaskSpec, data_root: Path | None, max_bytes: int | None = None, *,
                   in_job: bool = False) -> tuple[TaskSpec, Dataset]:
    """Read the task's data once at submission; return the spec with the geometry and classes
    recorded in its dataset section, and the data (device data: only its test set, with no
    training samples). Raises BadInput with a stable code: `data_path_refused`, `bad_data`,
    `data_too_large`, or `invalid_spec`."""
    from plexus.data_formats import DataPathRefused, resolve_under
    from plexus.datasets import load_dataset, load_files, recorded
    from plexus.errors import DatasetError

    ds = spec.dataset
    try:
        if data_root is None and (ds.path or ds.test_path):
            raise DataPathRefused("this orchestrator reads no dataset files here (no data "
                                  "root); submit the task through its API")
        if ds.name != "files":
            if ds.path is not None and data_root is not None:  # IDX files: under the root
                ds = ds.model_copy(update={"path": str(resolve_under(data_root, ds.path))})
            data = load_dataset(ds, seed=spec.seed)
        elif ds.device and spec.sync is not None and spec.sync.total_shards is None \
                and (in_job or spec.sync.allocator != "dab"):
            allocator = "of a job" if in_job else repr(spec.sync.allocator)
            raise BadInput(f"sync.total_shards: device data with allocator {allocator} "
                           "needs the total shards per round (the orchestrator cannot count "
                           "the devices' samples); set it, or use dab, whose learners plan "
                           "on their own data", code="invalid_spec")
        elif ds.device and ds.test_path is None:
            raise BadInput("dataset: device data needs dataset.test_path, a test set under "
                           "the data root, to evaluate the model on", code="invalid_spec")
        else:
            assert data_root is not None  # a files dataset has a path or a test_path
            data = load_files(ds, data_root, seed=spec.seed, max_bytes=max_bytes)
    except DatasetError as exc:
        raise BadInput(f"dataset: {exc}", code=getattr(exc, "code", "invalid_spec")) from None
    spec = spec.model_copy(update={"dataset": recorded(ds, data)})
    return spec, data


def initial_model(spec: TaskSpec, input_shape: tuple[int, ...], num_classes: int
                  ) -> torch.nn.Module:
    """The task's model with seeded initial parameters (model version 0); for a split task
    the whole split network (device half, paths, server half: `plexus.split`)."""
    import torch

    from plexus.models import build

    torch.manual_seed(spec.seed)
    model = build(spec.model, input_shape, num_classes)
    if spec.split is not None:
        from plexus.split.model import split_network

        return split_network(model, spec.split, input_shape)
    return model


def resolve_spec(spec: TaskSpec, data_root: Path | None = None, max_bytes: int | None = None,
                 *, in_job: bool = False) -> tuple[TaskSpec, Dataset]:
    """Load the task's data and check its model against it, before anything is created.

    Returns the spec with `model.input_shape`, `model.num_classes` (read from the data) and,
    for a factory, `model.distribution` filled in, so a learner builds the same network
    without seeing the data; and the loaded data. BadInput (422) names the field: the data
    (`invalid_spec`), a size the spec gives that the data contradicts or a layer that cannot
    take its input (`model_does_not_fit`), a factory not installed here
    (`model_factory_missing`). `data_root` is where user dataset paths are resolved
    (None: only built-in data); `in_job`: the task is allocated by a job's allocator.
    """
    from plexus.errors import SpecError
    from plexus.models import check_model, factory_distribution

    # The data first (`load_task_data`: paths under `data_root`, its checks and codes).
    spec, data = load_task_data(spec, data_root, max_bytes, in_job=in_job)
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
    if spec.dataset.device:
        return _prepare_device_task(spec, task_id, layout, data)
    cut = spec.partition
    if spec.async_ is not None and cut.kind != "dirichlet":
        # An async task's shards are its clients' partitions (shard c for client c), always
        # non-i.i.d. by Dirichlet(partition.alpha) as in SPIN's experiments (SPIN paper, V).
        cut = cut.model_copy(update={"kind": "dirichlet"})
    try:
        shards = partition(data.train_y, cut, spec.seed)
    except PlexusError as exc:
        raise BadInput(f"partition: {exc}", code="invalid_spec") from None
    sizes: list[int] = []  # list.append is atomic: the writer threads share it

    def shard(n: int, idx: Any) -> Callable[[], bytes]:
        def make() -> bytes:
            blob = encode_shard(data.train_x[idx], data.train_y[idx],
                                {"task_id": task_id, "shard": n, "samples": len(idx)})
            sizes.append(len(blob))
            return blob
        return make

    # Thousands of small shards (shard_size 1) are one fsync each: overlapped, one directory
    # fsync, so a submission answers in seconds rather than tens of them.
    write_atomic_many([(layout.shard(task_id, n), shard(n, idx))
                       for n, idx in enumerate(shards)])
    shard_bytes = max(sizes, default=0)
    test_meta = {"task_id": task_id, "input_shape": json.dumps(list(data.input_shape)),
                 "num_classes": data.num_classes}
    write_atomic(layout.test_split(task_id),
                 encode_shard(data.test_x, data.test_y, test_meta))
    model = initial_model(spec, data.input_shape, data.num_classes)
    blob = encode_state(model.state_dict(), {"version": 0, "task_id": task_id})
    write_atomic(layout.model(task_id, 0), blob)
    return {"num_shards": len(shards), "shard_samples": spec.partition.shard_size,
            "shard_bytes": shard_bytes, "model_bytes": len(blob)}


def _prepare_device_task(spec: TaskSpec, task_id: int, layout: Layout, data: Dataset
                         ) -> dict[str, int]:
    """A device-data task: its test set and model v0, and no shards at all (the agents train
    on their own samples; Ω_d is 0, so DAB's data-download term drops out)."""
    from plexus.shards import encode_shard
    from plexus.tensors import encode_state

    test_meta = {"task_id": task_id, "input_shape": json.dumps(list(data.input_shape)),
                 "num_classes": data.num_classes}
    write_atomic(layout.test_split(task_id), encode_shard(data.test_x, data.test_y, test_meta))
    model = initial_model(spec, data.input_shape, data.num_classes)
    blob = encode_state(model.state_dict(), {"version": 0, "task_id": task_id})
    write_atomic(layout.model(task_id, 0), blob)
    return {"num_shards": DEVICE_SHARDS, "shard_samples": spec.partition.shard_size,
            "shard_bytes": 0, "model_bytes": len(blob)}


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


DEVICE_EVAL = "device_eval.json"


def record_device_eval(layout: Layout, task_id: int, index: int, replies: list[Any]) -> None:
    """Keep round `index`'s per-device evaluations (the `local_eval` the agents of a device-
    data task answer with: the global model they received, on their own held-out samples)
    in the task's `device_eval.json`; nothing when no learner sent one."""
    per_device: dict[str, dict[str, Any]] = {}
    for r in replies:
        local = r.value.get("local_eval") if isinstance(r.value, dict) else None
        if not isinstance(local, dict):
            continue
        try:
            per_device[r.learner.name] = {k: float(local[k]) for k in ("loss", "accuracy")}
            per_device[r.learner.name].update(
                {k: int(local[k]) for k in ("samples", "model_version")})
        except (KeyError, TypeError, ValueError):
            continue  # a malformed report is left out; the round itself stands
    if not per_device:
        return
    path = layout.task_dir(task_id) / DEVICE_EVAL
    rounds = json.loads(path.read_text()) if path.exists() else []
    rounds.append({"round": index, "learners": per_device})
    write_atomic(path, json.dumps(rounds).encode())


def evaluation_view(layout: Layout, spec: dict[str, Any], task_id: int) -> dict[str, Any]:
    """Which evaluation a task's round `accuracy` is (always the orchestrator's test set, and
    which one), and the per-device evaluations of a device-data task, round by round."""
    dataset = spec.get("dataset") or {}
    if dataset.get("test_path"):
        test_set = f"dataset.test_path {dataset['test_path']}"
    else:
        test_set = f"a held-out {dataset.get('test_fraction', 0.2)} of the training data"
    path = layout.task_dir(task_id) / DEVICE_EVAL
    per_device = json.loads(path.read_text()) if path.exists() else []
    return {"accuracy_from": f"the orchestrator's test set ({test_set})",
            "per_device": per_device}

"""Device-local data: the samples in the agent's `--data DIR`, which never leave the device.

A task whose dataset says `device: true` trains on these instead of shards downloaded from the
orchestrator. The directory holds files in the task's format (`dataset.format`, recorded at
submission): `.npz` / `.safetensors` / `.csv` files (all of them, read in name order), IDX
files, or one sub-folder of pictures per class. Labels are mapped onto the task's classes
(`dataset.classes`) and features normalised as the spec says, with the same code the
orchestrator uses (`plexus.datasets`); bad data is refused with `BadTask` before training.

`LocalSource` also watches the directory for an async (SPIN) task: each file that appears later
is new samples arriving, appended in the order the files are seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from learner_agent.errors import BadTask

if TYPE_CHECKING:
    from plexus.spec import DatasetSpec, TaskSpec


def _format(spec: DatasetSpec, directory: Path) -> str:
    from plexus.data_formats import infer_format

    return spec.format or infer_format(directory, None)


def _prepare(spec: DatasetSpec, fmt: str, x: np.ndarray, labels: np.ndarray, source: str
             ) -> tuple[np.ndarray, np.ndarray]:
    from plexus.datasets import check_features, class_list, map_labels, normalize

    check_features(x, source)
    y = map_labels(labels, class_list(spec, labels), source)
    if spec.input_shape is not None and tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise BadTask(f"{source}: samples are shaped {tuple(x.shape[1:])}, the task's model "
                      f"expects {tuple(spec.input_shape)}")
    (x,) = normalize(spec, fmt, x)
    return np.ascontiguousarray(x, dtype=np.float32), y


def read_local(spec: DatasetSpec, directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every sample in `directory` as the task reads them: float32 x and int64 class indices.
    Raises `BadTask` for bad data or a directory that does not fit the task."""
    from plexus.datasets import read_spec_files
    from plexus.errors import DatasetError

    try:
        fmt, (x, labels) = read_spec_files(spec.model_copy(update={"format": _format(
            spec, directory)}), directory)
        return _prepare(spec, fmt, x, labels, f"local data {directory}")
    except DatasetError as exc:
        raise BadTask(f"local data {directory}: {exc}") from None


@dataclass
class LocalSource:
    """The growing sample set of a watched directory (async tasks): `poll()` reads the files
    that appeared since the last call and returns how many samples arrived."""

    spec: DatasetSpec
    directory: Path
    x: np.ndarray | None = None
    y: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    seen: set[str] = field(default_factory=set)

    def _new_files(self, fmt: str) -> list[Path]:
        return sorted(p for p in self.directory.iterdir()
                      if p.is_file() and p.suffix.lower() == f".{fmt}" and p.name not in self.seen
                      and not p.name.startswith("."))

    def poll(self) -> int:
        """Read new files (`.npz`, `.safetensors` or `.csv`, by name order); samples added."""
        from plexus.data_formats import read_any
        from plexus.errors import DatasetError

        fmt = _format(self.spec, self.directory)
        if fmt not in ("npz", "safetensors", "csv"):
            raise BadTask(f"a watched directory takes .npz, .safetensors or .csv files, not {fmt}")
        added = 0
        for file in self._new_files(fmt):
            try:
                x, labels = read_any(file, fmt, label_column=self.spec.label_column,
                                     feature_columns=self.spec.feature_columns)
                x, y = _prepare(self.spec, fmt, x, labels, f"local file {file.name}")
            except DatasetError as exc:
                raise BadTask(f"local file {file}: {exc}") from None
            self.seen.add(file.name)
            self.x = x if self.x is None else np.concatenate([self.x, x])
            self.y = np.concatenate([self.y, y])
            added += len(y)
        return added


def local_shards(x: np.ndarray, y: np.ndarray, shard_size: int) -> int:
    """How many shards (slices of `shard_size`, the last may be short) the local data makes."""
    return -(-len(y) // shard_size)


def shard_payloads(x: np.ndarray, y: np.ndarray, shard_size: int, count: int, start: int
                   ) -> list[bytes]:
    """`count` local shards from slice `start` on (wrapping), encoded as shard payloads so the
    round trainer treats them like downloaded ones."""
    from plexus.shards import encode_shard

    total = local_shards(x, y, shard_size)
    out = []
    for k in range(count):
        n = (start + k) % total
        lo, hi = n * shard_size, (n + 1) * shard_size
        out.append(encode_shard(x[lo:hi], y[lo:hi], {"local_shard": n}))
    return out


def local_split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
                ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`(train, test)`: a seeded `test_fraction` of the local samples held out to evaluate the
    global model on this device (per-device evaluation); fewer than 5 samples: no test part."""
    if len(y) < 5:
        return (x, y), (x[:0], y[:0])
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = max(1, round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def evaluate_payload(spec: TaskSpec, model_payload: bytes, x: np.ndarray, y: np.ndarray
                     ) -> dict[str, float | int]:
    """Loss and accuracy of the model in `model_payload` on local samples `x`, `y`."""
    from learner_agent.benchmarking import build_dummy
    from plexus.tensors import decode_state
    from plexus.training import evaluate

    model = build_dummy(spec)
    state, meta = decode_state(model_payload, reference=model.state_dict())
    model.load_state_dict(state)
    loss, accuracy = evaluate(model, x, y)
    return {"model_version": int(meta.get("version", "0")), "samples": len(y),
            "loss": float(loss), "accuracy": float(accuracy)}

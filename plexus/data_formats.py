"""The user's data files: readers for npz, safetensors, CSV, image folders and IDX, and checks.

Each reader returns `(x, labels)`: features as float32 `[n, *shape]` and labels as an array of
ints or strings, before any label mapping or normalisation (`plexus.datasets.finish` does
those). The same readers serve the orchestrator (files under its data root) and the agent
(`plexus agent run --data DIR`). Bad data raises `BadData` naming the file and what is wrong;
a path outside the data root raises `DataPathRefused`; too many bytes raise `DataTooLarge`.
Each has a stable `code`, sent as the `error` of a 422 at submission.
"""

from __future__ import annotations

import csv
import gzip
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from plexus.errors import DatasetError

# Default cap on the bytes one dataset may occupy on disk (train + test files together).
MAX_DATA_BYTES = 2 * 1024**3
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm",
                  ".ppm")
SUFFIX_FORMATS = {".npz": "npz", ".safetensors": "safetensors", ".csv": "csv"}


class BadData(DatasetError):
    """The data cannot be trained on as it is: non-finite features, ragged rows, a picture
    that does not decode, labels out of range, an empty class."""

    code = "bad_data"


class DataTooLarge(BadData):
    """The dataset's files hold more bytes than this side accepts."""

    code = "data_too_large"


class DataPathRefused(DatasetError):
    """A dataset path points outside the configured data root (or there is no data root)."""

    code = "data_path_refused"


def resolve_under(root: Path, given: str) -> Path:
    """`given` (relative to `root`, or absolute inside it) as a real path inside `root`.

    `..`, symbolic links and absolute paths that lead out of `root` are refused, so a client
    cannot make the orchestrator read, say, /etc/shadow.
    """
    base = root.resolve()
    try:
        target = (base / given).resolve()
        inside = target.is_relative_to(base)
        exists = inside and target.exists()
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a loop of links
        raise DataPathRefused(f"{given[:200]!r} is not a usable path: {exc}") from None
    if not inside:
        raise DataPathRefused(
            f"{given[:200]!r} is outside the data root {base}; give a path relative to it "
            "(orchestrator serve --data-root)")
    if not exists:
        raise DatasetError(f"{given[:200]!r} does not exist under the data root {base}")
    return target


def disk_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_size(paths: list[Path], limit: int) -> None:
    """`DataTooLarge` when the files at `paths` hold more than `limit` bytes together."""
    total = sum(disk_bytes(p) for p in paths)
    if total > limit:
        raise DataTooLarge(f"the dataset holds {total} bytes, over this side's limit of "
                           f"{limit} bytes; use a smaller dataset or raise the limit")


def infer_format(path: Path, given: str | None) -> str:
    """The data format: `given`, else from the suffix (a directory is an image folder unless
    it holds IDX files)."""
    if given is not None:
        return given
    if path.is_dir():
        if any("idx" in p.name for p in path.iterdir() if p.is_file()):
            return "idx"
        return "images"
    suffix = path.suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    raise DatasetError(f"cannot tell the format of {path.name}; set dataset.format to one of "
                       "npz, safetensors, csv, images, idx")


def _xy(arrays: dict[str, np.ndarray], source: Path) -> tuple[np.ndarray, np.ndarray]:
    if "x" not in arrays or "y" not in arrays:
        raise BadData(f"{source.name} must hold arrays 'x' (features) and 'y' (labels); it "
                      f"holds {sorted(arrays)}")
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise BadData(f"{source.name}: x is shaped {x.shape} and y {y.shape}; need x "
                      "[n, ...] and y [n] with the same n")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise BadData(f"{source.name}: x has dtype {x.dtype}; features must be numbers")
    return x.astype(np.float32), y


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays `x` and `y` of a `.npz` (pickled objects are refused: allow_pickle=False)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise BadData(f"{path.name} is not a readable .npz without pickles: {exc}") from None
    return _xy(arrays, path)


def read_safetensors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Tensors `x` and `y` of a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadData(f"{path.name} is not a readable safetensors file: {exc}") from None
    return _xy(arrays, path)


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        for number, row in enumerate(csv.reader(fh), start=1):
            if row and any(cell.strip() for cell in row):
                yield number, row


def read_csv(path: Path, label_column: str, feature_columns: list[str] | None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Feature columns and the label column of a CSV with a header row; labels stay text."""
    try:
        rows = _csv_rows(path)
        _, header = next(rows)
        header = [h.strip() for h in header]
        if label_column not in header:
            raise BadData(f"{path.name} has no label column {label_column!r}; its columns are "
                          f"{header}")
        features = feature_columns or [h for h in header if h != label_column]
        missing = [f for f in features if f not in header]
        if missing:
            raise BadData(f"{path.name} has no feature columns {missing}")
        cols = [header.index(f) for f in features]
        label_at = header.index(label_column)
        xs: list[list[float]] = []
        labels: list[str] = []
        for number, row in rows:
            if len(row) != len(header):
                raise BadData(f"{path.name} line {number} has {len(row)} fields, the header "
                              f"{len(header)} (ragged rows)")
            try:
                xs.append([float(row[c]) for c in cols])
            except ValueError:
                raise BadData(f"{path.name} line {number}: a feature is not a number") from None
            labels.append(row[label_at].strip())
    except StopIteration:
        raise BadData(f"{path.name} is empty; it needs a header row and data rows") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadData(f"cannot read CSV {path.name}: {exc}") from None
    return np.asarray(xs, dtype=np.float32).reshape(len(xs), len(cols)), np.asarray(labels)


def _picture(path: Path, size: tuple[int, int] | None, grayscale: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            img = opened.convert("L" if grayscale else "RGB")
            if size is not None:
                img = img.resize((size[1], size[0]))
            pixels = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadData(f"picture {path} does not decode: {exc}") from None
    return pixels[None] if grayscale else pixels.transpose(2, 0, 1)


def read_images(path: Path, size: tuple[int, int] | None, grayscale: bool
                ) -> tuple[np.ndarray, np.ndarray]:
    """A folder with one sub-folder of pictures per class; the sub-folder's name is the label.

    Pictures become `[C, H, W]` (C = 1 with `grayscale`, else 3) with values 0–255; without
    `size` every picture must already have the same size.
    """
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise BadData(f"{path} holds no class folders; put each class's pictures in a "
                      "sub-folder named after the class")
    xs: list[np.ndarray] = []
    labels: list[str] = []
    for folder in classes:
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise BadData(f"class folder {folder.name} holds no pictures (an empty class)")
        for file in files:
            pixels = _picture(file, size, grayscale)
            if xs and pixels.shape != xs[0].shape:
                raise BadData(f"picture {file} is {pixels.shape[1:]} but the first one is "
                              f"{xs[0].shape[1:]}; set dataset.image_size to resize them")
            xs.append(pixels)
            labels.append(folder.name)
    return np.stack(xs).astype(np.float32), np.asarray(labels)


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


def read_idx_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    """`<prefix>-images-idx3-ubyte` and `<prefix>-labels-idx1-ubyte` (`.gz` allowed) of
    `directory` as `[n, 1, H, W]` pixels 0–255 and int labels; None when absent."""
    def find(stem: str) -> Path | None:
        dotted = stem.replace("-idx", ".idx")
        for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
            if (directory / name).is_file():
                return directory / name
        return None

    images = find(f"{prefix}-images-idx3-ubyte")
    labels = find(f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        return None
    try:
        x, y = read_idx(images), read_idx(labels)
    except DatasetError as exc:
        raise BadData(str(exc)) from None
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise BadData(f"IDX files in {directory} do not match: images {x.shape}, labels "
                      f"{y.shape}")
    return x.astype(np.float32).reshape(len(x), 1, *x.shape[1:]), y.astype(np.int64)


def read_idx_dir(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """The pair of an IDX directory: `train-*`, else `t10k-*` (a directory given as
    `test_path` may hold only the test files)."""
    pair = read_idx_pair(directory, "train") or read_idx_pair(directory, "t10k")
    if pair is None:
        raise BadData(f"no train-images-idx3-ubyte / train-labels-idx1-ubyte in {directory}")
    return pair


def read_any(path: Path, fmt: str, *, label_column: str = "label",
             feature_columns: list[str] | None = None, image_size: tuple[int, int] | None = None,
             grayscale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read `path` in format `fmt`; a directory of npz / safetensors / CSV files is read file
    by file (sorted by name) and concatenated."""
    if fmt == "images":
        return read_images(path, image_size, grayscale)
    if fmt == "idx":
        return read_idx_dir(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix.lower() == f".{fmt}")
    if not files:
        raise BadData(f"no .{fmt} files in {path}")
    parts = []
    for file in files:
        if fmt == "npz":
            parts.append(read_npz(file))
        elif fmt == "safetensors":
            parts.append(read_safetensors(file))
        else:
            parts.append(read_csv(file, label_column, feature_columns))
    shapes = {p[0].shape[1:] for p in parts}
    if len(shapes) > 1:
        raise BadData(f"the .{fmt} files in {path} hold samples of different shapes {shapes}")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

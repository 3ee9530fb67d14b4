"""Datasets: built-in files, IDX files by path, synthetic; deterministic split by seed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from plexus.datasets import dataset_geometry, load_dataset, read_idx
from plexus.errors import DatasetError
from plexus.spec import DatasetSpec


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def test_mnist5k_is_real_mnist_with_500_per_class() -> None:
    data = load_dataset(DatasetSpec(name="mnist5k", test_fraction=0.2), seed=0)
    assert data.train_x.shape == (4000, 1, 28, 28) and data.test_x.shape == (1000, 1, 28, 28)
    assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int64
    assert data.train_x.min() >= 0.0 and data.train_x.max() <= 1.0
    labels = np.concatenate([data.train_y, data.test_y])
    assert np.bincount(labels).tolist() == [500] * 10
    assert (data.input_shape, data.num_classes) == dataset_geometry("mnist5k")


def test_digits_shape_and_split_is_deterministic() -> None:
    a = load_dataset(DatasetSpec(name="digits"), seed=3)
    b = load_dataset(DatasetSpec(name="digits"), seed=3)
    c = load_dataset(DatasetSpec(name="digits"), seed=4)
    assert a.input_shape == (1, 8, 8) and len(a.train_y) + len(a.test_y) == 1797
    assert np.array_equal(a.train_y, b.train_y) and np.array_equal(a.test_x, b.test_x)
    assert not np.array_equal(a.train_y, c.train_y)


def test_synthetic_is_seeded_and_learnable_shape() -> None:
    a = load_dataset(DatasetSpec(name="synthetic", samples=100), seed=1)
    b = load_dataset(DatasetSpec(name="synthetic", samples=100), seed=1)
    assert np.array_equal(a.train_x, b.train_x)
    assert a.train_x.shape == (80, 1, 28, 28)


def test_idx_files_with_and_without_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 28, 28))
    labels = np.arange(30) % 10
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    data = load_dataset(DatasetSpec(name="fashion_mnist", path=str(tmp_path), test_fraction=0.2))
    assert len(data.train_y) == 24 and len(data.test_y) == 6
    assert data.train_x.max() <= 1.0
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:5])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:5])
    data = load_dataset(DatasetSpec(name="mnist", path=str(tmp_path)))
    assert len(data.train_y) == 30 and len(data.test_y) == 5
    assert np.array_equal(data.test_x[0, 0], images[0].astype(np.float32) / np.float32(255.0))


def test_bad_idx_files_are_dataset_errors(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetError, match="magic"):
        read_idx(tmp_path / "junk")
    write_idx(tmp_path / "short", np.zeros((2, 2)))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(DatasetError, match="header says"):
        read_idx(tmp_path / "short")
    with pytest.raises(DatasetError, match="train-images"):
        load_dataset(DatasetSpec(name="mnist", path=str(tmp_path)))

"""The user's data files: every format read with shape and classes from the data, the label
mapping recorded, normalisation as stated, paths kept under the data root, bad data refused."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from plexus.data_formats import BadData, DataPathRefused, DataTooLarge
from plexus.datasets import (
    FASHION_MNIST_DIR,
    dataset_geometry,
    load_dataset,
    load_files,
    recorded,
)
from plexus.errors import DatasetError
from plexus.spec import DatasetSpec


def files(path: str, **kw: object) -> DatasetSpec:
    return DatasetSpec.model_validate({"name": "files", "path": path, **kw})


def write_csv(path: Path, rows: list[list[object]], header: str = "a,b,c,label") -> None:
    path.write_text(header + "\n" + "\n".join(",".join(str(v) for v in r) for r in rows) + "\n")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def shapes(root: Path, n: int = 6, size: int = 20, classes: tuple[str, ...] = ("bar", "box",
           "dot")) -> Path:
    """A folder of pictures per class: horizontal bars, hollow boxes and dots, 20×20 PNGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = np.zeros((size, size), dtype=np.uint8)
            o = int(rng.integers(2, 6))
            if c == 0:
                img[o + 4 : o + 8, 2:-2] = 255
            elif c == 1:
                img[o, o:-o] = img[-o - 1, o:-o] = img[o:-o, o] = img[o:-o, -o - 1] = 255
            else:
                img[o + 4 : o + 9, o + 4 : o + 9] = 255
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def test_npz_with_string_labels_maps_them_and_records_the_mapping(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((40, 5)).astype(np.float64)
    y = np.array(["cat", "dog", "emu", "dog"] * 10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_files(files("d.npz", test_fraction=0.25), tmp_path)
    assert (data.input_shape, data.num_classes, data.classes) == ((5,), 3, ("cat", "dog", "emu"))
    assert len(data.train_y) == 30 and data.train_x.dtype == np.float32
    spec = recorded(files("d.npz"), data)
    assert (spec.num_classes, spec.classes, spec.format, spec.normalize) == (
        3, ["cat", "dog", "emu"], "npz", "none")
    assert dataset_geometry(spec) == ((5,), 3)


def test_npz_refuses_pickles(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(BadData, match="without pickles"):
        load_files(files("p.npz"), tmp_path)


def test_safetensors_with_a_test_path_and_standardize(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    save_file({"x": (rng.random((30, 2, 3)) * 10 + 5).astype(np.float32),
               "y": (np.arange(30) % 2).astype(np.int64)}, str(tmp_path / "tr.safetensors"))
    save_file({"x": rng.random((8, 2, 3)).astype(np.float32),
               "y": np.array([0, 1] * 4, dtype=np.int64)}, str(tmp_path / "te.safetensors"))
    data = load_files(files("tr.safetensors", test_path="te.safetensors",
                            normalize="standardize"), tmp_path)
    assert data.input_shape == (2, 3) and len(data.train_y) == 30 and len(data.test_y) == 8
    assert abs(float(data.train_x.mean())) < 1e-4 and data.classes == ("0", "1")


def test_csv_feature_and_label_columns(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", [[i, i * 2, 7, 3 + i % 3] for i in range(30)])
    data = load_files(files("t.csv", feature_columns=["a", "b"]), tmp_path)
    assert data.input_shape == (2,) and data.classes == ("3", "4", "5")
    assert set(data.train_y.tolist()) <= {0, 1, 2}


def test_image_folder_resize_and_grayscale(tmp_path: Path) -> None:
    root = shapes(tmp_path / "pics")
    data = load_files(files("pics", test_fraction=0.2), tmp_path)
    assert (data.input_shape, data.classes) == ((3, 20, 20), ("bar", "box", "dot"))
    assert data.train_x.max() <= 1.0  # divide_255 by default for pictures
    small = load_files(files(str(root), image_size=[10, 12], grayscale=True), tmp_path)
    assert small.input_shape == (1, 10, 12)


def test_idx_files_plain_and_gz_with_their_t10k_test_set(tmp_path: Path) -> None:
    (tmp_path / "idx").mkdir()
    images = np.random.default_rng(2).integers(0, 256, (20, 16, 16))
    write_idx(tmp_path / "idx" / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "idx" / "train-labels-idx1-ubyte", np.arange(20) % 4)
    write_idx(tmp_path / "idx" / "t10k-images-idx3-ubyte", images[:8])
    write_idx(tmp_path / "idx" / "t10k-labels-idx1-ubyte", np.arange(8) % 4)
    data = load_files(files("idx"), tmp_path)
    assert (data.input_shape, data.num_classes, len(data.test_y)) == ((1, 16, 16), 4, 8)


def test_paths_outside_the_data_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.csv").write_text("a,label\n1,0\n")
    (root / "link.csv").symlink_to(tmp_path / "secret.csv")
    for given in ("../secret.csv", str(tmp_path / "secret.csv"), "/etc/shadow", "link.csv"):
        with pytest.raises(DataPathRefused, match="outside the data root"):
            load_files(files(given), root)
    for given in ("a\x00b.csv", "x" * 5000):
        with pytest.raises(DataPathRefused, match="not a usable path"):
            load_files(files(given), root)


BAD = {
    "nan": ("n.npz", "NaN or Inf"),
    "inf": ("i.npz", "NaN or Inf"),
    "ragged": ("r.csv", "ragged"),
    "picture": ("broken", "does not decode"),
    "empty class": ("empty", "empty class"),
    "out of range": ("o.npz", "out of range"),
    "one class": ("one.npz", "one class"),
}


def make_bad(root: Path, case: str) -> DatasetSpec:
    x = np.random.default_rng(0).random((20, 3))
    y = np.arange(20) % 2
    if case in ("nan", "inf"):
        x[5, 1] = np.nan if case == "nan" else np.inf
        np.savez(root / BAD[case][0], x=x, y=y)
    elif case == "ragged":
        (root / "r.csv").write_text("a,b,label\n1,2,0\n3,4\n5,6,1\n")
    elif case == "picture":
        shapes(root / "broken", n=2)
        (root / "broken" / "bar" / "bad.png").write_bytes(b"not a png at all")
    elif case == "empty class":
        shapes(root / "empty", n=2)
        (root / "empty" / "zzz").mkdir()
    elif case == "out of range":
        y[3] = 7
        np.savez(root / "o.npz", x=x, y=y)
        return files("o.npz", num_classes=2)
    elif case == "one class":
        np.savez(root / "one.npz", x=x, y=np.zeros(20, dtype=np.int64))
    return files(BAD[case][0])


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_is_refused_naming_the_problem(tmp_path: Path, case: str) -> None:
    spec = make_bad(tmp_path, case)
    with pytest.raises(BadData, match=BAD[case][1]):
        load_files(spec, tmp_path)


def test_a_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "big.npz", x=np.zeros((100, 10)), y=np.arange(100) % 2)
    with pytest.raises(DataTooLarge, match="limit"):
        load_files(files("big.npz"), tmp_path, max_bytes=1000)


def test_test_labels_unseen_in_training_are_out_of_range(tmp_path: Path) -> None:
    np.savez(tmp_path / "tr.npz", x=np.ones((10, 2)), y=np.arange(10) % 2)
    np.savez(tmp_path / "te.npz", x=np.ones((4, 2)), y=np.array([0, 1, 2, 1]))
    with pytest.raises(BadData, match=r"test data: labels \['2'\] are out of range"):
        load_files(files("tr.npz", test_path="te.npz"), tmp_path)


def test_files_need_a_data_root_and_a_geometry() -> None:
    with pytest.raises(DatasetError, match="load_files"):
        load_dataset(files("x.npz"))
    with pytest.raises(DatasetError, match="unknown"):
        dataset_geometry(files("x.npz"))


def test_fashion_mnist_reads_the_debian_files() -> None:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must install dataset-fashion-mnist (.ci/run)")
        pytest.skip("dataset-fashion-mnist not installed (apt-get install it)")
    data = load_dataset(DatasetSpec(name="fashion_mnist"), seed=0)
    assert (len(data.train_y), len(data.test_y), data.input_shape) == (60000, 10000, (1, 28, 28))
    assert np.bincount(data.test_y).tolist() == [1000] * 10
    assert data.train_x.min() >= 0.0 and data.train_x.max() <= 1.0


@pytest.mark.parametrize(("dataset", "field"), [
    ({"name": "files"}, "dataset.path"),
    ({"name": "mnist5k", "device": True}, "device"),
    ({"name": "files", "path": "p", "image_size": [0, 4]}, "image_size"),
    ({"name": "files", "path": "p", "input_shape": []}, "input_shape"),
    ({"name": "files", "path": "p", "feature_columns": []}, "feature_columns"),
    ({"name": "files", "path": "p", "classes": ["a", "b"], "num_classes": 3}, "classes"),
    ({"name": "files", "path": "p", "format": "parquet"}, "format"),
])
def test_impossible_dataset_sections_are_spec_errors(dataset: dict[str, object], field: str
                                                     ) -> None:
    from plexus.errors import SpecError
    from plexus.spec import parse_spec

    with pytest.raises(SpecError, match=field):
        parse_spec({"dataset": dataset})


def test_a_file_given_as_a_picture_folder_is_bad_data(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((4, 2)), y=np.arange(4) % 2)
    with pytest.raises(BadData, match=r"cannot read d\.npz as images"):
        load_files(files("d.npz", format="images"), tmp_path)

"""Shards: exact sizes, i.i.d. and Dirichlet partitions, bit-exact safetensors round trip."""

from __future__ import annotations

import numpy as np
import pytest

from plexus.datasets import load_dataset
from plexus.errors import BadTensors, DatasetError
from plexus.shards import decode_shard, encode_shard, partition
from plexus.spec import DatasetSpec, PartitionSpec


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return load_dataset(DatasetSpec(name="mnist5k"), seed=0).train_y


def test_iid_shards_are_disjoint_and_full(labels: np.ndarray) -> None:
    shards = partition(labels, PartitionSpec(shard_size=500), seed=0)
    assert len(shards) == 8 and all(len(s) == 500 for s in shards)
    assert len(np.unique(np.concatenate(shards))) == 4000
    again = partition(labels, PartitionSpec(shard_size=500), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again, strict=True))


def test_dirichlet_shards_are_skewed_but_exact(labels: np.ndarray) -> None:
    spec = PartitionSpec(kind="dirichlet", alpha=0.1, shard_size=400)
    shards = partition(labels, spec, seed=1)
    assert len(shards) == 10 and all(len(s) == 400 for s in shards)
    assert len(np.unique(np.concatenate(shards))) == 4000  # no sample used twice
    # With α = 0.1 a shard is dominated by few classes; i.i.d. shards are near uniform.
    top = [np.bincount(labels[s], minlength=10).max() / 400 for s in shards[:5]]
    iid = partition(labels, PartitionSpec(shard_size=400), seed=1)
    top_iid = [np.bincount(labels[s], minlength=10).max() / 400 for s in iid[:5]]
    assert np.mean(top) > 2 * np.mean(top_iid)


def test_shard_larger_than_data_is_an_error(labels: np.ndarray) -> None:
    with pytest.raises(DatasetError, match="shard_size"):
        partition(labels[:10], PartitionSpec(shard_size=500), seed=0)


def test_round_trip_is_bit_exact() -> None:
    data = load_dataset(DatasetSpec(name="mnist5k"), seed=0)
    x, y = data.train_x[:500], data.train_y[:500]
    payload = encode_shard(x, y, {"task_id": 3, "shard": 7, "samples": 500})
    assert len(payload) < 2_000_000  # 500 × 784 float32 ≈ 1.57 MB plus a small header
    x2, y2, meta = decode_shard(payload)
    assert x2.tobytes() == x.tobytes() and y2.tobytes() == y.tobytes()
    assert meta == {"task_id": "3", "shard": "7", "samples": "500"}


def test_malformed_shards_raise_bad_tensors() -> None:
    with pytest.raises(BadTensors):
        decode_shard(b"\x00" * 3)
    with pytest.raises(BadTensors, match="float32"):
        encode_shard(np.zeros((2, 3), dtype=np.float64), np.zeros(2, dtype=np.int64))
    from safetensors.numpy import save

    wrong = save({"x": np.zeros((2, 3), dtype=np.float32)})
    with pytest.raises(BadTensors, match="x and y"):
        decode_shard(wrong)

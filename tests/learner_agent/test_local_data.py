"""Device-local data (`plexus agent run --data DIR`): read with the task's classes and
normalisation, bad data refused with a typed `BadTask` before training, a watched directory
yielding only the files that are new, local shards and the per-device held-out split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from learner_agent.errors import BadTask
from learner_agent.local_data import (
    LocalSource,
    local_shards,
    local_split,
    read_local,
    shard_payloads,
)
from plexus.shards import decode_shard
from plexus.spec import DatasetSpec

SPEC = DatasetSpec(name="files", device=True, format="npz", test_path="t.npz",
                   input_shape=(3,), num_classes=2, classes=["no", "yes"])


def save(path: Path, n: int, labels: tuple[str, ...] = ("no", "yes"), bad: bool = False
         ) -> None:
    x = np.arange(n * 3, dtype=np.float64).reshape(n, 3)
    if bad:
        x[1, 1] = np.inf
    np.savez(path, x=x, y=np.array(labels * n)[:n])


def test_local_files_use_the_tasks_classes(tmp_path: Path) -> None:
    save(tmp_path / "a.npz", 4, ("yes", "no"))
    save(tmp_path / "b.npz", 2)
    x, y = read_local(SPEC, tmp_path)
    assert x.dtype == np.float32 and x.shape == (6, 3)
    assert y.tolist() == [1, 0, 1, 0, 0, 1]


@pytest.mark.parametrize(("case", "message"), [
    ("inf", "NaN or Inf"), ("label", "out of range"), ("shape", "expects"), ("none", "no .npz"),
])
def test_bad_local_data_is_a_bad_task(tmp_path: Path, case: str, message: str) -> None:
    if case == "inf":
        save(tmp_path / "a.npz", 4, bad=True)
    elif case == "label":
        save(tmp_path / "a.npz", 4, ("no", "maybe"))
    elif case == "shape":
        np.savez(tmp_path / "a.npz", x=np.zeros((4, 5)), y=np.array(["no"] * 4))
    with pytest.raises(BadTask, match=message):
        read_local(SPEC, tmp_path)


def test_a_watched_directory_yields_new_files_only(tmp_path: Path) -> None:
    save(tmp_path / "000.npz", 4)
    source = LocalSource(SPEC, tmp_path)
    assert source.poll() == 4 and source.poll() == 0
    save(tmp_path / "001.npz", 3)
    (tmp_path / "notes.txt").write_text("ignored")
    assert source.poll() == 3
    assert source.x is not None and source.x.shape == (7, 3) and len(source.y) == 7


def test_local_shards_wrap_and_the_held_out_part_is_seeded(tmp_path: Path) -> None:
    save(tmp_path / "a.npz", 25)
    x, y = read_local(SPEC, tmp_path)
    (tx, ty), (_vx, vy) = local_split(x, y, 0.2, seed=3)
    assert (len(ty), len(vy)) == (20, 5)
    assert np.array_equal(local_split(x, y, 0.2, seed=3)[1][1], vy)
    assert local_shards(tx, ty, 8) == 3
    payloads = shard_payloads(tx, ty, 8, 4, start=2)
    sizes = [len(decode_shard(p)[1]) for p in payloads]
    assert sizes == [4, 8, 8, 4]  # slices 2, 0, 1, 2: the last slice is short

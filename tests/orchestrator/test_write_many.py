"""`write_atomic_many`: every file whole on return, nothing changed when one fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.store import write_atomic, write_atomic_many


def test_writes_every_file_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    files = [(tmp_path / f"r{i % 2}" / f"l{i}.bin", lambda i=i: bytes([i]) * (1000 + i))
             for i in range(20)]
    write_atomic_many(files, threads=4)
    for i in range(20):
        assert (tmp_path / f"r{i % 2}" / f"l{i}.bin").read_bytes() == bytes([i]) * (1000 + i)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_one_failure_changes_no_file(tmp_path: Path) -> None:
    old = tmp_path / "r0" / "l0.bin"
    write_atomic(old, b"old")

    def boom() -> bytes:
        raise RuntimeError("encoding failed")

    files = [(old, lambda: b"new"), (tmp_path / "r0" / "l1.bin", boom)]
    with pytest.raises(RuntimeError, match="encoding failed"):
        write_atomic_many(files, threads=2)
    assert old.read_bytes() == b"old"
    assert sorted(p.name for p in (tmp_path / "r0").iterdir()) == ["l0.bin"]


@pytest.mark.extended  # ~12 s on the loaded 2-core host (torch, data, evaluation)
def test_close_round_keeps_every_update_on_disk(tmp_path: Path) -> None:
    import asyncio

    import torch

    from orchestrator.metrics import Metrics
    from orchestrator.runs.gateway import Reply
    from orchestrator.runs.rounds import close_round
    from orchestrator.runs.taskdata import initial_model
    from orchestrator.store import Store
    from orchestrator.store.db import LearnerRow
    from plexus.datasets import load_dataset
    from plexus.spec import parse_spec
    from plexus.tensors import decode_state

    spec = parse_spec({"model": "twonn", "dataset": {"name": "synthetic", "samples": 200},
                       "mode": "sync"})
    ds = load_dataset(spec.dataset, seed=0)
    state = initial_model(spec, ds.input_shape, ds.num_classes).state_dict()
    replies = [Reply(LearnerRow(id=i + 1, name=f"l{i}"),
                     value={"params": {k: v + 0.1 * i for k, v in state.items()},
                            "samples_trained": 10 * (i + 1)}) for i in range(12)]
    replies.append(Reply(LearnerRow(id=99, name="gone"), error="Timeout"))
    store = Store(tmp_path)
    test = (ds.test_x, ds.test_y, ds.input_shape, ds.num_classes)
    closed = asyncio.run(close_round(store, Metrics(lambda: 0), 1, spec, 3, state, replies,
                                     test, {}, keep_updates=True))
    assert closed.left_out == {"99": "Timeout"}
    for i in range(12):
        kept, meta = decode_state(store.layout.update(1, 3, i + 1).read_bytes())
        assert meta == {"round": "3", "samples": str(10 * (i + 1))}
        for name, t in state.items():
            assert torch.equal(kept[name], t + 0.1 * i), (i, name)
    assert not store.layout.update(1, 3, 99).exists()

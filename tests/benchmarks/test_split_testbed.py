"""`split_learning.py --testbed` (benchmarks/split_testbed.py): the per-cap rows read from the
orchestrator's round records, the summary against FL, the plot, the task specs and the
Fashion-MNIST subset, on hand-made records (default tier); the whole run on the emulated
testbed with two link caps (root, extended)."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import split_testbed as st

from plexus.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


def _args(**over: Any) -> argparse.Namespace:
    base = {"caps": ["20mbit", "3mbit"], "link_budget": 0.1, "target": 0.9, "shard_size": 250,
            "rounds": 2, "task_timeout": 600.0, "configs": list(st.CONFIGS), "train": 2000,
            "test": 500, "batch": 64, "lr": 0.003, "seed": 0}
    return argparse.Namespace(**{**base, **over})


def _fl_round(seconds: float) -> dict[str, Any]:
    return {"round_time_s": seconds, "samples": {"7": 2000}, "accuracy": 0.6,
            "times": {"7": {"actual_s": seconds - 0.1, "predicted_s": None}}}


def _split_round(seconds: float, bandwidth: float, target: float, ratio: float,
                 received: int) -> dict[str, Any]:
    return {"round_time_s": seconds, "samples": {"7": 2000}, "accuracy": 0.5, "times": {"7": {
        "seconds": seconds - 2, "bandwidth": bandwidth, "target_ratio": target, "ratio": ratio,
        "received_bytes": received, "batches": 32, "payload_bytes": received - 9000}}}


def _rows() -> list[dict[str, Any]]:
    rows = []
    for cap, rate, fl_s, bw in (("20mbit", 2.5e6, 10.0, 2.4e6), ("3mbit", 3.75e5, 30.0, 3.6e5)):
        rows.append(st.record("fl", cap, rate, [_fl_round(fl_s), _fl_round(fl_s + 2)]))
        for config, target in (("split-org", 1.0), ("split-s1", 0.9),
                               ("split-s1-aware", 0.9 if bw > 1e6 else 0.12)):
            rounds = [_split_round(fl_s * 2, bw, target, 0.5, 6_000_000),
                      _split_round(fl_s * 2 + 4, bw, target, target - 0.01, 5_000_000)]
            row = st.record(config, cap, rate, rounds)
            row["expected_target"] = st.expected_target(row, _args())
            row.update(up_bytes_per_epoch=6e6, down_bytes_per_epoch=2.4e7)
            rows.append(row)
    return rows


def test_rows_take_the_mean_round_time_and_the_last_rounds_ratios() -> None:
    rows = _rows()
    fl, aware = rows[0], rows[3]
    assert (fl["config"], fl["cap"], fl["epoch_s"], fl["samples"]) == ("fl", "20mbit", 11.0,
                                                                        2000)
    assert [r["device_s"] for r in fl["rounds"]] == pytest.approx([9.9, 11.9])
    assert aware["config"] == "split-s1-aware" and aware["epoch_s"] == 22.0
    assert (aware["target_ratio"], aware["ratio"]) == (0.9, pytest.approx(0.89))
    assert aware["received_bytes_per_epoch"] == 5_500_000
    assert [r["device_s"] for r in aware["rounds"]] == [18.0, 22.0]


def test_the_expected_target_is_link_target_of_the_reported_bandwidth() -> None:
    rows = {(r["cap"], r["config"]): r for r in _rows()}
    assert rows["20mbit", "split-s1"]["expected_target"] is None  # not bandwidth-aware
    # S1: 16×14×14 8-bit codes + 8 = 3144 B, the 1-channel path 196 + 8 = 204 B per sample;
    # budget 0.1 s × b_k / 64 samples per batch.
    assert rows["20mbit", "split-s1-aware"]["expected_target"] == 0.9  # capped at the target
    per_sample = 0.1 * 3.6e5 / 64
    assert rows["3mbit", "split-s1-aware"]["expected_target"] == pytest.approx(
        (per_sample - 204) / (3144 - 204))


def test_summary_gives_each_configuration_against_fl_at_each_cap(tmp_path: Path) -> None:
    rows = _rows()
    summary = st.summarise(rows)
    assert list(summary) == ["20mbit", "3mbit"]
    assert summary["3mbit"]["fl"]["vs_fl"] == 1.0
    assert summary["3mbit"]["split-org"]["vs_fl"] == pytest.approx(62.0 / 31.0)
    assert summary["20mbit"]["split-s1-aware"]["target_ratio"] == 0.9
    with pytest.raises(KeyError):
        st.summarise([r for r in rows if r["config"] != "fl"])
    st.plot(rows, tmp_path / "split.png")
    assert (tmp_path / "split.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_task_spec_is_a_valid_task() -> None:
    specs = {c: load_spec(st.task_spec(c, "subset", _args())) for c in st.CONFIGS}
    assert specs["fl"].mode == "sync" and specs["fl"].sync is not None
    assert specs["fl"].sync.total_shards == 8 and specs["fl"].sync.rounds == 2
    for config in ("split-org", "split-s1", "split-s1-aware"):
        split = specs[config].split
        assert split is not None and split.rounds == 2 and split.cut == 7
    assert specs["split-s1"].split is not None and specs["split-s1"].split.link_budget_s is None
    aware = specs["split-s1-aware"].split
    assert aware is not None and aware.link_budget_s == 0.1 and aware.target_ratio == 0.9
    assert specs["split-org"].split is not None
    assert [p.bits for p in specs["split-org"].split.paths] == [32]


def test_the_subset_is_the_first_samples_with_the_count_patched(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for prefix, n in (("train", 5), ("t10k", 3)):
        images = struct.pack(">IIII", 2051, n, 28, 28) + bytes(
            i % 256 for i in range(n * 784))
        labels = struct.pack(">II", 2049, n) + bytes(range(n))
        (src / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (src / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    st.write_subset(tmp_path / "out", 2, 1, source=src)
    images = (tmp_path / "out" / "train-images-idx3-ubyte").read_bytes()
    assert struct.unpack(">IIII", images[:16]) == (2051, 2, 28, 28)
    assert images[16:] == bytes(i % 256 for i in range(2 * 784))
    labels = (tmp_path / "out" / "t10k-labels-idx1-ubyte").read_bytes()
    assert labels == struct.pack(">II", 2049, 1) + b"\x00"


@pytest.mark.extended
@pytest.mark.root
@pytest.mark.timeout(900)
def test_the_testbed_run_moves_the_gate_with_the_link_cap(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, tc, cgroups)")
    pid = os.getpid()
    prefix, subnet = f"sp{pid % 10000:04d}", f"10.215.{100 + pid % 150}.0/24"
    fleet = (REPO / "deploy" / "testbed" / "fleets" / "split.yaml").read_text()
    fleet = fleet.replace("pxsp", prefix).replace("10.215.0.0/24", subnet).replace(
        "port: 8715", f"port: {20000 + pid % 10000}")
    (tmp_path / "fleet.yaml").write_text(fleet)
    out = tmp_path / "out"
    try:
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "split_learning.py"),
                        "--quick", "--testbed", str(tmp_path / "fleet.yaml"), "--out-dir",
                        str(out)], check=True, timeout=600, cwd=REPO)
    finally:  # down (again, in case the run was killed), then its state and orchestrator data
        subprocess.run([sys.executable, "-m", "plexus.cli", "testbed", "down", "--prefix",
                        prefix], check=True, timeout=120, cwd=REPO)
        shutil.rmtree(Path("/run/plexus-testbed") / prefix, ignore_errors=True)
    result = json.loads((out / "split_learning_testbed.json").read_text())
    rows = {(r["cap"], r["config"]): r for r in result["rows"]}
    assert len(rows) == 8
    wide, narrow = rows["20mbit", "split-s1-aware"], rows["3mbit", "split-s1-aware"]
    for row in (wide, narrow):
        assert row["target_ratio"] == pytest.approx(row["expected_target"])
    assert narrow["target_ratio"] < wide["target_ratio"]
    assert narrow["received_bytes_per_epoch"] < rows["3mbit", "split-s1"][
        "received_bytes_per_epoch"]
    # Float32 activations over a 3 Mbit/s link: slower than over 20 Mbit/s.
    assert rows["3mbit", "split-org"]["epoch_s"] > rows["20mbit", "split-org"]["epoch_s"]
    # The gradient at the codes comes back as float32: Org's download is about its upload.
    org = rows["3mbit", "split-org"]
    assert org["down_bytes_per_epoch"] > 0.9 * org["up_bytes_per_epoch"] > 0
    assert (out / "split_learning_testbed.png").stat().st_size > 0

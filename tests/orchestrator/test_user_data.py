"""The user's own data with real processes and real files: an orchestrator whose data root
holds a CSV table and a folder of pictures, and two agents each started with `--data DIR`.

A CSV task trains an MLP; an image-folder task trains a CNN on both agents; a device-data task
trains on the agents' own files while the orchestrator never serves a shard; an async SPIN task
pulls only once files dropped into the agents' directories bring enough samples; bad data and
paths outside the data root are refused at submission with a stable code, creating nothing.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from orchestrator.client import APIError
from orchestrator.local.fleet import LocalFleet
from tests.waiting import finished, wait_for

pytestmark = pytest.mark.slow

AGENTS = ("a", "b")
MAX_BYTES = 2_000_000
FEATURES = 6
CENTRES = np.random.default_rng(99).normal(0.0, 3.0, (3, FEATURES))


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated Gaussian classes in FEATURES dimensions, labels 'low/mid/high'."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = CENTRES[y] + rng.normal(0.0, 1.0, (n, FEATURES))
    return x.astype(np.float32), np.array(["high", "low", "mid"])[y]


def write_csv(path: Path, n: int, seed: int) -> None:
    x, y = blobs(n, seed)
    head = ",".join(f"f{i}" for i in range(FEATURES)) + ",kind"
    rows = [",".join(f"{v:.4f}" for v in row) + f",{label}"
            for row, label in zip(x, y, strict=True)]
    path.write_text(head + "\n" + "\n".join(rows) + "\n")


def draw_shapes(root: Path, n: int) -> None:
    """3 classes of 20×20 pictures: a bar, a hollow box, a filled dot, at random offsets."""
    from PIL import Image

    rng = np.random.default_rng(5)
    for c, name in enumerate(("bar", "box", "dot")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.zeros((20, 20), dtype=np.uint8)
            o = int(rng.integers(2, 6))
            if c == 0:
                img[o + 4 : o + 8, 2:-2] = 255
            elif c == 1:
                img[o, o:-o] = img[-o - 1, o:-o] = img[o:-o, o] = img[o:-o, -o - 1] = 255
            else:
                img[o + 4 : o + 9, o + 4 : o + 9] = 255
            Image.fromarray(img).convert("RGB").save(root / name / f"{i}.png")


def save_npz(path: Path, n: int, seed: int) -> None:
    x, y = blobs(n, seed)
    np.savez(path, x=x, y=y)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    base = Path(tmp_path_factory.mktemp("user-data"))
    root = base / "data" / "datasets"  # the default data root: <data dir>/datasets
    root.mkdir(parents=True)
    write_csv(root / "table.csv", 450, 0)
    draw_shapes(root / "shapes", 40)
    save_npz(root / "device-test.npz", 150, 1)
    dirs = {name: base / f"device-{name}" for name in AGENTS}
    for n, d in enumerate(dirs.values()):
        d.mkdir()
        save_npz(d / "000.npz", 150, 10 + n)
    f = LocalFleet(base / "data", agent_data=dirs)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PLEXUS_MAX_DATA_BYTES", str(MAX_BYTES))
            f.start_orchestrator()
        for name in AGENTS:
            f.start_agent(name)
        yield f
    finally:
        f.stop()


def sync_spec(name: str, model: str, dataset: dict[str, Any], shard_size: int,
              rounds: int = 3, lr: float = 0.1) -> dict[str, Any]:
    return {"name": name, "model": model, "seed": 1, "dataset": dataset,
            "partition": {"shard_size": shard_size},
            "training": {"lr": lr, "batch_size": 16, "iterations": 2},
            "sync": {"allocator": "dab", "deadline_s": 4.0, "rounds": rounds, "grace_s": 3.0,
                     "benchmark_shards": 1}}


def served(fleet: LocalFleet, kind: str) -> float:
    """Bytes the orchestrator has served of `kind` (shard, partition, model), from /metrics."""
    for line in httpx.get(f"{fleet.url}/metrics").text.splitlines():
        if line.startswith(f'plexus_bytes_served_total{{kind="{kind}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_csv_table_trains_an_mlp_and_records_its_classes(fleet: LocalFleet) -> None:
    dataset = {"name": "files", "path": "table.csv", "label_column": "kind",
               "normalize": "standardize", "test_fraction": 0.2}
    with fleet.client() as client:
        task = client.submit(sync_spec("csv", "twonn", dataset, 40))
        recorded = task["spec"]["dataset"]
        assert (recorded["input_shape"], recorded["num_classes"], recorded["classes"]) == (
            [FEATURES], 3, ["high", "low", "mid"])
        final = finished(client, task["id"])
        assert final["state"] == "finished", final["reason"]
        accuracy = client.rounds(task["id"])[-1]["accuracy"]
    assert accuracy >= 0.9, accuracy


def test_an_image_folder_trains_a_cnn_on_two_agents(fleet: LocalFleet) -> None:
    dataset = {"name": "files", "path": "shapes", "grayscale": True, "test_fraction": 0.25}
    with fleet.client() as client:
        task = client.submit(sync_spec("shapes", "convnet", dataset, 15, rounds=4, lr=0.2))
        assert task["spec"]["dataset"]["input_shape"] == [1, 20, 20]
        final = finished(client, task["id"])
        assert final["state"] == "finished", final["reason"]
        rounds = client.rounds(task["id"])
        names = {str(lr["id"]): lr["name"] for lr in client.learners()}
    trained = {names[k] for r in rounds for k, n in r["allocation"].items() if n > 0}
    assert trained == set(AGENTS), rounds
    assert rounds[-1]["accuracy"] >= 0.6, [r["accuracy"] for r in rounds]


@pytest.mark.parametrize("allocator", ["dab", "csa"])
def test_device_data_trains_where_it_lives_and_no_shard_is_served(fleet: LocalFleet,
                                                                  allocator: str) -> None:
    """DAB's learners plan on their own samples; CSA benchmarks them (model download and
    local training) and splits `total_shards`."""
    before = (served(fleet, "shard"), served(fleet, "partition"))
    dataset = {"name": "files", "device": True, "format": "npz",
               "test_path": "device-test.npz"}
    spec = sync_spec("device", "twonn", dataset, 50)
    spec["sync"].update({"allocator": allocator},
                        **({"total_shards": 4} if allocator == "csa" else {}))
    with fleet.client() as client:
        task = client.submit(spec)
        final = finished(client, task["id"])
        assert final["state"] == "finished", final["reason"]
        rounds = client.rounds(task["id"])
        names = {str(lr["id"]): lr["name"] for lr in client.learners()}
    trained = {names[k] for r in rounds for k, n in r["samples"].items() if n > 0}
    # DAB: each agent plans on its own data; CSA may hand all 4 shards to the faster one.
    assert trained == set(AGENTS) if allocator == "dab" else len(trained) >= 1, rounds
    assert rounds[-1]["accuracy"] >= 0.8, [r["accuracy"] for r in rounds]
    # Not a byte of shard or partition left the orchestrator.
    assert (served(fleet, "shard"), served(fleet, "partition")) == before
    # Both evaluations show: the orchestrator's test set, and each device's own held-out part.
    evaluation = final["evaluation"]
    assert "device-test.npz" in evaluation["accuracy_from"]
    last = evaluation["per_device"][-1]
    assert set(last["learners"]) <= trained and last["round"] == len(rounds) - 1
    assert all(e["samples"] == 30 and 0.0 <= e["accuracy"] <= 1.0
               for e in last["learners"].values()), last
    # `plexus task show` prints both.
    shown = subprocess.run(
        [sys.executable, "-m", "plexus.cli", "task", "show", str(task["id"]), "--url",
         fleet.url, "--token", fleet.admin_token], capture_output=True, text=True, timeout=60)
    out = " ".join((shown.stdout + shown.stderr).split())
    assert shown.returncode == 0, out
    assert "accuracy from the orchestrator's test set" in out and "per-device evaluation" in out


def test_async_spin_pulls_when_dropped_files_bring_samples(fleet: LocalFleet) -> None:
    # Each agent's directory holds 150 samples; the pull threshold asks for 200, so nothing
    # is trained until the files dropped below arrive.
    dataset = {"name": "files", "device": True, "format": "npz",
               "test_path": "device-test.npz"}
    spec = {"name": "spin-device", "model": "twonn", "seed": 2, "dataset": dataset,
            "training": {"lr": 0.1, "batch_size": 16}, "mode": "async",
            "async": {"aggregator": "spin", "k": 2, "pi_s": 1.0, "pull_threshold": 200,
                      "epochs": 2, "max_updates": 2}}
    with fleet.client() as client:
        task = client.submit(spec)
        for name in AGENTS:
            wait_for(lambda n=name: joined(fleet, n, task["id"]), 60.0, f"{name} joining")
        # Both clients run and hold 150 samples each, under the threshold: no pull yet.
        assert client.task(task["id"])["model_version"] == 0
        for n, name in enumerate(AGENTS):
            save_npz(fleet.agent_data[name] / "001.npz", 100, 20 + n)
        final = finished(client, task["id"], timeout_s=120.0)
        assert final["state"] == "finished", final["reason"]
        assert final["model_version"] >= 1
    assert served(fleet, "partition") == 0.0


def joined(fleet: LocalFleet, name: str, task_id: int) -> bool:
    """Whether agent `name` logged joining async task `task_id` with its 150 samples."""
    log = " ".join((fleet.data_dir / f"agent-{name}.log").read_text().split())
    return f"async task {task_id}: joined as client" in log and "with 150 samples" in log


BAD: dict[str, tuple[str, dict[str, Any]]] = {
    "nan": ("bad_data", {"path": "nan.npz"}),
    "ragged": ("bad_data", {"path": "ragged.csv"}),
    "picture": ("bad_data", {"path": "broken"}),
    "empty class": ("bad_data", {"path": "emptyclass"}),
    "out of range": ("bad_data", {"path": "range.npz", "num_classes": 2}),
    "too large": ("data_too_large", {"path": "big.npz"}),
    "traversal": ("data_path_refused", {"path": "../admin_token", "format": "csv"}),
    "absolute": ("data_path_refused", {"path": "/etc/shadow", "format": "csv"}),
    "idx outside": ("data_path_refused", {"name": "mnist", "path": "/usr/share"}),
    "device without test set": ("invalid_spec", {"device": True, "format": "npz"}),
}
CSA_NO_TOTAL = ("invalid_spec", {"device": True, "format": "npz", "test_path": "device-test.npz"})


def make_bad(root: Path) -> None:
    x = np.random.default_rng(0).random((20, 3))
    y = np.arange(20) % 2
    bad = x.copy()
    bad[4, 2] = np.nan
    np.savez(root / "nan.npz", x=bad, y=y)
    (root / "ragged.csv").write_text("a,b,label\n1,2,0\n3,4\n")
    draw_shapes(root / "broken", 2)
    (root / "broken" / "box" / "x.png").write_bytes(b"\x89PNG but not really")
    draw_shapes(root / "emptyclass", 2)
    (root / "emptyclass" / "star").mkdir()
    np.savez(root / "range.npz", x=x, y=np.where(y == 1, 5, 0))
    np.savez(root / "big.npz", x=np.zeros((MAX_BYTES // 8 + 10, 1)), y=np.zeros(1))


@pytest.mark.parametrize("case", [*sorted(BAD), "device csa without total"])
def test_bad_data_is_refused_at_submit_and_creates_nothing(fleet: LocalFleet, case: str
                                                           ) -> None:
    root = fleet.data_dir / "datasets"
    if not (root / "nan.npz").exists():
        make_bad(root)
    code, dataset = BAD.get(case, CSA_NO_TOTAL)
    spec = sync_spec(f"bad-{case}", "twonn", {"name": "files", **dataset}, 5)
    if case == "device csa without total":
        spec["sync"]["allocator"] = "csa"
    with fleet.client() as client:
        before = client.tasks()
        with pytest.raises(APIError) as err:
            client.submit(spec)
        assert (err.value.status, err.value.code) == (422, code), err.value.detail
        assert client.tasks() == before


def test_the_shard_route_refuses_a_device_task(fleet: LocalFleet) -> None:
    with fleet.client() as client:
        device = next(t for t in client.tasks() if t["name"] == "device")
    assert device["spec"]["dataset"]["device"] is True
    r = httpx.get(f"{fleet.url}/v1/tasks/{device['id']}/shards/0",
                  headers={"Authorization": f"Bearer {fleet.admin_token}"})
    assert r.status_code == 404 and r.json()["error"] == "device_data"


def test_a_job_of_device_data_needs_total_shards(fleet: LocalFleet) -> None:
    dataset = {"name": "files", "device": True, "format": "npz",
               "test_path": "device-test.npz"}
    with fleet.client() as client:
        before = (client.tasks(), client.jobs())
        with pytest.raises(APIError) as err:
            client.submit_job({"allocator": "equal",
                               "tasks": [sync_spec("device-job", "twonn", dataset, 50)]})
        assert (err.value.status, err.value.code) == (422, "invalid_spec"), err.value.detail
        assert "total_shards" in err.value.detail
        assert (client.tasks(), client.jobs()) == before

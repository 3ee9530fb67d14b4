"""Split learning against plain federated training on the emulated testbed (needs root).

Run:  .venv/bin/python benchmarks/split_learning.py --testbed deploy/testbed/fleets/split.yaml
          [--caps 20mbit 3mbit] [--train 2000] [--test 500] [--link-budget 0.1] [--out-dir D]

The real orchestrator and one real agent (the fleet's first learner, in its own network
namespace under its CPU quota) train the benchmark's small ResNet (split_learning.py's LAYERS,
cut after the second residual block) on a Fashion-MNIST subset (2,000 training samples, 500
test), `--rounds` rounds per task (3), each round one pass over the data, at each link cap in
turn (the learner's htb caps, both directions, are changed in place between runs).
Per cap, four tasks:

- `fl`: plain federated training (mode sync, equal allocation, every shard to the device,
  one local epoch): the device downloads the model and its shards, trains the whole network,
  uploads the model.
- `split-org`: split learning, one uncompressed path (float32 activations at the cut).
- `split-s1`: DynSplit scenario 1 (8-bit activations + a 1-channel bottleneck) at a fixed
  target ratio (`--target`).
- `split-s1-aware`: the same with `split.link_budget_s` set: the agent lowers its target ratio
  from its measured bandwidth b_k (`plexus.split.steps.link_target`).

Time per epoch is the mean round time at the orchestrator (dispatch to the device's answer:
shard downloads, training, model or device-half transfer); the ratios are the last round's.
`--quick`: 500 / 200 samples, one round. Writes split_learning_testbed.json
and .png; prints a one-line summary last.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

FASHION = Path("/usr/share/datasets/fashion-mnist")
SUBSET = "fashion-mnist-subset"  # under the orchestrator's data root
CONFIGS = ("fl", "split-org", "split-s1", "split-s1-aware")
S1: list[dict[str, Any]] = [{"channels": None, "bits": 8}, {"channels": 1, "bits": 8}]
ORG: list[dict[str, Any]] = [{"channels": None, "bits": 32}]


def add_testbed_args(parser: argparse.ArgumentParser) -> None:
    """The options of the testbed mode (`--testbed` itself comes from deploy.testbed.bench)."""
    parser.add_argument("--caps", nargs="+", default=["20mbit", "3mbit"],
                        help="link caps (both directions) the device is measured at, tc units")
    parser.add_argument("--link-budget", type=float, default=0.1,
                        help="split.link_budget_s of split-s1-aware (seconds per batch upload)")
    parser.add_argument("--target", type=float, default=0.9,
                        help="target ratio of split-s1 and split-s1-aware (share on path 0)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS),
                        help="which of the four to run (fl is needed for the ratios)")
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds (epochs) per task; the gate learns its ratio over them")
    parser.add_argument("--task-timeout", type=float, default=600.0,
                        help="seconds a task may take before the run gives up")


def write_subset(directory: Path, train: int, test: int, source: Path = FASHION) -> None:
    """The first `train` / `test` Fashion-MNIST samples as uncompressed idx files."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        for kind, header, per in (("images-idx3-ubyte", 16, 784), ("labels-idx1-ubyte", 8, 1)):
            raw = gzip.decompress((source / f"{prefix}-{kind}.gz").read_bytes())
            head = bytearray(raw[:header])
            struct.pack_into(">I", head, 4, n)
            (directory / f"{prefix}-{kind}").write_bytes(bytes(head) + raw[header:header + n * per])


def task_spec(config: str, data_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    """The task of `config` (one of CONFIGS): `args.rounds` rounds, each one pass over the
    `args.train` samples of dataset directory `data_dir` (under the orchestrator's data root)."""
    from split_learning import CUT, LAYERS

    spec: dict[str, Any] = {
        "name": f"testbed-{config}", "seed": args.seed, "model": {"layers": LAYERS},
        "dataset": {"name": "fashion_mnist", "path": data_dir},
        "partition": {"shard_size": args.shard_size},
        "training": {"optimizer": "adam", "lr": args.lr, "batch_size": args.batch}}
    if config == "fl":
        shards = -(-args.train // args.shard_size)
        return {**spec, "mode": "sync", "sync": {
            "allocator": "equal", "rounds": args.rounds, "total_shards": shards,
            "deadline_s": args.task_timeout, "grace_s": 30.0}}
    split: dict[str, Any] = {"cut": CUT, "rounds": args.rounds,
                             "round_timeout_s": args.task_timeout,
                             "paths": ORG if config == "split-org" else S1,
                             "target_ratio": 1.0 if config == "split-org" else args.target}
    if config == "split-s1-aware":
        split["link_budget_s"] = args.link_budget
    return {**spec, "mode": "split", "split": split}


def run_task(client: Any, spec: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
    """Submit, wait until it ends; its rounds as the orchestrator recorded them."""
    task = client.submit(spec)
    deadline = time.monotonic() + timeout_s
    while client.task(task["id"])["state"] not in ("finished", "failed", "cancelled"):
        if time.monotonic() > deadline:
            client.cancel(task["id"])
            raise TimeoutError(f"task {spec['name']} did not end within {timeout_s:.0f} s")
        time.sleep(0.5)
    done = client.task(task["id"])
    rounds: list[dict[str, Any]] = client.rounds(task["id"])
    if done["state"] != "finished" or not rounds:
        raise RuntimeError(f"task {spec['name']} {done['state']}: {done.get('reason')}")
    return rounds


SPLIT_FIELDS = ("seconds", "bandwidth", "target_ratio", "ratio", "received_bytes", "batches",
                "payload_bytes")


def link_bytes(host_if: str) -> dict[str, int]:
    """Bytes the device's link carried so far (its veth's host end: what it sends is the
    device's download, what it receives the device's upload; Ethernet frames, headers
    included)."""
    stats = Path("/sys/class/net") / host_if / "statistics"
    return {"down": int((stats / "tx_bytes").read_text()),
            "up": int((stats / "rx_bytes").read_text())}


def record(config: str, cap: str, cap_bytes: float, rounds: list[dict[str, Any]]
           ) -> dict[str, Any]:
    """One row of the result from a finished task's rounds (the orchestrator's records of a
    one-learner task): epoch time as the mean round time; ratios from the last round."""
    per_round = []
    for rnd in rounds:
        (key, samples), = rnd["samples"].items()
        learner = rnd["times"][key]
        entry: dict[str, Any] = {"epoch_s": rnd["round_time_s"], "samples": samples,
                                 "accuracy": rnd["accuracy"]}
        if config == "fl":
            entry["device_s"] = learner.get("actual_s")
        else:
            entry.update({f: learner.get(f) for f in SPLIT_FIELDS})
            entry["device_s"] = learner.get("seconds")
        per_round.append(entry)
    last = per_round[-1]
    row: dict[str, Any] = {
        "config": config, "cap": cap, "cap_bytes_s": cap_bytes, "samples": last["samples"],
        "epoch_s": sum(r["epoch_s"] for r in per_round) / len(per_round),
        "accuracy": last["accuracy"], "rounds": per_round}
    if config != "fl":
        row.update({f: last.get(f) for f in ("bandwidth", "target_ratio", "ratio")})
        row["received_bytes_per_epoch"] = sum(r["received_bytes"] for r in per_round) / len(
            per_round)
    return row


def expected_target(row: dict[str, Any], args: argparse.Namespace) -> float | None:
    """The ratio `link_target` gives for the bandwidth the device reported (split-s1-aware)."""
    from split_learning import CUT

    from plexus.spec import SplitSpec
    from plexus.split.codec import PathLayout
    from plexus.split.steps import link_target

    if row["config"] != "split-s1-aware" or row.get("bandwidth") is None:
        return None

    split = SplitSpec.model_validate({"cut": CUT, "paths": S1, "target_ratio": args.target,
                                      "link_budget_s": args.link_budget})
    layouts = [PathLayout((16, 14, 14) if p.channels is None else (p.channels, 14, 14),
                          p.bits) for p in split.paths]
    return link_target(split, layouts, args.batch, float(row["bandwidth"]))


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cap: each configuration's epoch time and its ratio to plain FL's, and the target
    ratio the aware device chose; raises KeyError when a cap lacks its `fl` row."""
    out: dict[str, Any] = {}
    for cap in dict.fromkeys(r["cap"] for r in rows):
        mine = {r["config"]: r for r in rows if r["cap"] == cap}
        fl = mine["fl"]["epoch_s"]
        out[cap] = {c: {"epoch_s": r["epoch_s"], "vs_fl": r["epoch_s"] / fl,
                        "target_ratio": r.get("target_ratio"), "ratio": r.get("ratio")}
                    for c, r in mine.items()}
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Epoch time per configuration and cap (bars), the target and realised ratios of S1, and
    the bytes per epoch on the device's link in each direction at the last cap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caps = list(dict.fromkeys(r["cap"] for r in rows))
    configs = [c for c in CONFIGS if any(r["config"] == c for r in rows)]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / max(1, len(configs))
    for j, config in enumerate(configs):
        by_cap = {r["cap"]: r["epoch_s"] for r in rows if r["config"] == config}
        xs = [i + j * width for i, cap in enumerate(caps) if cap in by_cap]
        a1.bar(xs, [by_cap[c] for c in caps if c in by_cap], width, label=config)
    a1.set_xticks([i + width * (len(configs) - 1) / 2 for i in range(len(caps))], caps)
    a1.set_xlabel("link cap (up and down)")
    a1.set_ylabel("seconds per epoch (one round)")
    a1.legend()
    for config, marker, colour in (("split-s1", "s", "tab:green"),
                                   ("split-s1-aware", "o", "tab:red")):  # as the bars
        got = [r for r in rows if r["config"] == config]
        a2.plot([r["cap"] for r in got], [r["target_ratio"] for r in got], marker=marker,
                linestyle=":", color=colour, label=f"{config}: target")
        a2.plot([r["cap"] for r in got], [r["ratio"] for r in got], marker=marker,
                color=colour, label=f"{config}: realised (last round)")
    low = [r for r in rows if r["cap"] == caps[-1] and "up_bytes_per_epoch" in r]
    ticks = range(len(low))
    a3.bar([i - 0.2 for i in ticks], [r["up_bytes_per_epoch"] / 1e6 for r in low], 0.4,
           label="upload")
    a3.bar([i + 0.2 for i in ticks], [r["down_bytes_per_epoch"] / 1e6 for r in low], 0.4,
           label="download")
    a3.set_xticks(list(ticks), [r["config"] for r in low], rotation=20)
    a3.set_ylabel(f"MB per epoch on the link ({caps[-1]})")
    a3.legend()
    a2.set_ylim(-0.05, 1.05)
    a2.set_xlabel("link cap")
    a2.set_ylabel("share of samples on the wide path")
    a2.legend()
    fig.suptitle("Split learning vs FL on one testbed device (Fashion-MNIST, small ResNet)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_testbed(args: argparse.Namespace, out: Path) -> None:
    """Bring the fleet up, run every configuration at every cap, write JSON + PNG."""
    from deploy.testbed.bench import TestbedFleet
    from deploy.testbed.profiles import parse_rate

    started = time.monotonic()
    load0 = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with TestbedFleet(args.testbed) as fleet:
        fleet.start(timeout_s=600.0)
        assert fleet.bed is not None
        name = fleet.bed.learners[0].name
        print(f"testbed up, {name} enrolled after {time.monotonic() - started:.0f} s",
              flush=True)
        # The orchestrator reads datasets only under its data root (`--data-root`).
        write_subset(fleet.bed.state_dir / "orchestrator" / "datasets" / SUBSET,
                     args.train, args.test)
        with fleet.client() as client:
            # `down` keeps the orchestrator's data directory: a split task an interrupted
            # earlier run left running would resume now and share the link with ours.
            for task in client.tasks():
                if task["state"] in ("pending", "running"):
                    client.cancel(task["id"])
            for cap in args.caps:
                rate = parse_rate(cap)
                fleet.bed.set_rate(name, down=rate, up=rate)
                for config in args.configs:
                    before = link_bytes(fleet.bed.learner(name).host_if)
                    rounds = run_task(client, task_spec(config, SUBSET, args),
                                      args.task_timeout)
                    after = link_bytes(fleet.bed.learner(name).host_if)
                    row = record(config, cap, rate, rounds)
                    for way in ("down", "up"):  # Ethernet frames on the device's link
                        row[f"{way}_bytes_per_epoch"] = (after[way] - before[way]) / len(rounds)
                    row["expected_target"] = expected_target(row, args)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    summary = summarise(rows)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k != "out_dir"}
    (out / "split_learning_testbed.json").write_text(json.dumps(
        {"config": settings, "rows": rows, "summary": summary, "wall_s":
         time.monotonic() - started, "load_before": load0, "load_after": os.getloadavg()},
        indent=1))
    plot(rows, out / "split_learning_testbed.png")
    parts = [f"{cap}: " + ", ".join(f"{c} {v['epoch_s']:.1f} s ({v['vs_fl']:.2f}× FL)"
                                    for c, v in s.items()) for cap, s in summary.items()]
    aware = [f"{r['cap']} target {r['target_ratio']:.2f}" for r in rows
             if r["config"] == "split-s1-aware"]
    print("split_learning --testbed: " + "; ".join(parts) + "; aware: " + ", ".join(aware))

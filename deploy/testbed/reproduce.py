"""Subset benchmarking on the emulated thesis fleet (thesis 3.4.2.1, figs. 3.2 and 3.3).

    sudo .venv/bin/python -m deploy.testbed.reproduce --fleet deploy/testbed/fleets/thesis-ch3.yaml

Brings the fleet up (no orchestrator, no agents), serves MNIST-5k shards of 500 samples from the
bridge address, and in each learner, one at a time, runs the agent's SB code at each benchmark
size and then measures what SB predicts: one pass of a fresh TwoNN over 120 shards on the
desktop and Jetson, 15 on the Pis (as in fig. 3.2), and the download of 60 shards on the
Ethernet devices, 15 on the WiFi Pis (fig. 3.3 used 60; 15 keeps a 20 Mbit/s link under 10 s).
Reports |predicted − measured| / measured per device and size (thesis 3.4), writes
benchmarks/results/testbed_subset_benchmarking.json and .png, prints a one-line summary last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from deploy.testbed.bench import BlobServer, make_shards, subset_benchmark_on_testbed
from deploy.testbed.fleet import load_fleet
from deploy.testbed.testbed import Testbed

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"

SPEC: dict[str, Any] = {
    "name": "testbed-sb",
    "model": "twonn",
    "seed": 0,
    "dataset": {"name": "mnist5k"},
    "partition": {"kind": "iid", "shard_size": 500},  # thesis 3.4.1: 500-sample shards
    "training": {"optimizer": "sgd", "lr": 0.1, "batch_size": 32, "iterations": 5},
    "mode": "sync",
    "sync": {"allocator": "dab", "deadline_s": 15.0, "rounds": 1},
}


def _is_fast(profile: dict[str, Any]) -> bool:
    return str(profile["name"]).startswith(("desktop", "jetson"))


def errors(result: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Per benchmark size: runtime and download prediction errors, one value per repetition."""
    out: dict[str, dict[str, list[float]]] = {}
    for run in result["runs"]:
        truth = run["truth"]
        for sb in run["sb"]:
            predicted_train = truth["train_samples"] / sb["compute"]
            predicted_down = truth["download_bytes"] / sb["bandwidth"]
            entry = out.setdefault(str(sb["shards"]), {"runtime": [], "download": []})
            entry["runtime"].append(abs(predicted_train - truth["train_s"]) / truth["train_s"])
            entry["download"].append(
                abs(predicted_down - truth["download_s"]) / truth["download_s"]
            )
    return out


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, per_size in summary["errors"].items():
        sizes = sorted(int(s) for s in per_size)
        left.plot(
            sizes,
            [100 * statistics.fmean(per_size[str(s)]["runtime"]) for s in sizes],
            marker="o",
            label=name,
        )
        right.plot(
            sizes,
            [100 * statistics.fmean(per_size[str(s)]["download"]) for s in sizes],
            marker="o",
            label=name,
        )
    left.set(
        title="SB runtime prediction error (cf. thesis fig. 3.2)",
        xlabel="benchmark size (shards)",
        ylabel="error (%)",
    )
    right.set(
        title="SB download-time prediction error (cf. fig. 3.3)",
        xlabel="benchmark size (shards)",
        ylabel="error (%)",
    )
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.testbed.reproduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--fleet", type=Path, default=Path(__file__).parent / "fleets" / "thesis-ch3.yaml"
    )
    parser.add_argument("--sizes", default="2,4,6,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "testbed_subset_benchmarking.json")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    fleet_data = load_fleet(args.fleet)
    # Only the network and the limits: SB is run by the probe, not through a task.
    from dataclasses import replace

    fleet = replace(
        fleet_data,
        orchestrator=replace(fleet_data.orchestrator, start=False, url="http://unused.invalid"),
        agent=replace(fleet_data.agent, start=False),
    )
    shards = make_shards(SPEC, 120)
    started = time.perf_counter()
    bed = Testbed.up(fleet)
    try:
        profiles = {lr.name: lr.profile for lr in bed.learners}
        train = {n: 120 if _is_fast(p) else 15 for n, p in profiles.items()}
        download = {n: 60 if _is_fast(p) else 15 for n, p in profiles.items()}
        with BlobServer(bed.state.bridge_ip, shards=shards) as server:
            raw = subset_benchmark_on_testbed(
                bed,
                server,
                SPEC,
                sizes=sizes,
                train_shards=train,
                download_shards=download,
                repeats=args.repeats,
            )
    finally:
        bed.down()
    summary: dict[str, Any] = {
        "command": f"sudo .venv/bin/python -m deploy.testbed.reproduce --fleet {args.fleet} "
        f"--sizes {args.sizes} --repeats {args.repeats}",
        "fleet": {
            n: {k: profiles[n][k] for k in ("name", "cpu", "memory_bytes", "down_rate", "up_rate")}
            for n in profiles
        },
        "spec": SPEC,
        "train_shards": train,
        "download_shards": download,
        "seconds": time.perf_counter() - started,
        "raw": raw,
        "errors": {n: errors(r) for n, r in raw.items()},
        "rates": {
            n: {
                "sb_bandwidth": statistics.fmean(
                    s["bandwidth"] for run in r["runs"] for s in run["sb"]
                ),
                "sb_compute": statistics.fmean(
                    s["compute"] for run in r["runs"] for s in run["sb"]
                ),
            }
            for n, r in raw.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    _plot(summary, args.out.with_suffix(".png"))
    worst = max(
        statistics.fmean(v["runtime"]) for e in summary["errors"].values() for v in e.values()
    )
    bw = "; ".join(
        f"{n} {summary['rates'][n]['sb_bandwidth'] / profiles[n]['down_rate']:.0%} of cap"
        for n in profiles
    )
    print(
        f"testbed SB on {len(profiles)} learners: worst mean runtime error {worst:.0%}; "
        f"SB bandwidth {bw}"
    )


if __name__ == "__main__":
    main()

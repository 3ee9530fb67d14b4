"""Thesis chapter 3 experiments on the emulated fleet: SB (figs. 3.2, 3.3), DAB vs CSA (3.6-3.8).

    sudo .venv/bin/python benchmarks/testbed_reproduce.py \
        --fleet deploy/testbed/fleets/thesis-ch3.yaml
    sudo .venv/bin/python benchmarks/testbed_reproduce.py --what dab-vs-csa

`--what sb` (default):
Brings the fleet up (no orchestrator, no agents), serves MNIST-5k shards of 500 samples from the
bridge address, and in each learner, one at a time, runs the agent's SB code at each benchmark
size and then measures what SB predicts: one pass of a fresh TwoNN over 120 shards on the
desktop and Jetson, 15 on the Pis (as in fig. 3.2), and the download of 60 shards on the
Ethernet devices, 15 on the WiFi Pis (fig. 3.3 used 60; 15 keeps a 20 Mbit/s link under 10 s).
Reports |predicted − measured| / measured per device and size (thesis 3.4), writes
benchmarks/results/testbed_subset_benchmarking.json and .png, prints a one-line summary last.

`--what dab-vs-csa`: the deadline sweep of `benchmarks/dab_vs_csa.py` (its own task spec and
round summary, imported from that script), run on four emulated Jetson Nanos as in thesis fig. 3.6
instead of LocalFleet's duty-cycled local agents. Writes
benchmarks/results/testbed_dab_vs_csa.json and .png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from outdir import add_out_dir, results_dir

from deploy.errors import TestbedError
from deploy.testbed.bench import BlobServer
from deploy.testbed.fleet import load_fleet
from deploy.testbed.testbed import Testbed

ROOT = Path(__file__).resolve().parents[1]
FLEETS = ROOT / "deploy" / "testbed" / "fleets"
# Run inside each learner, by path: the learner's python imports learner_agent and plexus.
SB_PROBE = Path(__file__).resolve().with_name("testbed_sb_probe.py")

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


def floor_errors(result: dict[str, Any]) -> list[float]:
    """The floor (issue 17 §1): one truth run predicting the next in the same repetition,
    |t2 − t1| / t1, one value per repetition (runs made before it was measured have none)."""
    return [
        abs(run["truth"]["train_again_s"] - run["truth"]["train_s"]) / run["truth"]["train_s"]
        for run in result["runs"]
        if "train_again_s" in run["truth"]
    ]


def flops_errors(result: dict[str, Any]) -> list[float]:
    """The FLOPS baseline's runtime prediction error, one value per repetition."""
    return [
        abs(run["flops"]["predicted_train_s"] - run["truth"]["train_s"]) / run["truth"]["train_s"]
        for run in result["runs"]
        if "flops" in run
    ]


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (name, per_size) in enumerate(summary["errors"].items()):
        sizes = sorted(int(s) for s in per_size)
        line = left.plot(
            sizes,
            [100 * statistics.fmean(per_size[str(s)]["runtime"]) for s in sizes],
            marker="o",
            label=f"{name} SB",
        )[0]
        flops = summary["flops_errors"].get(name)
        if flops:
            # FLOPS uses no shards: one flat line per device (thesis fig. 3.2 draws it so too).
            left.axhline(
                100 * statistics.fmean(flops),
                color=line.get_color(),
                ls=":",
                label=f"{name} FLOPS" if index < 5 else None,
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
    left.legend(fontsize=7, ncol=2, loc="center right")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_dab_vs_csa(
    rows: list[dict[str, Any]], profiles: dict[str, dict[str, Any]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    panels = (
        ("guc_time_s", 1.0, "GUC time (fig. 3.6)", "seconds"),
        ("truancy", 100.0, "truancy (fig. 3.7)", "% of deadline"),
        ("accuracy", 100.0, "accuracy (fig. 3.8a)", "%"),
        ("loss", 1.0, "loss (fig. 3.8b)", "cross-entropy"),
    )
    for alloc, style in (("dab", "o-"), ("csa", "s--")):
        chosen = sorted((r for r in rows if r["allocator"] == alloc), key=lambda r: r["deadline_s"])
        for axis, (key, scale, _, _) in zip(axes, panels, strict=True):
            axis.plot(
                [r["deadline_s"] for r in chosen],
                [scale * r[key] for r in chosen],
                style,
                label=alloc.upper(),
            )
    deadlines = sorted({r["deadline_s"] for r in rows})
    axes[0].plot(deadlines, deadlines, ":", color="grey", label="deadline")
    axes[1].axhline(0, color="grey", ls=":")
    for axis, (_, _, title, ylabel) in zip(axes, panels, strict=True):
        axis.set(title=title, xlabel="deadline D (s)", ylabel=ylabel)
        axis.grid(alpha=0.3)
        axis.legend()
    kinds = sorted({str(p["name"]) for p in profiles.values()})
    cpu = sorted({float(p["cpu"]) for p in profiles.values()})
    fig.suptitle(
        f"DAB vs CSA on the emulated testbed: {len(profiles)} learners "
        f"({', '.join(kinds)}; CPU share {', '.join(f'{c:g}' for c in cpu)} of a core)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FOUR_JETSONS = FLEETS / "thesis-ch3-jetsons.yaml"


def make_shards(spec_data: dict[str, Any], count: int) -> list[bytes]:
    """Encode `count` shards of the spec's dataset (`shard_size` samples each) for a BlobServer.

    Shards repeat when the dataset holds fewer than `count`.
    """
    from plexus.datasets import load_dataset
    from plexus.shards import encode_shard, partition
    from plexus.spec import load_spec

    spec = load_spec(spec_data)
    data = load_dataset(spec.dataset, seed=spec.seed)
    parts = partition(data.train_y, spec.partition, spec.seed)
    return [
        encode_shard(
            data.train_x[parts[i % len(parts)]],
            data.train_y[parts[i % len(parts)]],
            {"shard": i, "samples": len(parts[i % len(parts)])},
        )
        for i in range(count)
    ]


def subset_benchmark_on_testbed(
    bed: Testbed,
    server: BlobServer,
    spec_data: dict[str, Any],
    *,
    sizes: list[int],
    train_shards: dict[str, int],
    download_shards: dict[str, int],
    repeats: int = 1,
    names: list[str] | None = None,
    timeout: float = 600.0,
) -> dict[str, dict[str, Any]]:
    """Run the agent's SB (`sb_probe`) in each learner, one learner at a time.

    One at a time because on real hardware each device benchmarks on its own resources; here
    learners share the host's cores, and running them together would let one learner's load
    slow another beyond what its quota says. `train_shards` / `download_shards` give, per
    learner, how many shards the measured truth trains on and downloads. Returns sb_probe's JSON
    (`{"runs": [{"sb": [...], "truth": {...}}, ...]}`) per learner.
    """
    chosen = names or [lr.name for lr in bed.learners]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=bed.state_dir, delete=False) as f:
        json.dump(spec_data, f)
        spec_path = f.name
    try:
        for name in chosen:
            argv = [
                sys.executable,
                str(SB_PROBE),
                "--url",
                server.base_url,
                "--spec",
                spec_path,
                "--sizes",
                ",".join(str(n) for n in sizes),
                "--train-shards",
                str(train_shards[name]),
                "--download-shards",
                str(download_shards[name]),
                "--available",
                str(server.shard_count),
                "--repeats",
                str(repeats),
            ]
            done = bed.run_in(name, argv, timeout=timeout)
            if done.returncode != 0:
                raise TestbedError(
                    f"subset benchmarking in learner {name!r} failed (exit {done.returncode}): "
                    f"{done.stderr.decode(errors='replace').strip()[-800:]}"
                )
            results[name] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    finally:
        Path(spec_path).unlink(missing_ok=True)
    return results


def dab_vs_csa(fleet_source: Path | None, factors: list[float], rounds: int, out: Path) -> None:
    """DAB and CSA tasks over a deadline sweep anchored on CSA's own GUC time (seconds)."""
    # A sibling script: benchmarks/ is on sys.path when a benchmark runs (python benchmarks/X.py).
    import dab_vs_csa as bench

    from deploy.testbed.bench import TestbedFleet

    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with TestbedFleet(fleet_source or FOUR_JETSONS) as fleet:
        fleet.start()
        assert fleet.bed is not None
        profiles = {lr.name: lr.profile for lr in fleet.bed.learners}
        with fleet.client() as client:
            probe = bench.run_task(client, bench.task_spec("csa", 120.0, 1, 32))
            total = max(8, round(32 * 6.0 / max(probe["guc_time_s"], 0.1)))
            t_csa = bench.run_task(client, bench.task_spec("csa", 120.0, 1, total))["guc_time_s"]
            print(f"CSA total {total} shards/round; T_csa = {t_csa:.2f} s", flush=True)
            for f in factors:
                for alloc in ("dab", "csa"):
                    row = bench.run_task(client, bench.task_spec(alloc, f * t_csa, rounds, total))
                    row["factor"] = f
                    rows.append(row)
                    print(
                        f"D={row['deadline_s']:6.2f}s {alloc}: GUC {row['guc_time_s']:6.2f}s "
                        f"truancy {100 * row['truancy']:+6.1f}% acc "
                        f"{100 * row['accuracy']:.1f}%",
                        flush=True,
                    )
    dab = sorted((r for r in rows if r["allocator"] == "dab"), key=lambda r: r["deadline_s"])
    csa = sorted((r for r in rows if r["allocator"] == "csa"), key=lambda r: r["deadline_s"])
    result = {
        "benchmark": "testbed_dab_vs_csa",
        "command": f"sudo .venv/bin/python benchmarks/testbed_reproduce.py --what dab-vs-csa "
        f"--factors {','.join(str(f) for f in factors)} --rounds {rounds}",
        "fleet": profiles,
        "csa_total_shards": total,
        "t_csa_s": t_csa,
        "rows": rows,
        "seconds": time.perf_counter() - started,
        "thesis_anchor": "four Jetson Nanos, tightest deadline: DAB +7 %, CSA +63 % (3.4.2.2)",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    _plot_dab_vs_csa(rows, profiles, out.with_suffix(".png"))
    print(
        f"testbed dab_vs_csa: tightest D={dab[0]['deadline_s']:.2f}s truancy DAB "
        f"{100 * dab[0]['truancy']:+.1f}% vs CSA {100 * csa[0]['truancy']:+.1f}%; loosest "
        f"accuracy DAB {100 * dab[-1]['accuracy']:.1f}% vs CSA {100 * csa[-1]['accuracy']:.1f}%"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="benchmarks/testbed_reproduce.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--what", choices=("sb", "dab-vs-csa"), default="sb")
    parser.add_argument(
        "--fleet",
        type=Path,
        default=None,
        help="fleet file [sb: fleets/thesis-ch3.yaml; dab-vs-csa: four Jetson Nanos]",
    )
    parser.add_argument(
        "--factors", default="0.6,1.0,1.4", help="dab-vs-csa: deadlines as multiples of T_csa"
    )
    parser.add_argument("--rounds", type=int, default=2, help="dab-vs-csa: rounds per task")
    parser.add_argument("--sizes", default="2,4,6,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON file to write (its PNG beside it); wins over --out-dir")
    add_out_dir(parser)
    args = parser.parse_args(argv)
    if args.what == "dab-vs-csa":
        factors = [float(f) for f in args.factors.split(",")]
        dab_vs_csa(
            args.fleet, factors, args.rounds,
            args.out or results_dir(args) / "testbed_dab_vs_csa.json",
        )
        return
    fleet_path = args.fleet or FLEETS / "thesis-ch3.yaml"
    sb_reproduction(
        fleet_path,
        [int(s) for s in args.sizes.split(",")],
        args.repeats,
        args.out or results_dir(args) / "testbed_subset_benchmarking.json",
        command=f"sudo .venv/bin/python benchmarks/testbed_reproduce.py --fleet {fleet_path} "
        f"--sizes {args.sizes} --repeats {args.repeats}",
    )


def _network_only(fleet_path: Path) -> Any:
    """The fleet's network and limits only (no orchestrator, no agent): SB is run by the
    probe, not through a task."""
    from dataclasses import replace

    fleet_data = load_fleet(fleet_path)
    return replace(
        fleet_data,
        orchestrator=replace(fleet_data.orchestrator, start=False, url="http://unused.invalid"),
        agent=replace(fleet_data.agent, start=False),
    )


def sb_reproduction(
    fleet_path: Path,
    sizes: list[int],
    repeats: int,
    out: Path,
    *,
    command: str,
    truth_scale: float = 1.0,
) -> None:
    """SB vs FLOPS in every learner of the fleet (figs. 3.2, 3.3); writes `out` and its PNG.

    `truth_scale` shrinks the measured truth (120 / 15 training shards, 60 / 15 downloaded)
    for smoke runs; 1.0 is the thesis's sizes. Used by `benchmarks/subset_benchmarking.py
    --testbed`.
    """
    fleet = _network_only(fleet_path)
    shards = make_shards(SPEC, 120)
    started = time.perf_counter()
    bed = Testbed.up(fleet)

    def scaled(n: int) -> int:
        return max(max(sizes), round(n * truth_scale))

    try:
        profiles = {lr.name: lr.profile for lr in bed.learners}
        train = {n: scaled(120 if _is_fast(p) else 15) for n, p in profiles.items()}
        download = {n: scaled(60 if _is_fast(p) else 15) for n, p in profiles.items()}
        with BlobServer(bed.state.bridge_ip, shards=shards) as server:
            raw = subset_benchmark_on_testbed(
                bed,
                server,
                SPEC,
                sizes=sizes,
                train_shards=train,
                download_shards=download,
                repeats=repeats,
            )
    finally:
        bed.down()
    summary: dict[str, Any] = {
        "command": command,
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
        "flops_errors": {n: flops_errors(r) for n, r in raw.items()},
        "floor_errors": {n: floor_errors(r) for n, r in raw.items()},
        "rates": _sb_rates(raw),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    _plot(summary, out.with_suffix(".png"))
    _print_sb_headline(summary, profiles, sizes)


def _sb_rates(raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean SB bandwidth and compute rate of each learner."""
    return {
        n: {
            "sb_bandwidth": statistics.fmean(
                s["bandwidth"] for run in r["runs"] for s in run["sb"]
            ),
            "sb_compute": statistics.fmean(
                s["compute"] for run in r["runs"] for s in run["sb"]
            ),
        }
        for n, r in raw.items()
    }


def _print_sb_headline(
    summary: dict[str, Any], profiles: dict[str, Any], sizes: list[int]
) -> None:
    worst = max(
        statistics.fmean(v["runtime"]) for e in summary["errors"].values() for v in e.values()
    )
    bw = "; ".join(
        f"{n} {summary['rates'][n]['sb_bandwidth'] / profiles[n]['down_rate']:.0%} of cap"
        for n in profiles
    )
    largest = str(max(sizes))
    sb_at_largest = statistics.fmean(
        statistics.fmean(e[largest]["runtime"]) for e in summary["errors"].values()
    )
    flops_all = [v for e in summary["flops_errors"].values() for v in e]
    flops_mean = statistics.fmean(flops_all) if flops_all else float("nan")
    floor_all = [v for e in summary.get("floor_errors", {}).values() for v in e]
    floor_mean = statistics.fmean(floor_all) if floor_all else float("nan")
    over_floor = sb_at_largest / floor_mean if floor_mean > 0 else float("nan")
    print(
        f"testbed SB on {len(profiles)} learners: mean runtime error {sb_at_largest:.0%} at "
        f"{largest} shards vs FLOPS {flops_mean:.0%} (ratio {sb_at_largest / flops_mean:.2f}) "
        f"and the floor {floor_mean:.0%} (SB / floor {over_floor:.2f}); "
        f"worst SB mean {worst:.0%}; SB bandwidth {bw}"
    )


if __name__ == "__main__":
    main()

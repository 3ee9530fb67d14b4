"""DAB vs CSA over a sweep of deadlines on local agents of unequal (emulated) speed.

Reproduces the shape of thesis figures 3.6–3.8 (`002_e4b211d2cc7666ef.txt`, section 3.4.2):
for each deadline D, one DAB task and one CSA task run on the same three agent processes
(speeds emulated with a CPU duty cycle: 100 %, 50 %, 25 %); the script reports the global
update cycle (GUC) time, truancy = (GUC time − D)/D, and the final loss and accuracy.

CSA splits a fixed total of shards per round (min-max of eq. 3.4 over the learners' b_k, c_k)
and its learners train their whole allocation; DAB learners pick a_k themselves (eq. 3.5) and
halt at D. The sweep is anchored on CSA's own GUC time T_csa measured with a loose deadline,
D = f · T_csa, so the tightest deadline sits where the thesis' did (CSA ≈ 60 % over).

    .venv/bin/python benchmarks/dab_vs_csa.py [--quick]
    sudo .venv/bin/python benchmarks/dab_vs_csa.py \
        --testbed deploy/testbed/fleets/thesis-ch3-jetsons.yaml

Writes benchmarks/results/dab_vs_csa.json and .png; prints a one-line summary last. Timings
come from a shared 2-core machine and are noisy. With `--testbed FLEET.yaml` (root) the same
sweep runs on the emulated testbed (docs/testbed.md: each agent in its own network namespace
with a capped link and a CPU quota, thesis fig. 3.6 used four Jetson Nanos) instead of
duty-cycled local agents, and writes benchmarks/results/testbed_dab_vs_csa.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from outdir import add_out_dir, results_dir

from deploy.testbed.bench import add_testbed_option
from orchestrator.client import Client
from orchestrator.local.fleet import LocalFleet

RESULTS = Path(__file__).resolve().parent / "results"
SPEEDS = {"fast": 1.0, "medium": 0.5, "slow": 0.25}


def task_spec(allocator: str, deadline_s: float, rounds: int, total_shards: int
              ) -> dict[str, Any]:
    """TwoNN on MNIST-5k (16 shards of 250 samples), μ = 5, SGD lr 0.05; grace = D."""
    return {
        "name": f"{allocator}-D{deadline_s:.2f}", "model": "twonn", "seed": 0,
        "dataset": {"name": "mnist5k"}, "partition": {"shard_size": 250},
        "training": {"optimizer": "sgd", "lr": 0.05, "batch_size": 32, "iterations": 5},
        "sync": {"allocator": allocator, "deadline_s": round(deadline_s, 3), "rounds": rounds,
                 "grace_s": round(deadline_s, 3), "benchmark_shards": 4,
                 "total_shards": total_shards},
    }


def run_task(client: Client, spec: dict[str, Any], timeout_s: float = 600.0
             ) -> dict[str, Any]:
    """Submit, wait for the end, and summarise the rounds (times in seconds)."""
    task = client.submit(spec)
    end = time.monotonic() + timeout_s
    while (state := client.task(task["id"]))["state"] in ("pending", "running"):
        if time.monotonic() > end:
            client.cancel(task["id"])
            raise TimeoutError(f"task {task['id']} did not end within {timeout_s} s")
        time.sleep(0.3)
    if state["state"] != "finished":
        raise RuntimeError(f"task {task['id']} {state['state']}: {state['reason']}")
    rounds = client.rounds(task["id"])
    d = spec["sync"]["deadline_s"]
    times = [r["round_time_s"] for r in rounds]
    return {
        "allocator": spec["sync"]["allocator"], "deadline_s": d,
        "guc_time_s": statistics.mean(times), "guc_times_s": times,
        "truancy": statistics.mean((t - d) / d for t in times),
        "round_truancies": [(t - d) / d for t in times],
        # the deadline_s each learner was sent per round (DAB: D less its learnt lead)
        "halt_s": [sorted(v["halt_s"] for v in (r.get("times") or {}).values()
                          if v.get("halt_s") is not None) for r in rounds],
        "overrun": statistics.mean(max(0.0, (t - d) / d) for t in times),
        "loss": rounds[-1]["loss"], "accuracy": rounds[-1]["accuracy"],
        "shards_per_round": statistics.mean(sum(r["allocation"].values()) for r in rounds),
        # shards per learner id per round (named after the sweep: `_name_allocations`)
        "allocations": [{str(k): int(v) for k, v in r["allocation"].items()} for r in rounds],
        "samples_per_round": statistics.mean(sum(r["samples"].values()) for r in rounds),
        "left_out": sum(len([k for k, v in r["left_out"].items()
                             if v != "allocated no shards"]) for r in rounds),
        "plan_s": rounds[0]["plan_s"],
    }


def plot(rows: list[dict[str, Any]], path: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(17, 4))
    for alloc, style in (("dab", "o-"), ("csa", "s--")):
        rs = sorted((r for r in rows if r["allocator"] == alloc), key=lambda r: r["deadline_s"])
        ds = [r["deadline_s"] for r in rs]
        ax[0].plot(ds, [r["guc_time_s"] for r in rs], style, label=alloc.upper())
        ax[1].plot(ds, [100 * r["truancy"] for r in rs], style, label=alloc.upper())
        ax[2].plot(ds, [100 * r["accuracy"] for r in rs], style, label=alloc.upper())
        ax[3].plot(ds, [r["loss"] for r in rs], style, label=alloc.upper())
    ds = sorted({r["deadline_s"] for r in rows})
    ax[0].plot(ds, ds, ":", color="grey", label="deadline")
    ax[1].axhline(0, color="grey", ls=":")
    for a, title, ylabel in zip(ax, ("GUC time (fig. 3.6)", "truancy (fig. 3.7)",
                                     "accuracy (fig. 3.8a)", "loss (fig. 3.8b)"),
                                ("seconds", "% of deadline", "%", "cross-entropy"), strict=True):
        a.set_title(title)
        a.set_xlabel("deadline D (s)")
        a.set_ylabel(ylabel)
        a.legend()
    fig.suptitle(title or "DAB vs CSA, 3 local agents (emulated speeds 100/50/25 % CPU), "
                 "TwoNN MNIST-5k")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _fleet(testbed: Path | None, tmp: Path) -> Any:
    """LocalFleet's duty-cycled local agents, or the emulated testbed of `testbed`."""
    if testbed is None:
        return LocalFleet(tmp / "data", speeds=dict(SPEEDS))
    from deploy.testbed.bench import TestbedFleet

    return TestbedFleet(testbed)


def _sweep(client: Any, factors: list[float], rounds: int, target_s: float
           ) -> tuple[int, float, list[dict[str, Any]]]:
    """Size CSA's fixed total so that its GUC takes about `target_s`, then measure T_csa with
    a loose deadline; the sweep is D = f · T_csa. Returns (total, T_csa, one row per run)."""
    probe = run_task(client, task_spec("csa", 120.0, 1, 32))
    total = max(8, round(32 * target_s / max(probe["guc_time_s"], 0.1)))
    calib = run_task(client, task_spec("csa", 120.0, 1, total))
    t_csa = calib["guc_time_s"]
    print(f"CSA total {total} shards/round; T_csa = {t_csa:.2f} s", flush=True)
    rows = []
    for f in factors:
        d = f * t_csa
        for alloc in ("dab", "csa"):
            row = run_task(client, task_spec(alloc, d, rounds, total))
            row["factor"] = f
            rows.append(row)
            print(f"D={d:6.2f}s {alloc}: GUC {row['guc_time_s']:6.2f}s truancy "
                  f"{100 * row['truancy']:+6.1f}% acc {100 * row['accuracy']:.1f}% "
                  f"loss {row['loss']:.3f} shards/round {row['shards_per_round']:.1f}",
                  flush=True)
    return total, t_csa, rows


def _name_allocations(rows: list[dict[str, Any]], names: dict[str, str]) -> None:
    """Key each row's per-round allocations by learner name instead of id."""
    for row in rows:
        row["allocations"] = [{names.get(k, k): v for k, v in a.items()}
                              for a in row["allocations"]]


def shard_order(rows: list[dict[str, Any]], speeds: dict[str, float]) -> dict[str, Any]:
    """Issue 17 §1: in how many DAB rounds a slower learner (smaller ``speeds``: duty cycle or
    CPU share) took more shards than a faster one; each such round is listed."""
    bad = []
    rounds = 0
    for row in (r for r in rows if r["allocator"] == "dab"):
        for i, alloc in enumerate(row["allocations"]):
            rounds += 1
            got = {n: alloc.get(n, 0) for n in speeds}
            if any(speeds[a] < speeds[b] and got[a] > got[b] for a in got for b in got):
                bad.append({"deadline_s": row["deadline_s"], "round": i, "shards": got})
    return {"dab_rounds": rounds, "rounds_out_of_order": len(bad), "out_of_order": bad}


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    dab = sorted((r for r in rows if r["allocator"] == "dab"), key=lambda r: r["deadline_s"])
    csa = sorted((r for r in rows if r["allocator"] == "csa"), key=lambda r: r["deadline_s"])
    return {
        "dab_max_truancy": max(r["truancy"] for r in dab),
        "dab_max_round_truancy": max(max(r["round_truancies"]) for r in dab),
        "goal_dab_round_truancy_le_3pct": max(max(r["round_truancies"]) for r in dab) <= 0.03,
        "csa_truancy_tightest": csa[0]["truancy"], "dab_truancy_tightest": dab[0]["truancy"],
        "accuracy_gap_loosest_points": 100 * (dab[-1]["accuracy"] - csa[-1]["accuracy"]),
        "guc_time_ratio_tightest_csa_over_dab": csa[0]["guc_time_s"] / dab[0]["guc_time_s"],
        "goal_dab_truancy_le_3pct": max(r["truancy"] for r in dab) <= 0.03,
        "goal_accuracy_within_2_points_at_loosest":
            abs(dab[-1]["accuracy"] - csa[-1]["accuracy"]) <= 0.02
            or dab[-1]["accuracy"] >= csa[-1]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 deadlines and 2 rounds instead of 5 and 3")
    parser.add_argument("--target-s", type=float, default=6.0,
                        help="CSA GUC time to size the fixed total for (seconds)")
    parser.add_argument("--factors", default=None,
                        help="deadlines as multiples of T_csa, e.g. 0.6,1.4 (overrides --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per task")
    add_testbed_option(parser)
    add_out_dir(parser)
    args = parser.parse_args()
    out_dir = results_dir(args)
    factors = [0.6, 1.0, 1.4] if args.quick else [0.6, 0.75, 0.9, 1.1, 1.4]
    if args.factors:
        factors = [float(f) for f in args.factors.split(",")]
    rounds = args.rounds or (2 if args.quick else 3)
    started = time.monotonic()
    name = "testbed_dab_vs_csa" if args.testbed else "dab_vs_csa"
    with tempfile.TemporaryDirectory(prefix="dab-vs-csa-") as tmp, \
            _fleet(args.testbed, Path(tmp)) as fleet:
        fleet.start()
        speeds: dict[str, Any] = dict(SPEEDS)
        if args.testbed:
            from deploy.testbed.bench import TestbedFleet

            assert isinstance(fleet, TestbedFleet) and fleet.bed is not None
            speeds = {lr.name: lr.profile for lr in fleet.bed.learners}
        with fleet.client() as client:
            total, t_csa, rows = _sweep(client, factors, rounds, args.target_s)
            _name_allocations(rows, {str(lr["id"]): lr["name"] for lr in client.learners()})
    summary = _summarise(rows)
    summary["shard_order"] = shard_order(
        rows, {n: float(getattr(v, "cpu", v)) for n, v in speeds.items()})
    out = {
        "benchmark": name, "quick": args.quick, "speeds": speeds,
        "testbed": str(args.testbed) if args.testbed else None,
        "command": " ".join(["sudo" if args.testbed else "", ".venv/bin/python",
                             *sys.argv]).strip(),
        "csa_total_shards": total, "t_csa_s": t_csa, "rounds": rounds, "rows": rows,
        "summary": summary, "wall_s": time.monotonic() - started,
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "load_1m_at_end": os.getloadavg()[0]},
        "thesis_anchor": "tightest deadline: DAB +7 %, CSA +63 % (thesis 3.4.2.2)",
    }
    (out_dir / f"{name}.json").write_text(json.dumps(out, indent=2))
    title = (f"DAB vs CSA on the emulated testbed ({args.testbed.name}: "
             f"{len(speeds)} learners), TwoNN MNIST-5k" if args.testbed else None)
    plot(rows, out_dir / f"{name}.png", title)
    tightest = min(r["deadline_s"] for r in rows if r["allocator"] == "dab")
    print(f"{name}: tightest D={tightest:.2f}s truancy DAB "
          f"{100 * summary['dab_truancy_tightest']:+.1f}% vs CSA "
          f"{100 * summary['csa_truancy_tightest']:+.1f}% (CSA/DAB GUC time "
          f"{summary['guc_time_ratio_tightest_csa_over_dab']:.2f}x); DAB max truancy "
          f"{100 * summary['dab_max_truancy']:+.1f}% (goal <= 3%), worst single round "
          f"{100 * summary['dab_max_round_truancy']:+.1f}%; accuracy DAB-CSA at "
          f"loosest {summary['accuracy_gap_loosest_points']:+.1f} points; DAB rounds where a "
          f"slower learner took more shards: {summary['shard_order']['rounds_out_of_order']} of "
          f"{summary['shard_order']['dab_rounds']}")


if __name__ == "__main__":
    main()

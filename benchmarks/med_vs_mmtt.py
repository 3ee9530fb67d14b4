"""MED vs MMTT-Uncertain vs MMTT-Ideal (and equal split): the shape of thesis figs. 4.1–4.10.

MODEL-BASED SIMULATION, NOT LIVE AGENTS. Every learner's round is played out with the cost
model of eq. 4.2 in the state it is actually in: states are drawn each GUC from the learner's
heated-softmax distribution (heat 0.5, thesis 4.3.1), capabilities get ±5 % log-normal noise
per GUC, and a learner past its deadline halts and uploads what it trained (thesis 4.1). The
instances are `thesis_instance` (table 4.1 tasks, assumed per-state speeds, see docs/med.md).
Metrics are thesis 4.3 items 1–5 (`orchestrator.allocation.metrics`).

Sweeps as in thesis 4.3.1.1–2: learners 4→10 with 3 tasks (budget 300), and tasks 1→4 with
10 learners (deadlines +5 s, budget 200, the 4th task a copy of Fashion). Each point averages
`--trials` trials of 5 GUCs.

    .venv/bin/python benchmarks/med_vs_mmtt.py [--quick] [--trials K]
    .venv/bin/python benchmarks/med_vs_mmtt.py --live   # live agents, med_vs_mmtt_live.*
    sudo .venv/bin/python benchmarks/med_vs_mmtt.py \
        --testbed deploy/testbed/fleets/thesis-ch4-med.yaml   # testbed_med_vs_mmtt.*

Writes benchmarks/results/med_vs_mmtt.json and .png; prints a one-line summary last. With
`--testbed FLEET.yaml` (root; implies --live) the live jobs run on the emulated testbed
(docs/testbed.md: each agent in its own network namespace with a capped link, a CPU quota and
a memory limit; thesis 4.3.1 used ten Jetson Nanos) on the fleet's learners, one fleet for the
whole run, over the task counts of --live-tasks, and write
benchmarks/results/testbed_med_vs_mmtt.json and .png (rewritten after every seed, `partial`
until the last). `--merge-testbed A.json B.json ...` pools the seeds of several such runs
(each kept under 20 minutes) into one result, every statistic recomputed.

--live and --testbed train the Fashion task on Debian's Fashion-MNIST
(dataset-fashion-mnist); without it they stop with one line. The simulation trains nothing,
so it does not depend on the data. Live JSONs carry `data` (which data each task used),
`paired` (per-seed anchors, sign test, bootstrap interval) and `model_check` (eq. 4.3's
predicted vs measured round times, plans infeasible under 4.4b).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from outdir import add_out_dir, results_dir

from deploy.testbed.bench import add_testbed_option
from orchestrator.allocation.med import MedInstance, thesis_instance
from orchestrator.allocation.metrics import TaskRound, summarize
from orchestrator.allocation.mmtt import Method, plan

METHODS: tuple[Method, ...] = ("med", "mmtt-uncertain", "mmtt-ideal", "equal")
GUCS = 5
NOISE = 0.05
RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("average_training_time_s", "satisfaction_ratio", "average_task_fulfillment",
           "data_drop_rate", "occupancy")


def play_guc(inst: MedInstance, alloc: np.ndarray, states: np.ndarray, rnd: int,
             rng: np.random.Generator) -> list[TaskRound]:
    """One GUC of every task under `alloc` with learners in `states` (eq. 4.2 + halting)."""
    out = []
    for i, task in enumerate(inst.tasks):
        finish, busy, trained = [], [], 0.0
        for j in np.nonzero(alloc[i] > 0)[0]:
            w, k, d = inst.learners[j], int(states[j]), int(alloc[i, j])
            b = w.bandwidth[k] * math.exp(rng.normal(0, NOISE))
            c = w.compute[task.name][k] * math.exp(rng.normal(0, NOISE))
            down = (task.model_bytes + task.shard_bytes * d) / b
            train = task.iterations * task.shard_samples * d / c
            up = task.model_bytes / b
            if down + train <= task.deadline_s:
                done, frac = down + train + up, 1.0
            else:  # halt at the deadline, upload the partial update (thesis 4.1)
                frac = max(0.0, (task.deadline_s - down) / train)
                done = max(task.deadline_s, down) + up
            finish.append(done)
            busy.append(done)
            trained += frac * d * task.shard_samples
        total = task.shards * task.shard_samples
        out.append(TaskRound(task.name, rnd, task.deadline_s, max(finish, default=0.0), total,
                             min(trained, total), busy))
    return out


def trial(inst: MedInstance, seed: int, time_limit: float) -> dict[str, dict[str, float]]:
    """Every method on one instance for GUCS rounds with the same state draws."""
    rng = np.random.default_rng(seed)
    probs = np.array([w.state_probs for w in inst.learners])
    states = [np.array([rng.choice(probs.shape[1], p=p) for p in probs]) for _ in range(GUCS)]
    kw: dict[str, Any] = dict(solver="auto", time_limit_s=time_limit, mip_gap=1e-3,
                              soft_deadlines_if_infeasible=True, diagnose=False)
    fixed = {m: plan(inst, m, **kw).allocation for m in ("med", "mmtt-uncertain", "equal")}
    result: dict[str, dict[str, float]] = {}
    for method in METHODS:
        records: list[TaskRound] = []
        noise = np.random.default_rng(seed + 1)  # same capability noise for every method
        for g in range(GUCS):
            if method == "mmtt-ideal":  # knows the states of this GUC and reallocates
                alloc = plan(inst, method, actual_states=states[g].tolist(), **kw).allocation
            else:
                alloc = fixed[method]
            if alloc is None:
                raise RuntimeError(f"{method} found no allocation for seed {seed}")
            records.extend(play_guc(inst, alloc, states[g], g, noise))
        result[method] = summarize(records)
    return result


def sweep(points: list[tuple[str, int, dict[str, Any]]], trials: int,
          time_limit: float) -> list[dict[str, Any]]:
    rows = []
    for label, x, kwargs in points:
        per_method: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
        for t in range(trials):
            inst = thesis_instance(seed=1000 * x + t, **kwargs)
            for m, v in trial(inst, seed=t, time_limit=time_limit).items():
                per_method[m].append(v)
        row: dict[str, Any] = {"sweep": label, "x": x}
        for m in METHODS:
            row[m] = {}
            for key in METRICS:
                vals = [v[key] for v in per_method[m]]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                row[m][key] = {"mean": statistics.mean(vals),
                               "ci95": 1.96 * sd / math.sqrt(len(vals))}
        rows.append(row)
        med, unc, ide = (row[m] for m in ("med", "mmtt-uncertain", "mmtt-ideal"))
        print(f"{label} {x:2d}: time MED {med['average_training_time_s']['mean']:.2f}s "
              f"MMTT-U {unc['average_training_time_s']['mean']:.2f}s "
              f"MMTT-I {ide['average_training_time_s']['mean']:.2f}s | drop MED "
              f"{med['data_drop_rate']['mean']:.3f} MMTT-U {unc['data_drop_rate']['mean']:.3f} "
              f"MMTT-I {ide['data_drop_rate']['mean']:.3f}", flush=True)
    return rows


def rel(a: float, b: float) -> float | None:
    return None if b == 0 else (a - b) / b


def _relative(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[float | None]]]:
    """Thesis anchors: MED vs MMTT-Uncertain −10 % training time, −42 % data drop rate; MED
    within 32 % of MMTT-Ideal (training time). Per sweep, one value per point."""
    comp = {}
    for label in ("learners", "tasks"):
        rs = [r for r in rows if r["sweep"] == label]
        t_unc = [rel(r["med"]["average_training_time_s"]["mean"],
                     r["mmtt-uncertain"]["average_training_time_s"]["mean"]) for r in rs]
        d_unc = [rel(r["med"]["data_drop_rate"]["mean"],
                     r["mmtt-uncertain"]["data_drop_rate"]["mean"]) for r in rs]
        t_ide = [rel(r["med"]["average_training_time_s"]["mean"],
                     r["mmtt-ideal"]["average_training_time_s"]["mean"]) for r in rs]
        comp[label] = {
            "med_vs_uncertain_time": t_unc, "med_vs_uncertain_drop": d_unc,
            "med_vs_ideal_time": t_ide,
        }
    return comp


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 trials, fewer sweep points")
    ap.add_argument("--trials", type=int, default=None, help="trials per point (thesis: 40)")
    ap.add_argument("--time-limit", type=float, default=2.0, help="seconds per MILP solve")
    ap.add_argument("--live", action="store_true",
                    help="live local agents with stressors instead of the simulation "
                         "(benchmarks/med_vs_mmtt_live.py)")
    ap.add_argument("--live-learners", type=int, nargs="+", default=[4, 6],
                    help="--live: learner counts (3 tasks each)")
    ap.add_argument("--live-tasks", type=int, nargs="+", default=[1, 2],
                    help="--live: task counts on the largest fleet (3 is the learner sweep)")
    ap.add_argument("--live-rounds", type=int, default=3, help="--live: GUCs per job")
    ap.add_argument("--live-deadline", type=float, default=1.6,
                    help="--live: deadline of the 40 s tasks of table 4.1, scaled, seconds")
    ap.add_argument("--live-seeds", type=int, nargs="+", default=[0], help="--live: seeds")
    ap.add_argument("--job-timeout", type=float, default=900.0,
                    help="--testbed: seconds one multi-task job may run before it is cancelled")
    ap.add_argument("--merge-testbed", type=Path, nargs="+", default=None, metavar="JSON",
                    help="pool the seeds of several --testbed runs (each under the 20-minute "
                         "limit of one run) into one testbed_med_vs_mmtt.json / .png")
    add_testbed_option(ap)
    add_out_dir(ap)
    return ap


def _run_live_modes(args: argparse.Namespace, out_dir: Path) -> None:
    """--merge-testbed, --testbed or --live (the real Fashion-MNIST or a one-line stop)."""
    if args.merge_testbed:
        merge_testbed(args.merge_testbed, out_dir)
        return
    if args.live or args.testbed:
        from med_vs_mmtt_live import MissingData, fashion_dataset

        try:
            fashion_dataset()
        except MissingData as exc:  # one line, and stop: no synthetic stand-in
            sys.exit(f"med_vs_mmtt: {exc}")
    if args.testbed:
        run_testbed(args.testbed, args.live_tasks, rounds=args.live_rounds,
                    deadline_scale=args.live_deadline, seeds=args.live_seeds,
                    job_timeout_s=args.job_timeout, results=out_dir)
        return
    if args.live:
        from med_vs_mmtt_live import run_live

        run_live(args.live_learners, args.live_tasks, rounds=args.live_rounds,
                 deadline_scale=args.live_deadline, seeds=args.live_seeds, results=out_dir)


def main() -> None:
    args = _parser().parse_args()
    out_dir = results_dir(args)
    if args.merge_testbed or args.testbed or args.live:
        _run_live_modes(args, out_dir)
        return
    trials = args.trials or (3 if args.quick else 20)
    learners = [4, 7, 10] if args.quick else [4, 5, 6, 7, 8, 9, 10]
    tasks = [1, 3, 4] if args.quick else [1, 2, 3, 4]
    points = [("learners", n, {"n_learners": n, "n_tasks": 3, "budget": 300.0})
              for n in learners]
    points += [("tasks", m, {"n_learners": 10, "n_tasks": m, "budget": 200.0,
                             "deadline_extra_s": 5.0}) for m in tasks]
    rows = sweep(points, trials, args.time_limit)

    comp = _relative(rows)
    out = {"benchmark": "med_vs_mmtt", "kind": "model-based simulation (not live agents)",
           "trials": trials, "gucs": GUCS, "heat": 0.5, "noise_sigma": NOISE,
           "data": "none: every round is played out with the cost model (eq. 4.2) on "
                   "thesis_instance's table 4.1 sizes and assumed speeds; no sample is "
                   "trained, so Fashion-MNIST vs synthetic images does not enter",
           "rows": rows, "relative": comp}
    (out_dir / "med_vs_mmtt.json").write_text(json.dumps(out, indent=2))
    plot(rows, out_dir / "med_vs_mmtt.png")
    lt = comp["learners"]
    best_t = min(v for v in lt["med_vs_uncertain_time"] if v is not None)
    best_d = min(v for v in lt["med_vs_uncertain_drop"] if v is not None)
    worst_i = max(v for v in lt["med_vs_ideal_time"] if v is not None)
    print(f"med_vs_mmtt (simulation, {trials} trials): MED vs MMTT-Uncertain training time "
          f"{best_t:+.1%} (best), drop rate {best_d:+.1%} (best); MED vs MMTT-Ideal time "
          f"{worst_i:+.1%} (worst), learner sweep")


def _preloading(fleet_path: Path) -> Any:
    """The fleet of `fleet_path`, its agents importing torch before they enroll.

    LocalFleet does the same (orchestrator/local/fleet.py, `spawn_agent`): importing torch is a
    one-off cost of a fresh process (30–60 s under a Jetson's scaled CPU quota), not part of
    the experiment, and paid inside the first job it would eat the job's subset-benchmarking
    timeout. A fleet file with its own agent command is used as written.
    """
    from deploy.testbed.fleet import load_fleet
    from deploy.testbed.testbed import state_dir_for

    spec = load_fleet(fleet_path)
    if spec.agent.command is not None:
        return spec
    argv = ["{python}", "-m", "plexus.cli", "agent", "run", "--orchestrator", "{url}",
            # The testbed writes the join token there (mode 600), as its default command uses.
            "--join-token-file", str(state_dir_for(spec.prefix) / "join-token"),
            "--name", "{name}", "--preload"]
    return dataclasses.replace(spec, agent=dataclasses.replace(spec.agent, command=argv))


def run_testbed(fleet_path: Path, task_counts: list[int], *, rounds: int,
                deadline_scale: float, seeds: list[int], job_timeout_s: float,
                results: Path = RESULTS) -> None:
    """The live jobs (med_vs_mmtt_live) on the emulated testbed of `fleet_path` (needs root).

    Every learner of the fleet takes part; each task count of `task_counts` (1–3, thesis
    table 4.1 in order) is one point with every allocator and seed on the same fleet. Writes
    testbed_med_vs_mmtt.json / .png and prints a one-line summary last. Times are seconds.
    """
    from med_vs_mmtt_live import (
        ALLOCATORS,
        table_41,
    )

    from deploy.testbed.bench import TestbedFleet

    started = time.monotonic()
    name = "testbed_med_vs_mmtt"
    rows: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    ctx = {"name": name, "fleet_path": fleet_path, "seeds": seeds, "profiles": profiles,
           "rounds": rounds, "deadline_scale": deadline_scale, "started": started,
           "results": results}

    with TestbedFleet(_preloading(fleet_path)) as fleet:
        fleet.start(timeout_s=600.0)
        assert fleet.bed is not None
        names = [lr.name for lr in fleet.bed.learners]
        profiles.update({lr.name: lr.profile for lr in fleet.bed.learners})
        print(f"testbed up: {len(names)} learners enrolled after "
              f"{time.monotonic() - started:.0f} s", flush=True)
        with fleet.client() as client:
            for m in task_counts:
                tasks = table_41(deadline_scale, rounds)[:m]
                for seed in seeds:
                    rows += [_testbed_job(client, alloc, tasks, names, seed, job_timeout_s)
                             for alloc in ALLOCATORS]
                    _write_testbed(ctx, rows, done=False)
    comp = _write_testbed(ctx, rows, done=True)
    from med_vs_mmtt_live import anchor_line

    print(f"{name}: MED " + anchor_line(comp))


def _write_testbed(ctx: dict[str, Any], rows: list[dict[str, Any]], done: bool
                   ) -> list[dict[str, Any]]:
    """run_testbed's JSON / PNG from the rows so far; written after every seed, so a run cut
    at its time limit keeps the seeds it finished (`partial` until the last)."""
    from med_vs_mmtt_live import data_used, model_check, paired_anchors, summarise, table_41
    from med_vs_mmtt_live import plot as plot_live

    name, fleet_path, seeds = ctx["name"], ctx["fleet_path"], ctx["seeds"]
    profiles, rounds, deadline_scale = ctx["profiles"], ctx["rounds"], ctx["deadline_scale"]
    started, results = ctx["started"], ctx["results"]
    summary = summarise(rows)
    comp = _relative_live(summary)
    results.mkdir(parents=True, exist_ok=True)
    done_seeds = sorted({r["seed"] for r in rows})
    out = {"benchmark": name, "kind": "live agents with stressors on the emulated testbed",
           "testbed": str(fleet_path), "command": " ".join(["sudo", ".venv/bin/python",
                                                            *sys.argv]),
           "partial": not done, "seeds_asked": seeds,
           "profiles": profiles, "rounds": rounds, "deadline_scale_s": deadline_scale,
           "seeds": done_seeds,
           "tasks": table_41(deadline_scale, rounds),
           "data": data_used(table_41(deadline_scale, rounds)), "summary": summary,
           "relative": comp, "paired": paired_anchors(rows),
           "model_check": model_check({f"{r['learners']}x{r['tasks']}/{r['seed']}/"
                                       f"{r['allocator']}": r["records"] for r in rows}),
           "wall_s": time.monotonic() - started,
           "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                       "load_1m_at_end": os.getloadavg()[0]},
           "thesis_anchor": "MED vs MMTT-Uncertain: -10 % training time, -42 % data drop "
                            "rate; MED within 32 % of MMTT-Ideal (thesis 4.3)",
           "rows": [{k: v for k, v in r.items() if k != "records"} for r in rows],
           "records": {f"{r['learners']}x{r['tasks']}/{r['seed']}/{r['allocator']}":
                       r["records"] for r in rows}}
    (results / f"{name}.json").write_text(json.dumps(out, indent=2))
    plot_live(summary, results / f"{name}.png",
              f"MED vs MMTT on the emulated testbed ({fleet_path.name}: {len(profiles)} "
              f"learners), {len(done_seeds)} seeds, stressors heat 0.5")
    return comp


def merge_testbed(paths: list[Path], results: Path) -> None:
    """One testbed result from several `--testbed` runs of the same fleet, tasks, rounds and
    deadlines on different seeds: rows and records pooled, every statistic recomputed."""
    from med_vs_mmtt_live import model_check, paired_anchors, summarise
    from med_vs_mmtt_live import plot as plot_live

    parts = [json.loads(p.read_text()) for p in paths]
    same = ("rounds", "deadline_scale_s", "tasks", "profiles")
    for part in parts[1:]:
        for key in same:
            if part[key] != parts[0][key]:
                raise SystemExit(f"--merge-testbed: the runs differ in {key!r}")
    seeds = [s for part in parts for s in part["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--merge-testbed: a seed is in two runs ({sorted(seeds)})")
    records = {k: v for part in parts for k, v in part["records"].items()}
    rows = [{**r, "records": records[f"{r['learners']}x{r['tasks']}/{r['seed']}/"
                                     f"{r['allocator']}"]} for part in parts for r in part["rows"]]
    summary = summarise(rows)
    name = "testbed_med_vs_mmtt"
    out = {**{k: v for k, v in parts[0].items()
              if k not in ("command", "wall_s", "machine", "partial", "seeds_asked")},
           "seeds": sorted(seeds), "summary": summary, "relative": _relative_live(summary),
           "paired": paired_anchors(rows), "model_check": model_check(records),
           "runs": [{"file": str(p), "command": part.get("command"), "seeds": part["seeds"],
                     "wall_s": part.get("wall_s"), "machine": part.get("machine")}
                    for p, part in zip(paths, parts, strict=True)],
           "rows": [{k: v for k, v in r.items() if k != "records"} for r in rows],
           "records": records}
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(out, indent=2))
    plot_live(summary, results / f"{name}.png",
              f"MED vs MMTT on the emulated testbed ({Path(parts[0]['testbed']).name}: "
              f"{len(parts[0]['profiles'])} learners), {len(seeds)} seeds, stressors heat 0.5")
    print(f"{name}: merged {len(paths)} runs, seeds {sorted(seeds)}")


def _testbed_job(client: Any, alloc: str, tasks: list[Any], names: list[str], seed: int,
                 timeout_s: float) -> dict[str, Any]:
    """One live job of `run_testbed` as a row; prints its metrics."""
    from med_vs_mmtt_live import METRICS as LIVE_METRICS
    from med_vs_mmtt_live import run_job

    m = len(tasks)
    t0 = time.monotonic()
    job = run_job(client, alloc, tasks, names, seed, timeout_s=timeout_s)
    got = job["metrics"] or {}
    print(f"{len(names)} learners x {m} tasks seed {seed} {alloc}: "
          f"{job['state']} ({time.monotonic() - t0:.0f} s) " + " ".join(
              f"{k}={got.get(k, float('nan')):.3f}" for k in LIVE_METRICS),
          flush=True)
    return {"learners": len(names), "tasks": m, "seed": seed,
            "allocator": alloc, "state": job["state"],
            "reason": job["reason"], "wall_s": time.monotonic() - t0,
            "metrics": {k: got.get(k) for k in LIVE_METRICS},
            "records": job["records"]}


def _relative_live(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MED against MMTT-Uncertain and MMTT-Ideal, relative, for each point of `summary`."""
    from med_vs_mmtt_live import rel as rel_live

    comp = []
    for e in summary:
        med, unc, ide = e["med"], e["mmtt_uncertain"], e["mmtt_ideal"]
        comp.append({"learners": e["learners"], "tasks": e["tasks"],
                     "med_vs_uncertain_time": rel_live(med["average_training_time_s"],
                                                       unc["average_training_time_s"]),
                     "med_vs_uncertain_drop": rel_live(med["data_drop_rate"],
                                                       unc["data_drop_rate"]),
                     "med_vs_ideal_time": rel_live(med["average_training_time_s"],
                                                   ide["average_training_time_s"])})
    return comp


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ["avg training time (s)", "satisfaction ratio", "avg task fulfillment",
              "avg data drop rate", "avg occupancy"]
    fig, axes = plt.subplots(2, 5, figsize=(20, 7))
    for r_i, label in enumerate(("learners", "tasks")):
        rs = [r for r in rows if r["sweep"] == label]
        xs = [r["x"] for r in rs]
        for c_i, key in enumerate(METRICS):
            ax = axes[r_i, c_i]
            for m, mark in zip(METHODS, "o^sx", strict=True):
                ys = [r[m][key]["mean"] for r in rs]
                es = [r[m][key]["ci95"] for r in rs]
                ax.errorbar(xs, ys, yerr=es, marker=mark, capsize=3, label=m)
            ax.set_xlabel(f"number of {label}")
            ax.set_title(titles[c_i])
            ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle("MED vs MMTT — model-based simulation (cost model eq. 4.2, heated-softmax "
                 "states, halting), not live agents")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()

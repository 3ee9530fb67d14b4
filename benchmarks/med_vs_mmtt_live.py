"""MED vs MMTT on live local agents with stressors: `benchmarks/med_vs_mmtt.py --live`.

A real orchestrator and N real agent processes on loopback (orchestrator.local.fleet.LocalFleet);
each allocator runs one multi-task job (orchestrator/runs/jobs.py) on the same fleet with the
same seed, hence the same heated-softmax state distributions (heat 0.5), prices and believed
states: per-state subset benchmarking, learners drawing their stressor state every GUC and
training under it, halting at T_i. Metrics (thesis 4.3 items 1–5) are the job's own, computed
from its recorded rounds.

The three tasks of thesis table 4.1 sized to a 2-core machine: MNIST_FF (ThreeNN, μ = 2),
MNIST_CN (ConvNet) and Fashion (FashionNet on the real Fashion-MNIST of Debian's
dataset-fashion-mnist; without it the benchmark stops with one line, never falling back to
synthetic data), shards of 50 samples, D = 12 / 12 / 4 shards (thesis 60 / 60 / 20), deadlines
in the thesis's 55 : 40 : 40 proportion, Adam at lr 1e-4 ... 1e-3. Prices are drawn per learner
from N(1, 0.5) bounded to [0.1, 1.5], the budget keeps the thesis's 300 $ per 140 shards and
D_l = 1 (thesis 4.3.1).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ALLOCATORS = ("med", "mmtt_uncertain", "mmtt_ideal", "equal")
METRICS = ("average_training_time_s", "satisfaction_ratio", "average_task_fulfillment",
           "data_drop_rate", "occupancy")
SHARD = 50


def table_41(deadline_scale: float, rounds: int) -> list[dict[str, Any]]:
    """Thesis table 4.1 on this machine: deadlines 55 : 40 : 40 times `deadline_scale` / 40."""

    def spec(name: str, model: str, dataset: dict[str, Any], iterations: int,
             deadline_s: float, shards: int) -> dict[str, Any]:
        return {"name": name, "model": model, "dataset": dataset,
                "partition": {"shard_size": SHARD},
                "training": {"optimizer": "adam", "lr": 1e-3, "iterations": iterations},
                "sync": {"deadline_s": round(deadline_s, 3), "grace_s": 2.0, "rounds": rounds,
                         "benchmark_shards": 2, "total_shards": shards}}

    s = deadline_scale / 40.0
    return [spec("mnist_ff", "threenn", {"name": "mnist5k"}, 2, 55 * s, 12),
            spec("mnist_cn", "convnet", {"name": "mnist5k"}, 1, 40 * s, 12),
            spec("fashion", "fashionnet", fashion_dataset(), 1, 40 * s, 4)]


class MissingData(RuntimeError):
    """A task's real data is not installed on this machine (no synthetic stand-in is used)."""


def fashion_dataset() -> dict[str, Any]:
    """The Fashion task's data: the full Fashion-MNIST Debian ships (dataset-fashion-mnist).

    Raises MissingData when it is not installed: the thesis's Fashion task on synthetic
    images measured nothing about Fashion-MNIST, so the benchmark stops instead.
    """
    from plexus.datasets import FASHION_MNIST_DIR

    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        raise MissingData(f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR}: "
                          "apt-get install dataset-fashion-mnist (no synthetic fallback)")
    return {"name": "fashion_mnist"}


def data_used(tasks: list[dict[str, Any]]) -> dict[str, str]:
    """Which data each task trained on, for the JSON and the docs."""
    names = {"mnist5k": "MNIST-5k (the 5,000-sample MNIST subset the project ships)",
             "fashion_mnist": "Fashion-MNIST (Debian dataset-fashion-mnist, 60,000 training "
                              "images)"}
    return {t["name"]: names.get(t["dataset"]["name"], t["dataset"]["name"]) for t in tasks}


def prices(names: list[str], seed: int) -> dict[str, float]:
    """Thesis 4.3.1: N(1.0, variance 0.5) bounded to [0.1, 1.5], one per learner."""
    rng = np.random.default_rng(seed)
    return {n: float(np.clip(rng.normal(1.0, 0.5 ** 0.5), 0.1, 1.5)) for n in names}


def run_job(client: Any, allocator: str, tasks: list[dict[str, Any]], names: list[str],
            seed: int, timeout_s: float = 300.0) -> dict[str, Any]:
    budget = 300.0 / 140.0 * sum(t["sync"]["total_shards"] for t in tasks)
    job = client.submit_job({"name": f"{allocator}-{len(names)}x{len(tasks)}",
                             "allocator": allocator, "budget": budget, "min_shards": 1,
                             "prices": prices(names, seed), "seed": seed,
                             "learners": len(names), "tasks": tasks})
    end = time.monotonic() + timeout_s
    while (job := client.job(job["id"]))["state"] in ("pending", "running"):
        if time.monotonic() > end:
            client.cancel_job(job["id"])
            raise TimeoutError(f"job {job['id']} ({allocator}) ran past {timeout_s} s")
        time.sleep(0.5)
    ended: dict[str, Any] = job
    return ended


def point(n_learners: int, n_tasks: int, *, rounds: int, deadline_scale: float, seeds: list[int],
          log: Any) -> list[dict[str, Any]]:
    """Start a fleet of `n_learners` agents and run every allocator on it for each seed."""
    from orchestrator.local.fleet import LocalFleet

    names = [f"w{i}" for i in range(n_learners)]
    tasks = table_41(deadline_scale, rounds)[:n_tasks]
    rows = []
    with tempfile.TemporaryDirectory(prefix="med-live-") as tmp:
        fleet = LocalFleet(Path(tmp) / "data", speeds=dict.fromkeys(names, 1.0))
        try:
            fleet.start()
            with fleet.client() as client:
                for seed in seeds:
                    for alloc in ALLOCATORS:
                        t0 = time.monotonic()
                        job = run_job(client, alloc, tasks, names, seed)
                        m = job["metrics"] or {}
                        rows.append({"learners": n_learners, "tasks": n_tasks, "seed": seed,
                                     "allocator": alloc, "state": job["state"],
                                     "reason": job["reason"], "wall_s": time.monotonic() - t0,
                                     "metrics": {k: m.get(k) for k in METRICS},
                                     "records": job["records"]})
                        log(f"{n_learners} learners x {n_tasks} tasks seed {seed} {alloc}: "
                            f"{job['state']} " + " ".join(
                                f"{k}={m.get(k, float('nan')):.3f}" for k in METRICS))
        finally:
            fleet.stop()
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of each metric per (learners, tasks, allocator) over seeds."""
    out = []
    keys = sorted({(r["learners"], r["tasks"]) for r in rows})
    for n, m in keys:
        entry: dict[str, Any] = {"learners": n, "tasks": m}
        for alloc in ALLOCATORS:
            got = [r for r in rows if (r["learners"], r["tasks"], r["allocator"]) == (n, m, alloc)
                   and r["state"] == "finished"]
            entry[alloc] = {k: statistics.fmean(r["metrics"][k] for r in got) if got else None
                            for k in METRICS}
        out.append(entry)
    return out


def plot(summary: list[dict[str, Any]], path: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6))
    labels = [f"{e['learners']}L×{e['tasks']}T" for e in summary]
    x = np.arange(len(summary))
    width = 0.8 / len(ALLOCATORS)
    for ax, metric in zip(axes, METRICS, strict=True):
        for a, alloc in enumerate(ALLOCATORS):
            ys = [e[alloc][metric] if e[alloc][metric] is not None else np.nan for e in summary]
            ax.bar(x + (a - 1.5) * width, ys, width, label=alloc)
        ax.set_xticks(x, labels, rotation=30, fontsize=8)
        ax.set_title(metric.replace("_", " "), fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "MED vs MMTT on live local agents with stressors (heat 0.5)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rel(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return (a - b) / b


def run_live(learners: list[int], tasks: list[int], *, rounds: int, deadline_scale: float,
             seeds: list[int], results: Path) -> None:
    """The live sweep; writes med_vs_mmtt_live.json / .png and prints a summary line last."""
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    points = [(n, 3) for n in learners] + [(max(learners), m) for m in tasks if m != 3]
    for n, m in points:
        rows += point(n, m, rounds=rounds, deadline_scale=deadline_scale, seeds=seeds,
                      log=lambda line: print(line, flush=True))
    summary = summarise(rows)
    comp = []
    for e in summary:
        med, unc, ide = e["med"], e["mmtt_uncertain"], e["mmtt_ideal"]
        comp.append({"learners": e["learners"], "tasks": e["tasks"],
                     "med_vs_uncertain_time": rel(med["average_training_time_s"],
                                                  unc["average_training_time_s"]),
                     "med_vs_uncertain_drop": rel(med["data_drop_rate"], unc["data_drop_rate"]),
                     "med_vs_ideal_time": rel(med["average_training_time_s"],
                                              ide["average_training_time_s"])})
    results.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "med_vs_mmtt_live", "kind": "live local agents with stressors",
           "rounds": rounds, "deadline_scale_s": deadline_scale, "seeds": seeds,
           "tasks": table_41(deadline_scale, rounds),
           "data": data_used(table_41(deadline_scale, rounds)),
           "summary": summary, "relative": comp, "paired": paired_anchors(rows),
           "model_check": model_check({f"{r['learners']}x{r['tasks']}/{r['seed']}/"
                                       f"{r['allocator']}": r["records"] for r in rows}),
           "wall_s": time.monotonic() - started,
           "rows": [{k: v for k, v in r.items() if k != "records"} for r in rows],
           "records": {f"{r['learners']}x{r['tasks']}/{r['seed']}/{r['allocator']}":
                       r["records"] for r in rows}}
    (results / "med_vs_mmtt_live.json").write_text(json.dumps(out, indent=2))
    plot(summary, results / "med_vs_mmtt_live.png")
    print("med_vs_mmtt --live: MED " + anchor_line(comp))


def anchor_line(comp: list[dict[str, Any]]) -> str:
    """The anchors per point (MED vs MMTT-U time and drop rate, vs MMTT-I time), one line."""
    parts = []
    for c in comp:
        fmt = [f"{v:+.0%}" if v is not None else "n/a" for v in
               (c["med_vs_uncertain_time"], c["med_vs_uncertain_drop"], c["med_vs_ideal_time"])]
        parts.append(f"{c['learners']}Lx{c['tasks']}T time vs U {fmt[0]}, drop vs U {fmt[1]}, "
                     f"time vs I {fmt[2]}")
    return "; ".join(parts)


def model_check(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """How well eq. 4.3 (on SB's per-state rates) predicted the live rounds.

    `infeasible`: of the plans of each model-based allocator (one per job and GUC), how many
    had no allocation within the deadlines (4.4b) and were re-solved without them.
    `round_ratio`: expected delay / measured duration per task round; `learner_*`: per learner,
    eq. 4.3's total, transfer and training parts over the call's seconds, the agent's
    download seconds and its training seconds (records carry `learner_timing`); `in_state_*`:
    the same with SB's rates in the state the learner drew (MMTT-Ideal's rounds only, where
    the state is revealed). Medians with the 10th and 90th percentiles.
    """
    def stats(xs: list[float]) -> dict[str, float | int | None]:
        if not xs:
            return {"n": 0, "median": None, "p10": None, "p90": None}
        a = np.asarray(xs)
        return {"n": len(xs), "median": float(np.median(a)),
                "p10": float(np.quantile(a, 0.1)), "p90": float(np.quantile(a, 0.9))}

    plans: dict[str, dict[tuple[str, int], bool]] = {}
    rounds: dict[str, list[float]] = {}
    parts: dict[str, list[float]] = {"learner_total": [], "learner_transfer": [],
                                     "learner_train": [], "in_state_transfer": [],
                                     "in_state_train": []}
    for key, recs in records.items():
        alloc = key.rsplit("/", 1)[-1]
        for r in recs:
            notes = (r.get("solver") or {}).get("notes") or []
            if alloc != "equal":
                plans.setdefault(alloc, {})[(key, r["round"])] = any(
                    "re-solved without 4.4b" in n for n in notes)
            if r.get("expected_delay_s") and r["duration_s"] > 0:
                rounds.setdefault(r["task"], []).append(r["expected_delay_s"] / r["duration_s"])
            for t in (r.get("learner_timing") or {}).values():
                for part, pred, meas in (("learner_total", "expected_s", "measured_s"),
                                         ("learner_transfer", "expected_transfer_s",
                                          "download_s"),
                                         ("learner_train", "expected_train_s", "train_s"),
                                         ("in_state_transfer", "in_state_transfer_s",
                                          "download_s"),
                                         ("in_state_train", "in_state_train_s", "train_s")):
                    if t.get(meas) and t[meas] > 0 and t.get(pred) is not None:
                        parts[part].append(t[pred] / t[meas])
    infeasible = {a: {"infeasible": sum(p.values()), "plans": len(p),
                      "share": sum(p.values()) / len(p) if p else None}
                  for a, p in plans.items()}
    every = [v for p in plans.values() for v in p.values()]
    infeasible["all_model_based"] = {"infeasible": sum(every), "plans": len(every),
                                     "share": sum(every) / len(every) if every else None}
    return {"infeasible_under_4_4b": infeasible,
            "round_ratio": {"all": stats([q for v in rounds.values() for q in v]),
                            **{t: stats(v) for t, v in rounds.items()}},
            **{k: stats(v) for k, v in parts.items()}}


def paired_anchors(rows: list[dict[str, Any]], resamples: int = 4000) -> list[dict[str, Any]]:
    """Per point, per thesis anchor: the per-seed relative differences (paired: same seed,
    same fleet, same distributions and prices), a two-sided sign test over the seeds, and a
    bootstrap 95 % interval of the relative difference of the means (seeds resampled)."""
    from math import comb

    anchors = (("med_vs_uncertain_time", "mmtt_uncertain", "average_training_time_s"),
               ("med_vs_uncertain_drop", "mmtt_uncertain", "data_drop_rate"),
               ("med_vs_ideal_time", "mmtt_ideal", "average_training_time_s"))
    out = []
    for n, m in sorted({(r["learners"], r["tasks"]) for r in rows}):
        got = {(r["seed"], r["allocator"]): r["metrics"] for r in rows
               if (r["learners"], r["tasks"]) == (n, m) and r["state"] == "finished"}
        entry: dict[str, Any] = {"learners": n, "tasks": m}
        for name, other, metric in anchors:
            seeds = sorted(s for s, a in got if a == "med" and (s, other) in got)
            a = np.array([got[(s, "med")][metric] for s in seeds], dtype=float)
            b = np.array([got[(s, other)][metric] for s in seeds], dtype=float)
            lower, higher = int((a < b).sum()), int((a > b).sum())
            k, tries = min(lower, higher), lower + higher
            p = min(1.0, 2 * sum(comb(tries, i) for i in range(k + 1)) / 2 ** tries) \
                if tries else None
            rng = np.random.default_rng(0)
            boot = []
            for _ in range(resamples if len(seeds) > 1 else 0):
                pick = rng.integers(len(seeds), size=len(seeds))
                if b[pick].mean() > 0:
                    boot.append(a[pick].mean() / b[pick].mean() - 1)
            entry[name] = {
                "seeds": seeds, "med": a.tolist(), other: b.tolist(),
                "per_seed": [float(x / y - 1) if y > 0 else None for x, y in zip(a, b,
                                                                               strict=True)],
                "relative": float(a.mean() / b.mean() - 1) if len(seeds) and b.mean() > 0
                else None,
                "med_lower_in": lower, "med_higher_in": higher, "sign_test_p": p,
                "bootstrap_ci95": [float(np.quantile(boot, 0.025)),
                                   float(np.quantile(boot, 0.975))] if boot else None}
        out.append(entry)
    return out

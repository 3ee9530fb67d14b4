"""Staleness handlers side by side in 001's setting (§5): none, direct, poly, dcasgd, inversion.

For each Dirichlet α, staleness τ (rounds) and seed, one run per handler in the simulator
(``orchestrator.simulation.stale_rounds``): the top clients of one class lag τ rounds; plus
one run without staleness (the upper line). Reports the affected class's and the overall
accuracy per round and at the end, the rounds each handler needs to reach direct
aggregation's final affected-class accuracy, the inversion's cost per update, the privacy
proxy (nearest-neighbour distance of D_rec to the client's real samples) and the paper's
fig. 7 (relative L1 error of the estimated fresh update vs the true one, DC-ASGD vs
inversion, as τ grows). JSON + PNG.

    python benchmarks/staleness.py                # full: 001's setting (hours of CPU)
    python benchmarks/staleness.py --reduced      # what docs/results.md shows (see there)
    python benchmarks/staleness.py --quick        # proves it runs (benchmarks/results/quick)
    python benchmarks/staleness.py --fig7-only --rounds 80   # fig. 7 alone, 001's τ range
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from outdir import add_out_dir, results_dir
from subset_benchmarking import interval

from orchestrator.simulation.stale_rounds import (
    StaleRoundsConfig,
    StaleRun,
    estimation_errors,
    run_stale_rounds,
)
from plexus.spec import DatasetSpec

HANDLERS = ("direct", "poly", "dcasgd", "inversion")
STALENESS_OF = {"direct": "none", "poly": "poly", "dcasgd": "dcasgd", "inversion": "inversion"}
ANCHORS = {"table3_tau40": {"inversion": 0.777, "direct": 0.739, "dcasgd": 0.737,
                            "less_training_time": 0.28},
           "fig7": "inversion up to 50 % lower estimation error than DC-ASGD"}

# name: (clients, affected, train_samples, rounds, lr, epochs, iterations, taus, alphas, seeds)
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"clients": 100, "affected": 10, "train_samples": None, "rounds": 400, "lr": 0.02,
             "epochs": 5, "iterations": 200, "taus": [10, 20, 40], "alphas": [0.1, 1.0],
             "seeds": 3, "fig7_taus": [0, 5, 10, 20, 40, 60]},
    "reduced": {"clients": 20, "affected": 2, "train_samples": 1200, "rounds": 24, "lr": 0.15,
                "epochs": 1, "iterations": 20, "taus": [5, 10], "alphas": [0.1], "seeds": 3,
                "fig7_taus": [0, 2, 5, 10, 15]},
    "quick": {"clients": 10, "affected": 1, "train_samples": 400, "rounds": 5, "lr": 0.1,
              "epochs": 1, "iterations": 4, "taus": [2], "alphas": [0.1], "seeds": 1,
              "fig7_taus": [0, 2]},
}


def _config(args: argparse.Namespace, p: dict[str, Any], alpha: float, tau: int, seed: int,
            handler: str) -> StaleRoundsConfig:
    params: dict[str, float] = {}
    if handler == "inversion":
        params = {"iterations": p["iterations"], "threshold": 1, "fraction": args.fraction}
    elif handler == "poly":
        params = {"a": 0.5}
    elif handler == "dcasgd":
        params = {"c": args.dcasgd_c}
    return StaleRoundsConfig(
        seed=seed, clients=p["clients"], alpha=alpha, tau=tau, rounds=p["rounds"],
        affected_class=args.affected_class, affected_clients=p["affected"],
        dataset=DatasetSpec(name=args.dataset), train_samples=p["train_samples"], lr=p["lr"],
        epochs=p["epochs"], drift=args.drift, eval_samples=args.eval_samples,
        staleness=STALENESS_OF.get(handler, "none"),
        staleness_params=params, threads=args.threads)


def rounds_to(curve: list[float], target: float) -> int | None:
    """1-based round at which ``curve`` first reaches ``target`` (None: never)."""
    for i, v in enumerate(curve):
        if v >= target - 1e-12:
            return i + 1
    return None


def _summary(run: StaleRun, wall_s: float) -> dict[str, Any]:
    return {"final_accuracy": run.accuracy[-1], "final_affected": run.affected_accuracy[-1],
            "accuracy": run.accuracy, "affected_accuracy": run.affected_accuracy,
            "handler": run.handler, "privacy": run.privacy, "wall_s": wall_s}


_UNSTALE: dict[tuple[float, int], tuple[StaleRun, float]] = {}


def one_cell(args: argparse.Namespace, p: dict[str, Any], alpha: float, tau: int,
             seed: int) -> dict[str, Any]:
    """Every handler (and no staleness) at one (α, τ, seed)."""
    cell: dict[str, Any] = {"alpha": alpha, "tau": tau, "seed": seed, "runs": {}}
    for handler in ("no_staleness", *HANDLERS):
        cfg = _config(args, p, alpha, 0 if handler == "no_staleness" else tau, seed, handler)
        t0 = time.perf_counter()
        if handler == "no_staleness":  # the same run for every τ: run it once per (α, seed)
            key = (alpha, seed)
            if key not in _UNSTALE:
                _UNSTALE[key] = (run_stale_rounds(cfg, keep_history=True),
                                 time.perf_counter() - t0)
            run, wall = _UNSTALE[key]
        else:
            run = run_stale_rounds(cfg)
            wall = time.perf_counter() - t0
        cell["runs"][handler] = _summary(run, wall)
        print(f"  α={alpha} τ={tau} seed={seed} {handler:13s} affected "
              f"{run.affected_accuracy[-1]:.3f} overall {run.accuracy[-1]:.3f}", flush=True)
    target = cell["runs"]["direct"]["final_affected"]
    direct_rounds = rounds_to(cell["runs"]["direct"]["affected_accuracy"], target)
    for r in cell["runs"].values():
        r["rounds_to_direct_final"] = rounds_to(r["affected_accuracy"], target)
        got = r["rounds_to_direct_final"]
        r["time_ratio_vs_direct"] = (got / direct_rounds) if got and direct_rounds else None
    inv = cell["runs"]["inversion"]["final_affected"]
    cell["inversion_beats_all_on_affected"] = all(
        inv > cell["runs"][h]["final_affected"] for h in ("direct", "poly", "dcasgd"))
    return cell


def over_seeds(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (α, τ): each handler's final affected-class and overall accuracy as the mean with a
    95 % interval over the seeds, and in how many seeds inversion beat each other handler on
    the affected class (a count, not a ratio: a handler can end at 0 on that class)."""
    rows = []
    for alpha, tau in sorted({(c["alpha"], c["tau"]) for c in cells}):
        group = [c for c in cells if (c["alpha"], c["tau"]) == (alpha, tau)]
        handlers = {
            h: {"affected": interval([c["runs"][h]["final_affected"] for c in group]),
                "overall": interval([c["runs"][h]["final_accuracy"] for c in group])}
            for h in ("no_staleness", *HANDLERS)}
        beats = {h: sum(c["runs"]["inversion"]["final_affected"]
                        > c["runs"][h]["final_affected"] for c in group)
                 for h in ("direct", "poly", "dcasgd")}
        rows.append({"alpha": alpha, "tau": tau, "seeds": len(group), "handlers": handlers,
                     "inversion_beats_on_affected": beats})
    return rows


def fig7(args: argparse.Namespace, p: dict[str, Any], alpha: float, seed: int
         ) -> dict[str, Any]:
    """Estimation error vs τ on the trajectory of a run without staleness."""
    cfg = _config(args, p, alpha, 0, seed, "no_staleness")
    cached = _UNSTALE.get((alpha, seed))
    t0 = time.perf_counter()
    history = (cached[0] if cached else run_stale_rounds(cfg, keep_history=True)).history
    print(f"  fig. 7: trajectory of {len(history)} rounds ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    probe = cfg.model_copy(update={"tau": 1})
    from orchestrator.simulation.stale_rounds import _world, affected_clients

    world = _world(probe)
    clients = affected_clients(world.parts, world.y.numpy(), args.affected_class,
                               p["fig7_clients"])
    errs = estimation_errors(
        cfg, history, p["fig7_taus"], clients or [0], iterations=p["iterations"],
        fraction=args.fraction, dcasgd_c=args.dcasgd_c,
        on_tau=lambda tau, e: print(f"  fig. 7 τ={tau}: "
                                    + ", ".join(f"{k} {v:.3f}" for k, v in e.items()), flush=True))
    return {"alpha": alpha, "seed": seed, "rounds": len(history), "clients": len(clients or [0]),
            "errors": {str(k): v for k, v in errs.items()},
            "inversion_below_dcasgd_at_tau_ge_10": all(
                v["inversion"] < v["dcasgd"] for k, v in errs.items() if k >= 10)}


def plot(doc: dict[str, Any], path: Path) -> None:
    """Affected-class accuracy per round at the largest τ, overall accuracy, and fig. 7 (fig. 7
    alone for a ``--fig7-only`` run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = doc.get("cells") or []
    fig, axes = plt.subplots(1, 3 if cells else 1, figsize=(15 if cells else 6, 4.2),
                             squeeze=False)
    if cells:
        _plot_curves(cells, axes[0][0], axes[0][1])
    ax7 = axes[0][-1]
    f7 = doc["fig7"]
    taus = sorted(int(k) for k in f7["errors"])
    for est in ("direct", "dcasgd", "inversion"):
        ax7.plot(taus, [f7["errors"][str(t)][est] for t in taus], marker="o", label=est)
    ax7.set(title=f"fig. 7: error of the estimated fresh update (round {f7.get('rounds', '?')})",
            xlabel="τ (rounds)", ylabel="relative L1 error")
    for ax in axes[0]:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    flag = "" if doc["preset"] == "full" else f" --{doc['preset']}"
    fig.suptitle(f"benchmarks/staleness.py{flag}"
                 + (" --fig7-only" if not cells else " (2 shared CPU cores: wall times noisy)"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_curves(cells: list[dict[str, Any]], ax_aff: Any, ax_all: Any) -> None:
    first = max(cells, key=lambda c: (c["tau"], -c["alpha"]))
    group = [c for c in cells if (c["alpha"], c["tau"]) == (first["alpha"], first["tau"])]
    for name in first["runs"]:
        for key, ax in (("affected_accuracy", ax_aff), ("accuracy", ax_all)):
            mean = [sum(v) / len(group) for v in zip(*(c["runs"][name][key] for c in group),
                                                     strict=True)]
            ax.plot(range(1, len(mean) + 1), mean, label=name)
    ax_aff.set(title=f"affected class, α={first['alpha']}, τ={first['tau']}, mean of "
                     f"{len(group)} seed(s)", xlabel="round", ylabel="accuracy")
    ax_all.set(title="all classes", xlabel="round", ylabel="accuracy")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny run that proves it works")
    mode.add_argument("--reduced", action="store_true",
                      help="the reduced configuration docs/results.md reports")
    parser.add_argument("--dataset", default="mnist5k", choices=["mnist5k", "fashion_mnist"])
    parser.add_argument("--affected-class", type=int, default=5)
    parser.add_argument("--drift", type=float, default=0.0,
                        help="share of each client's data replaced per round (001 §5.3)")
    parser.add_argument("--fraction", type=float, default=0.5, help="|D_rec| / |D_k|")
    parser.add_argument("--dcasgd-c", type=float, default=1.0)
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None, help="override the preset's")
    parser.add_argument("--rounds", type=int, default=None, help="override the preset's")
    parser.add_argument("--iterations", type=int, default=None,
                        help="inversion iterations per update (override the preset's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--fig7-only", action="store_true",
                        help="only fig. 7 (the no-staleness trajectory and the estimation "
                             "errors at the preset's τ), written as staleness-fig7*.json/png")
    parser.add_argument("--fig7-clients", type=int, default=None,
                        help="fig. 7 averages over this many of the affected clients "
                             "(default: the preset's)")
    add_out_dir(parser)
    return parser.parse_args()


def main() -> None:
    args = _parse_args()
    preset = "quick" if args.quick else "reduced" if args.reduced else "full"
    p = dict(PRESETS[preset])
    p["seeds"] = args.seeds or p["seeds"]
    p["rounds"] = args.rounds or p["rounds"]
    p["iterations"] = args.iterations or p["iterations"]
    p["fig7_clients"] = args.fig7_clients or p["affected"]
    wall0 = time.perf_counter()
    if args.fig7_only:
        fig7_only(args, p, preset, wall0)
        return
    cells = [one_cell(args, p, alpha, tau, seed) for alpha in p["alphas"] for tau in p["taus"]
             for seed in range(p["seeds"])]
    doc: dict[str, Any] = {
        "benchmark": "staleness", "preset": preset, "settings": p,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "paper_anchors": ANCHORS, "cells": cells,
        "over_seeds": over_seeds(cells), "fig7": fig7(args, p, p["alphas"][0], 0),
    }
    doc["wall_s"] = time.perf_counter() - wall0
    out = results_dir(args)
    stem = "staleness" if preset == "full" else f"staleness-{preset}"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    plot(doc, out / f"{stem}.png")
    big = max(doc["over_seeds"], key=lambda r: (r["tau"], -r["alpha"]))
    acc = {h: v["affected"]["mean"] for h, v in big["handlers"].items()}
    f7 = doc["fig7"]["errors"]
    t_max = max(f7, key=int)
    nan = math.nan
    print(f"staleness ({preset}): α={big['alpha']} τ={big['tau']} affected-class accuracy, mean "
          f"of {big['seeds']} seed(s): inversion {acc['inversion']:.3f}, direct "
          f"{acc['direct']:.3f}, dcasgd {acc['dcasgd']:.3f}; inversion beat dcasgd in "
          f"{big['inversion_beats_on_affected']['dcasgd']}/{big['seeds']} seeds; fig.7 error at "
          f"τ={t_max} inversion/dcasgd {f7[t_max]['inversion'] / (f7[t_max]['dcasgd'] or nan):.3f}"
          f"; wall {doc['wall_s']:.0f} s -> {out / (stem + '.json')}")


def fig7_only(args: argparse.Namespace, p: dict[str, Any], preset: str, wall0: float) -> None:
    """``--fig7-only``: the estimation errors without the accuracy cells (001 fig. 7 at its own
    τ range costs one trajectory and a few inversions per τ, not hours of runs)."""
    doc: dict[str, Any] = {
        "benchmark": "staleness", "preset": preset, "fig7_only": True, "settings": p,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "paper_anchors": ANCHORS, "fig7": fig7(args, p, p["alphas"][0], 0)}
    doc["wall_s"] = time.perf_counter() - wall0
    out = results_dir(args)
    stem = "staleness-fig7" if preset == "full" else f"staleness-fig7-{preset}"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    plot(doc, out / f"{stem}.png")
    f7 = doc["fig7"]["errors"]
    ratios = ", ".join(f"τ={t} {v['inversion'] / (v['dcasgd'] or math.nan):.2f}"
                       for t, v in f7.items() if int(t) > 0)
    print(f"staleness fig. 7 ({preset}, round {doc['fig7']['rounds']}): inversion/dcasgd error "
          f"{ratios}; wall {doc['wall_s']:.0f} s -> {out / (stem + '.json')}")


if __name__ == "__main__":
    main()

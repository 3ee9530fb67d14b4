"""Robust aggregation under attack, in the virtual-clock simulator (issue 12).

10 clients fine-tune a lightly pretrained TwoNN on MNIST-5k (Dirichlet(α) label mix, Poisson
arrivals, `--alpha`, default 10: mildly non-IID). Two servers run on the *same* world (same
deployed model, partitions, devices and arrivals):

* ``sync`` — synchronous rounds (``orchestrator.simulation.rounds.run_rounds``, the
  simulator's counterpart of ``close_round``): every round all 10 clients train one epoch over
  all of their samples from the same global model, `--rounds` rounds (default 12);
* ``async`` — SPIN with K = 5 and π = 20 s on log-normal devices (stale updates mixed in).

For each server, each aggregation rule (``plexus.spec.RobustRuleName``) runs clean (0 %
malicious) and under each attack (``plexus.attacks``) with 20 % and 40 % of the clients
malicious (drawn with the seed; ALIE and IPM attackers know the honest updates). Robust rules
assume ``byzantine = 0.2`` of the updates malicious, whatever the true fraction. Reports the
final accuracy of every run and its gap to the same rule's clean run, and checks the goal:
with 20 % malicious, the best robust rule stays within 2 points of clean FedAvg under every
attack. The simulator runs on a virtual clock (real SGD, simulated time), so the whole grid
takes minutes of CPU.

    python benchmarks/robustness.py            # the full grid (writes benchmarks/results/)
    python benchmarks/robustness.py --quick    # 2 rules × 2 attacks, sync only, to a temp dir
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
RULES = ["fedavg", "clip", "median", "trimmed_mean", "krum", "multi_krum", "centered_clip"]
ATTACKS = ["sign_flip", "gaussian", "alie", "ipm", "label_flip", "inflate", "stale_replay"]
MODES = ["sync", "async"]


def base_config(mode: str, seed: int, alpha: float) -> dict[str, Any]:
    """The shared setting; `mode` picks the server (docs/results.md explains the choices)."""
    # sync ignores the aggregator's name and the devices (no clock): see run_rounds
    aggregator: dict[str, Any] = {"name": "spin", "k": 5, "pi_s": 20.0}
    devices: dict[str, Any] = {"distribution": "lognormal", "compute": 20.0,
                               "bandwidth": 1.0e6, "sigma": 0.5}
    return {
        "name": f"robustness-{mode}",
        "seed": seed,
        "clients": 10,
        "model": "twonn",
        "dataset": {"name": "mnist5k", "test_fraction": 0.2},
        "eval_samples": 1000,
        "pretrain": {"samples": 200, "epochs": 5, "optimizer": "adam", "lr": 0.001},
        "training": {"lr": 0.05, "batch_size": 16, "epochs": 1},
        "arrivals": {"rate": 1.5, "pull_threshold": 40, "alpha": alpha},
        "devices": devices,
        "aggregator": aggregator,
        "stop": {"max_time_s": 240.0},
        "threads": 1,
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from orchestrator.simulation import Simulation, build_world, load_config
    from orchestrator.simulation.rounds import run_rounds

    rows: list[dict[str, Any]] = []
    for mode in args.modes:
        base = base_config(mode, args.seed, args.alpha)
        world = build_world(load_config(base))
        cells = [(r, "none", 0.0) for r in args.rules]
        cells += [(r, a, f) for f in args.fractions for a in args.attacks for r in args.rules]
        for rule, attack, fraction in cells:
            cfg = {**base,
                   "aggregator": {**base["aggregator"],
                                  "aggregation": {"rule": rule, "byzantine": 0.2}},
                   "adversary": {"attack": attack, "fraction": fraction}}
            t0 = time.perf_counter()
            if mode == "sync":
                s = run_rounds(world, load_config(cfg), args.rounds)
            else:
                s = Simulation(world, load_config(cfg)).run()
            rows.append({"mode": mode, "rule": rule, "attack": attack, "fraction": fraction,
                         "final_accuracy": s["final_accuracy"],
                         "best_accuracy": s["best_accuracy"],
                         "initial_accuracy": s["initial_accuracy"],
                         "aggregations": s["aggregations"], "updates": s["updates"],
                         "malicious": s["malicious"], "wall_s": time.perf_counter() - t0})
            print(f"{mode:5} {rule:13} {attack:12} {fraction:.0%}: "
                  f"{s['final_accuracy']:.3f} ({rows[-1]['wall_s']:.1f} s)", flush=True)
    return rows


def analyse(rows: list[dict[str, Any]], goal_points: float = 2.0) -> dict[str, Any]:
    """Gaps to the clean runs and the goal check, per server."""
    clean = {(r["mode"], r["rule"]): r["final_accuracy"] for r in rows if r["attack"] == "none"}
    for r in rows:
        r["gap_to_clean_rule"] = clean[(r["mode"], r["rule"])] - r["final_accuracy"]
        r["gap_to_clean_fedavg"] = clean.get((r["mode"], "fedavg"), float("nan")) - r[
            "final_accuracy"]
    goal: dict[str, Any] = {}
    for mode in sorted({r["mode"] for r in rows}):
        ref = clean.get((mode, "fedavg"))
        attacked = [r for r in rows if r["mode"] == mode and r["fraction"] == 0.2]
        if ref is None or not attacked:
            continue
        per_attack = {}
        for attack in sorted({r["attack"] for r in attacked}):
            cands = [r for r in attacked if r["attack"] == attack and r["rule"] != "fedavg"]
            fedavg = [r for r in attacked if r["attack"] == attack and r["rule"] == "fedavg"]
            if not cands:
                continue
            best = max(cands, key=lambda r: r["final_accuracy"])
            per_attack[attack] = {
                "best_rule": best["rule"], "best_accuracy": best["final_accuracy"],
                "best_gap_points": 100 * (ref - best["final_accuracy"]),
                "fedavg_gap_points": 100 * (ref - fedavg[0]["final_accuracy"]) if fedavg
                else None,
            }
        worst_by_rule = {}
        for rule in sorted({r["rule"] for r in attacked}):
            gaps = [100 * (ref - r["final_accuracy"]) for r in attacked if r["rule"] == rule]
            worst_by_rule[rule] = max(gaps)
        single = min((r for r in worst_by_rule if r != "fedavg"),
                     key=lambda r: worst_by_rule[r], default=None)
        goal[mode] = {
            "clean_fedavg_accuracy": ref,
            "per_attack_at_20pct": per_attack,
            "met_with_best_rule_per_attack": all(
                v["best_gap_points"] <= goal_points for v in per_attack.values()),
            "worst_gap_points_by_rule_at_20pct": worst_by_rule,
            "best_single_rule": single,
            "met_with_one_rule_for_all_attacks": single is not None
            and worst_by_rule[single] <= goal_points,
        }
    return goal


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    modes = sorted({r["mode"] for r in rows}, key=MODES.index)
    fractions = sorted({r["fraction"] for r in rows if r["fraction"] > 0})
    rules = [r for r in RULES if any(x["rule"] == r for x in rows)]
    attacks = [a for a in ATTACKS if any(x["attack"] == a for x in rows)]
    fig, axes = plt.subplots(len(modes), len(fractions), squeeze=False,
                             figsize=(5.2 * len(fractions), 0.5 * len(rules) + 3.2 * len(modes)))
    acc = {(r["mode"], r["rule"], r["attack"], r["fraction"]): r["final_accuracy"] for r in rows}
    for i, mode in enumerate(modes):
        for j, frac in enumerate(fractions):
            ax = axes[i][j]
            mine = [r for r in rules if (mode, r, "none", 0.0) in acc
                    and any((mode, r, a, frac) in acc for a in attacks)]
            if not mine:
                ax.axis("off")
                ax.set_title(f"{mode}: {frac:.0%} malicious not run", fontsize=9)
                continue
            grid = np.array([[acc.get((mode, rule, "none", 0.0), np.nan)]
                             + [acc.get((mode, rule, a, frac), np.nan) for a in attacks]
                             for rule in mine])
            ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
            for (y, x), v in np.ndenumerate(grid):
                ax.text(x, y, "–" if np.isnan(v) else f"{100 * v:.0f}", ha="center",
                        va="center", fontsize=7)
            ax.set_xticks(range(len(attacks) + 1), ["clean", *attacks], rotation=45,
                          ha="right", fontsize=7)
            ax.set_yticks(range(len(mine)), mine, fontsize=7)
            ax.set_title(f"{mode}: {frac:.0%} malicious, final accuracy %", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _merge(previous: Path, rows: list[dict[str, Any]], settings: dict[str, Any],
           parts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any],
                                                 list[dict[str, Any]]]:
    """These runs added to the file's: a rerun cell replaces its row, and an earlier part
    whose whole grid was rerun now is replaced too."""
    prev = json.loads(previous.read_text())
    new = {(r["mode"], r["rule"], r["attack"], r["fraction"]) for r in rows}

    def covered(p: dict[str, Any]) -> bool:
        return all(set(p[k]) <= set(parts[0][k]) for k in ("modes", "rules", "attacks",
                                                           "fractions"))

    return ([r for r in prev["rows"]
             if (r["mode"], r["rule"], r["attack"], r["fraction"]) not in new] + rows,
            {**prev["setting"], **settings},
            [p for p in prev["parts"] if not covered(p)] + parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="sync only, fedavg + median, sign_flip + gaussian at 20 %%; "
                        "writes to a temp dir unless --out-dir is given")
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--rules", nargs="+", default=RULES, choices=RULES)
    parser.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--alpha", type=float, default=10.0, help="Dirichlet label mix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=12, help="sync rounds")
    parser.add_argument("--merge", action="store_true",
                        help="add these runs to the JSON in --out-dir (a grid run in parts)")
    parser.add_argument("--replot", action="store_true",
                        help="redraw the PNG from the JSON in --out-dir, without simulating")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"default {RESULTS} (--quick: a temp dir, never the results)")
    args = parser.parse_args()
    if args.quick:
        args.modes, args.rules = ["sync"], ["fedavg", "median"]
        args.attacks, args.fractions = ["sign_flip", "gaussian"], [0.2]
        if args.out_dir is None:
            args.out_dir = Path(tempfile.mkdtemp(prefix="plexus-robustness-"))
    out_dir: Path = args.out_dir or RESULTS
    if args.replot:
        plot(json.loads((out_dir / "robustness.json").read_text())["rows"],
             out_dir / "robustness.png")
        return
    wall0 = time.perf_counter()
    rows = run(args)
    wall = time.perf_counter() - wall0
    settings = {m: base_config(m, args.seed, args.alpha) for m in args.modes}
    parts = [{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}]
    if args.merge and (out_dir / "robustness.json").exists():
        rows, settings, parts = _merge(out_dir / "robustness.json", rows, settings, parts)
    goal = analyse(rows)
    doc = {
        "benchmark": "robustness",
        "parts": parts,  # the command-line arguments of each run merged into this file
        "setting": settings,
        "goal": goal,
        "rows": rows,
        "wall_s": wall,  # of this invocation
        "runs_wall_s": sum(r["wall_s"] for r in rows),  # every run in the file, summed
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "robustness.json").write_text(json.dumps(doc, indent=1))
    plot(rows, out_dir / "robustness.png")
    for mode, g in goal.items():
        print(f"{mode}: clean FedAvg {g['clean_fedavg_accuracy']:.3f}; goal (best rule within "
              f"2 points at 20 %) per attack: {g['met_with_best_rule_per_attack']}, one rule "
              f"({g['best_single_rule']}) for all: {g['met_with_one_rule_for_all_attacks']}")
        for attack, v in g["per_attack_at_20pct"].items():
            print(f"  {attack:12} best {v['best_rule']:13} gap {v['best_gap_points']:+.1f} "
                  f"points; fedavg gap {v['fedavg_gap_points']:+.1f}")
    print(f"wrote {out_dir / 'robustness.json'} and .png in {doc['wall_s']:.0f} s")


if __name__ == "__main__":
    main()

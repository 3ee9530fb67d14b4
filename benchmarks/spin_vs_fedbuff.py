"""SPIN vs FedBuff vs PORT in the virtual-clock simulator (SPIN paper, table I / fig. 7).

100 clients fine-tune a pretrained LeNet-5 on MNIST-5k (≈35 samples per client), or with
``--dataset fashion_mnist`` on full Fashion-MNIST (5,000 held out to pretrain, 55,000 split
among the clients, ≈550 each: the paper's scale), with a Dirichlet(1) label mix and Poisson
arrivals. For every seed and arrival rate λ, the three servers run on the *same* world: same
deployed model, partitions, device profiles and arrival traces. SPIN runs with K = 10 and π
swept around 0.6 × the mean client round time; FedBuff and PORT draw 20 clients per round, K = 10.
Reports virtual seconds to the target accuracy and the speed-up ratios.

    python benchmarks/spin_vs_fedbuff.py            # full sweep
    python benchmarks/spin_vs_fedbuff.py --quick    # one seed, one λ, π = 0.6 × round
    python benchmarks/spin_vs_fedbuff.py --dataset fashion_mnist --seeds 3 --rates 0.1 \
        --pi-factors 0.6 --max-time 1500        # the paper's scale on Fashion-MNIST

On Fashion-MNIST every run goes on to the horizon (``--to-horizon``) so that final accuracies
are compared at the same virtual time; the time to the target is the first aggregation that
reaches it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from outdir import add_out_dir, results_dir

# Per dataset: the pretraining slice held out from the clients, test samples scored after
# each aggregation, and the name results are written under.
DATASETS: dict[str, dict[str, Any]] = {
    "mnist5k": {"pretrain": 500, "eval": 500, "name": "spin_vs_fedbuff"},
    "fashion_mnist": {"pretrain": 5000, "eval": 2000, "name": "spin_vs_fedbuff_fashion"},
}


def base_config(
    seed: int, rate: float, target: float, max_time_s: float, args: argparse.Namespace
) -> dict[str, Any]:
    """The shared experiment setting (docs/results.md explains each choice)."""
    ds = DATASETS[args.dataset]
    return {
        "name": "spin-vs-fedbuff",
        "seed": seed,
        "clients": 100,
        "model": "lenet5",
        "dataset": {"name": args.dataset, "test_fraction": 0.2},
        "eval_samples": args.eval_samples or ds["eval"],
        "eval_interval_s": args.eval_interval,
        "pretrain": {
            "samples": args.pretrain_samples or ds["pretrain"],
            "epochs": 10,
            "optimizer": "adam",
            "lr": 0.001,
        },
        "training": {"lr": args.lr, "batch_size": 16, "epochs": 1},
        "arrivals": {"rate": rate, "pull_threshold": 10, "alpha": 1.0},
        "devices": {"distribution": "lognormal", "compute": 2.0, "bandwidth": 2.0e5, "sigma": 0.5},
        "aggregator": {"name": "spin", "k": 10},
        "stop": {
            "max_time_s": max_time_s,
            "target_accuracy": target,
            "stop_at_target": not args.to_horizon,
        },
        "threads": 1,
    }


def variants_for(args: argparse.Namespace, round_s: float) -> list[tuple[str, dict[str, Any]]]:
    """The servers run in each (seed, λ): label and aggregator settings. ``pi_s = "rule"``
    is resolved from the first SPIN run's measured round time."""
    fs = args.pi_factors
    out: list[tuple[str, dict[str, Any]]] = [
        (f"spin@{f:g}", {"name": "spin", "pi_s": f * round_s}) for f in fs
    ]
    out += [(f"spin@{f:g}+{h}", {"name": "spin", "pi_s": f * round_s, "staleness": h})
            for h in args.spin_staleness for f in fs]
    out += [(f"spin@{f:g}+lr{lr:g}", {"name": "spin", "pi_s": f * round_s, "server_lr": lr})
            for lr in args.spin_server_lr for f in fs]
    out += [(f"spin@{f:g}+k{k}", {"name": "spin", "pi_s": f * round_s, "k": k})
            for k in args.spin_k for f in fs]
    if args.pi_rule:
        # π = 0.6 × the mean round time SPIN's clients really took (measured in the first SPIN
        # run), the paper's rule (V-B4); rounds grow as clients hold more data.
        out += [("spin@rule", {"name": "spin", "pi_s": "rule"})]
        out += [(f"spin@rule+lr{lr:g}", {"name": "spin", "pi_s": "rule", "server_lr": lr})
                for lr in args.spin_server_lr]
    # FedBuff/PORT redraw a stuck round once per mean client round time.
    out += [(name, {"name": name, "concurrency": 20, "selection_interval_s": round_s})
            for name in ("fedbuff", "port")]
    if args.only_extra:  # side runs: only the SPIN variants with a handler, η_g or K
        out = [v for v in out if "+" in v[0]]
    return out


def run_pair(args: argparse.Namespace, world: Any, seed: int, rate: float, target: float,
             ) -> tuple[list[dict[str, Any]], dict[str, list[tuple[float, float]]]]:
    """Every variant over one world (seed, λ): its rows and scored accuracy curves."""
    from orchestrator.simulation import Simulation, load_config

    round_s = world.mean_round_time()
    print(f"seed {seed} λ {rate:g}: deployed acc {world.initial_accuracy:.3f}, target "
          f"{target:.3f}, round at D {round_s:.2f}s", flush=True)
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[float, float]]] = {}
    measured: float | None = None
    for label, agg in variants_for(args, round_s):
        if agg.get("pi_s") == "rule":
            assert measured is not None, "--pi-rule needs a SPIN run before it"
            agg = {**agg, "pi_s": 0.6 * measured}
        raw = base_config(seed, rate, target, args.max_time, args)
        raw["aggregator"].update(agg)
        sim = Simulation(world, load_config(raw))
        summary = sim.run()
        summary["mean_round_s"] = mean_round(sim.trace)
        if measured is None and label.startswith("spin@"):
            measured = summary["mean_round_s"]
        rows.append({"seed": seed, "rate": rate, "variant": label, "round_s": round_s,
                     "pi_s": agg.get("pi_s"), "target": target, **summary})
        print(
            f"seed {seed} λ {rate:g} {label:>9}: t_target {summary['time_to_target_s']}, "
            f"final acc {summary['final_accuracy']:.3f}, best {summary['best_accuracy']:.3f}, "
            f"{summary['aggregations']} aggs, staleness {summary['mean_staleness']:.2f}, "
            f"round {summary['mean_round_s']:.1f}s, wall {summary['wall_s']:.0f}s",
            flush=True,
        )
        curves[label] = [(0.0, world.initial_accuracy)] + [
            (round(e["t"], 2), round(e["accuracy"], 4))
            for e in sim.trace
            if e["event"] == "aggregate" and "accuracy" in e
        ]
    return rows, curves


def run(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator.simulation import build_world, load_config

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[float, float]]] = {}
    all_curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for seed in seeds:
        pretrained = None
        for rate in args.rates:
            cfg = load_config(base_config(seed, rate, 1.0, args.max_time, args))
            world = build_world(cfg, pretrained)
            pretrained = world.initial_state
            # Fine-tuning target: a fixed accuracy, or the deployed model's accuracy + gain
            # (the deployed model's accuracy differs from seed to seed).
            target = args.target if args.target else round(world.initial_accuracy + args.gain, 3)
            pair_rows, pair_curves = run_pair(args, world, seed, rate, target)
            rows += pair_rows
            all_curves[f"{seed}|{rate:g}"] = pair_curves
            if seed == seeds[0] and rate == args.rates[0]:
                curves = pair_curves
    return {"rows": rows, "curves": curves, "all_curves": all_curves}


def mean_round(trace: list[dict[str, Any]]) -> float:
    """Mean seconds from a client's dispatch to its push (download, train, upload) in a run."""
    started: dict[str, float] = {}
    spans: list[float] = []
    for e in trace:
        if e["event"] == "dispatch":
            started[e["client"]] = e["t"]
        elif e["event"] == "push" and e["client"] in started:
            spans.append(e["t"] - started.pop(e["client"]))
    return statistics.fmean(spans) if spans else 0.0


def _t(row: dict[str, Any], cap: float) -> float:
    t = row["time_to_target_s"]
    return cap if t is None else float(t)


def speedups(rows: list[dict[str, Any]], cap: float, spin_label: str) -> dict[str, Any]:
    """Per (seed, λ) ratios FedBuff/SPIN and PORT/SPIN; missed targets count as the cap."""
    out: dict[str, Any] = {"per_run": []}
    keys = sorted({(r["seed"], r["rate"]) for r in rows})
    for seed, rate in keys:
        by = {r["variant"]: r for r in rows if r["seed"] == seed and r["rate"] == rate}
        if spin_label not in by or "fedbuff" not in by or "port" not in by:
            continue
        ts = _t(by[spin_label], cap)
        out["per_run"].append(
            {
                "seed": seed,
                "rate": rate,
                "spin_s": ts,
                "fedbuff_s": _t(by["fedbuff"], cap),
                "port_s": _t(by["port"], cap),
                "fedbuff_over_spin": _t(by["fedbuff"], cap) / ts if ts > 0 else math.inf,
                "port_over_spin": _t(by["port"], cap) / ts if ts > 0 else math.inf,
                "censored": [
                    k for k in (spin_label, "fedbuff", "port") if by[k]["time_to_target_s"] is None
                ],
            }
        )
    runs = out["per_run"]
    # Pairs where all three reached the target: the only ones with a measured ratio.
    reached = [r for r in runs if not r["censored"]]
    out["reached_all"] = len(reached)
    out["censored_all"] = sum(1 for r in runs if len(r["censored"]) == 3)
    if reached:
        out["median_fedbuff_over_spin_reached"] = statistics.median(
            r["fedbuff_over_spin"] for r in reached
        )
        out["median_port_over_spin_reached"] = statistics.median(
            r["port_over_spin"] for r in reached
        )
    if runs:
        out["median_fedbuff_over_spin"] = statistics.median(r["fedbuff_over_spin"] for r in runs)
        out["median_port_over_spin"] = statistics.median(r["port_over_spin"] for r in runs)
        out["mean_spin_s"] = statistics.fmean(r["spin_s"] for r in runs)
        out["mean_fedbuff_s"] = statistics.fmean(r["fedbuff_s"] for r in runs)
        out["mean_port_s"] = statistics.fmean(r["port_s"] for r in runs)
        out["ratio_of_means_fedbuff"] = out["mean_fedbuff_s"] / out["mean_spin_s"]
        out["ratio_of_means_port"] = out["mean_port_s"] / out["mean_spin_s"]
        # Over the pairs all three reached (censored ratios are not ratios).
        out["ci_fedbuff_over_spin"] = ratio_ci([r["fedbuff_over_spin"] for r in reached])
        out["ci_port_over_spin"] = ratio_ci([r["port_over_spin"] for r in reached])
    return out


def ratio_ci(ratios: list[float]) -> dict[str, float]:
    """Geometric mean of ``ratios`` with a 95 % t-interval (computed on their logarithms)."""
    from scipy.stats import t as student_t

    logs = [math.log(r) for r in ratios if 0 < r < math.inf]
    if not logs:
        return {}
    mean = statistics.fmean(logs)
    out = {"n": float(len(logs)), "mean": math.exp(mean), "min": min(ratios),
           "max": max(ratios)}
    if len(logs) > 1:
        half = float(student_t.ppf(0.975, len(logs) - 1)) * statistics.stdev(logs)
        half /= math.sqrt(len(logs))
        out["lo"], out["hi"] = math.exp(mean - half), math.exp(mean + half)
    return out


GAINS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03)


def target_sweep(result: dict[str, Any]) -> dict[str, Any]:
    """Time to deployed + g for several gains g, from the scored curves of runs that went to
    the horizon; and the largest g that every variant reached in every (seed, λ)."""
    deployed = {f"{r['seed']}|{r['rate']:g}": r["initial_accuracy"] for r in result["rows"]}
    out: dict[str, Any] = {"by_gain": {}}
    common = None
    for g in GAINS:
        per: dict[str, dict[str, float | None]] = {}
        all_reached = True
        for pair, curves in result.get("all_curves", {}).items():
            target = deployed[pair] + g
            per[pair] = {}
            for label, pts in curves.items():
                hit = next((t for t, a in pts if a >= target - 1e-9), None)
                per[pair][label] = hit
                all_reached = all_reached and hit is not None
        out["by_gain"][f"{g:g}"] = per
        if all_reached and per:
            common = g
            out.setdefault("ratios", {})[f"{g:g}"] = _sweep_ratios(per)
    out["largest_gain_all_reached"] = common
    return out


def _sweep_ratios(per: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    """At one gain every run reached: FedBuff/SPIN and PORT/SPIN per pair, with CIs."""
    out: dict[str, Any] = {}
    in_all = set.intersection(*(set(c) for c in per.values()))  # variants every pair ran
    for spin in sorted(v for v in in_all if v.startswith("spin@")):
        fb = [float(c["fedbuff"] or 0) / max(float(c[spin] or 0), 1e-9) for c in per.values()]
        pt = [float(c["port"] or 0) / max(float(c[spin] or 0), 1e-9) for c in per.values()]
        out[spin] = {"fedbuff_over_spin": fb, "port_over_spin": pt,
                     "spin_first_in": sum(1 for c in per.values()
                                          if float(c[spin] or 0) < min(float(c["fedbuff"] or 0),
                                                                       float(c["port"] or 0))),
                     "ci_fedbuff_over_spin": ratio_ci(fb), "ci_port_over_spin": ratio_ci(pt)}
    return out


def accuracy_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per variant, over all (seed, λ): mean final and best accuracy, staleness, aggregations."""
    out: dict[str, dict[str, float]] = {}
    for v in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == v]
        out[v] = {
            key: statistics.fmean(float(r[key]) for r in mine)
            for key in ("final_accuracy", "best_accuracy", "mean_staleness", "aggregations",
                        "initial_accuracy")
        }
        out[v]["reached"] = float(sum(1 for r in mine if r["time_to_target_s"] is not None))
        out[v]["runs"] = float(len(mine))
    return out


def plot(result: dict[str, Any], path: Path, cap: float, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, pts in result["curves"].items():
        xs, ys = zip(*pts, strict=True)
        ax1.plot(xs, ys, label=label, lw=1.2)
    first = result["rows"][0] if result["rows"] else None
    if first is not None:
        ax1.axhline(first["target"], color="k", ls=":", lw=1, label=f"target {first['target']:.1%}")
    ax1.set_xlabel("virtual time (s)")
    ax1.set_ylabel("test accuracy")
    ax1.set_title("accuracy after each scored aggregation (first seed, first λ)")
    ax1.legend(fontsize=8)
    rows = result["rows"]
    rates = sorted({r["rate"] for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        means = [
            statistics.fmean(_t(r, cap) for r in rows if r["rate"] == lam and r["variant"] == v)
            for lam in rates
        ]
        ax2.bar([j + i * width for j in range(len(rates))], means, width, label=v)
    ax2.set_xticks([j + 0.4 - width / 2 for j in range(len(rates))])
    ax2.set_xticklabels([f"λ={lam:g}/s" for lam in rates])
    ax2.set_ylabel(f"virtual s to {target} (mean over seeds; cap {cap:g})")
    ax2.set_title("time to target accuracy")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _add_variant_args(parser: argparse.ArgumentParser) -> None:
    """Options that add SPIN variants (the fixes the issue lists) beside the baselines."""
    parser.add_argument(
        "--spin-staleness",
        nargs="*",
        default=[],
        choices=["poly", "dcasgd"],
        help="also run SPIN with these staleness handlers",
    )
    parser.add_argument(
        "--spin-k", type=int, nargs="*", default=[],
        help="also run SPIN with these buffer sizes K (FedBuff/PORT keep K = 10)",
    )
    parser.add_argument(
        "--pi-rule", action="store_true",
        help="also run SPIN with π = 0.6 × the mean round time its clients really took",
    )
    parser.add_argument(
        "--spin-server-lr", type=float, nargs="*", default=[],
        help="also run SPIN with these server learning rates η_g (model += η_g·FedAvg step)",
    )
    parser.add_argument(
        "--only-extra", action="store_true",
        help="run only the SPIN variants with a staleness handler or server learning rate "
             "(a side run beside a main one with the same seeds)",
    )


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, one λ, π = 0.6·round")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist5k")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run: first, first + 1…")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--pi-factors", type=float, nargs="+", default=[0.3, 0.6, 1.0])
    parser.add_argument("--target", type=float, default=None, help="fixed target accuracy")
    parser.add_argument(
        "--gain", type=float, default=0.025, help="target = deployed accuracy + gain (default)"
    )
    parser.add_argument("--max-time", type=float, default=1000.0, help="virtual seconds")
    parser.add_argument("--lr", type=float, default=0.01, help="clients' local SGD rate η")
    parser.add_argument("--pretrain-samples", type=int, default=None,
                        help="held-out pretraining slice (default per dataset)")
    parser.add_argument("--eval-samples", type=int, default=None,
                        help="test samples scored per aggregation (default per dataset)")
    parser.add_argument(
        "--eval-interval", type=float, default=None,
        help="score the model at most once per this many virtual seconds (default: after "
             "every aggregation)",
    )
    parser.add_argument(
        "--to-horizon", action=argparse.BooleanOptionalAction, default=None,
        help="run every server to --max-time instead of stopping at the target "
             "(default: on for fashion_mnist, off for mnist5k)",
    )
    _add_variant_args(parser)
    add_out_dir(parser)
    parser.add_argument(
        "--replot", action="store_true", help="recompute ratios and PNG from the saved JSON"
    )
    parser.add_argument(
        "--pool", type=Path, nargs="*", default=[],
        help="report these runs' JSONs as one (NAME_pooled.json/png; same settings assumed)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rates, args.pi_factors = 1, [0.05], [0.6]
    if args.to_horizon is None:
        args.to_horizon = args.dataset != "mnist5k"
    return args


def _replot(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], float]:
    """Recompute ratios and the figure from the last run's rows, without simulating: the saved
    rows and curves (the saved arguments go into `args`), and the saved run's wall time."""
    prev = json.loads((out / f"{DATASETS[args.dataset]['name']}.json").read_text())
    result = {k: prev[k] for k in ("rows", "curves", "all_curves") if k in prev}
    for key in ("pi_factors", "max_time", "seeds", "rates", "target", "gain"):
        setattr(args, key, prev["args"][key])
    return result, prev["wall_s"]


def _pool(paths: list[Path]) -> tuple[dict[str, Any], float]:
    """Rows and curves of several runs' JSONs as one result (a (seed, λ, variant) run that
    appears twice is taken from the first file), and their wall times added up."""
    rows: list[dict[str, Any]] = []
    all_curves: dict[str, dict[str, Any]] = {}
    seen: set[tuple[int, float, str]] = set()
    wall = 0.0
    for path in paths:
        doc = json.loads(path.read_text())
        wall += float(doc["wall_s"])
        for r in doc["rows"]:
            key = (r["seed"], r["rate"], r["variant"])
            if key not in seen:
                seen.add(key)
                rows.append(r)
                pair, label = f"{r['seed']}|{r['rate']:g}", r["variant"]
                all_curves.setdefault(pair, {})[label] = doc["all_curves"][pair][label]
    rows.sort(key=lambda r: (r["seed"], r["rate"]))
    first = f"{rows[0]['seed']}|{rows[0]['rate']:g}" if rows else ""
    return {"rows": rows, "curves": all_curves.get(first, {}), "all_curves": all_curves}, wall


def main() -> None:
    args = _parse_args()
    out = results_dir(args)
    name = DATASETS[args.dataset]["name"]
    wall0 = time.perf_counter()
    saved_wall_s: float | None = None
    if args.pool:  # runs made separately, reported as one (their wall times added up)
        result, saved_wall_s = _pool(args.pool)
        first_args = json.loads(args.pool[0].read_text())["args"]
        for key in ("pi_factors", "max_time", "rates", "target", "gain"):
            setattr(args, key, first_args[key])
        args.seeds = len({r["seed"] for r in result["rows"]})
        name += "_pooled"
    elif args.replot:  # keep the simulation's wall time, not the replot's
        result, saved_wall_s = _replot(args, out)
    else:
        result = run(args)
    headline = speedups(result["rows"], args.max_time, "spin@0.6")
    best: dict[str, Any] = {}
    for label in dict.fromkeys(r["variant"] for r in result["rows"]):
        if label.startswith("spin@"):
            best[label] = speedups(result["rows"], args.max_time, label)
    doc = {
        "benchmark": name,
        "args": json.loads(json.dumps(vars(args), default=str)),
        "paper_anchor_mnist": {"fedbuff_over_spin": 2.38, "port_over_spin": 3.59},
        "speedup_pi_0.6": headline,
        "speedup_by_variant": best,
        "accuracy": accuracy_summary(result["rows"]),
        "target_sweep": target_sweep(result),
        "rows": result["rows"],
        "curves": result["curves"],
        "all_curves": result.get("all_curves", {}),
        "wall_s": saved_wall_s if saved_wall_s is not None else time.perf_counter() - wall0,
    }
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    label = f"{args.target:.0%}" if args.target else f"deployed + {args.gain:.1%}"
    plot(result, out / f"{name}.png", args.max_time, label)
    nan = float("nan")
    fb, pt = headline.get("ci_fedbuff_over_spin", {}), headline.get("ci_port_over_spin", {})
    print(
        f"{name}: target {label}; all three reached it in "
        f"{headline.get('reached_all', 0)}/{len(headline['per_run'])} (seed, λ) pairs, none in "
        f"{headline.get('censored_all', 0)}; FedBuff/SPIN geo-mean {fb.get('mean', nan):.2f}x "
        f"[{fb.get('lo', nan):.2f}, {fb.get('hi', nan):.2f}], PORT/SPIN "
        f"{pt.get('mean', nan):.2f}x [{pt.get('lo', nan):.2f}, {pt.get('hi', nan):.2f}] "
        f"(paper: 2.38x, 3.59x); wall {doc['wall_s']:.0f}s"
    )


if __name__ == "__main__":
    main()

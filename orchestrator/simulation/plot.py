"""The accuracy-over-virtual-time figure `plexus simulate --out TRACE.json` writes beside its
trace (`TRACE.png`). matplotlib (Agg, no display) is imported only here."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def accuracy_points(doc: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(virtual seconds, accuracy) from a trace document: the deployed model's accuracy at
    t = 0, then the accuracy after each aggregation."""
    summary = doc["summary"]
    times, accs = [0.0], [float(summary["initial_accuracy"])]
    for e in doc["events"]:
        if e["event"] == "aggregate" and "accuracy" in e:  # not scored: eval_interval_s
            times.append(float(e["t"]))
            accs.append(float(e["accuracy"]))
    return times, accs


def write_accuracy_png(doc: dict[str, Any], path: Path) -> None:
    """Accuracy over virtual time as a step line, with the target accuracy if one was set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = doc["summary"]
    times, accs = accuracy_points(doc)
    end = float(summary.get("virtual_time_s") or times[-1])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.step([*times, end], [*accs, accs[-1]], where="post",
            label=f"{summary['aggregator']}, {summary['clients']} clients")
    target = summary.get("target_accuracy")
    if target is not None:
        ax.axhline(target, color="tab:red", linestyle="--", label=f"target {target:g}")
    reached = summary.get("time_to_target_s")
    if reached is not None:
        ax.axvline(reached, color="tab:green", linestyle=":",
                   label=f"reached at {reached:.0f} s")
    ax.set(xlabel="virtual time (s)", ylabel="accuracy",
           title=f"{doc['config'].get('name', 'simulation')}: accuracy over virtual time")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

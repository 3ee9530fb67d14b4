"""`plexus task show ID --csv FILE --plot FILE.png`: a task's rounds as CSV and as a figure.

matplotlib (Agg, no display needed) is imported only when a plot is asked for.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

CSV_COLUMNS = ("round", "started_at", "plan_s", "round_time_s", "truancy", "loss", "accuracy",
               "model_version", "learners", "samples_trained", "left_out")


def csv_rows(rounds: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    """One row per round, columns `CSV_COLUMNS`; `left_out` reads `name: why; ...`."""
    return [{
        "round": r["index"], "started_at": r["started_at"], "plan_s": r["plan_s"],
        "round_time_s": r["round_time_s"], "truancy": r["truancy"],
        "loss": "" if r["loss"] is None else r["loss"],
        "accuracy": "" if r["accuracy"] is None else r["accuracy"],
        "model_version": r["model_version"],
        "learners": sum(1 for n in r["allocation"].values() if n > 0),
        "samples_trained": sum(r["samples"].values()),
        "left_out": "; ".join(f"{names.get(k, k)}: {why}"
                              for k, why in sorted(r["left_out"].items())),
    } for r in rounds]


def write_csv(path: Path, rounds: list[dict[str, Any]], names: dict[str, str]) -> None:
    """The task's rounds as CSV (header row first)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(rounds, names))


def write_plot(path: Path, task: dict[str, Any], rounds: list[dict[str, Any]]) -> None:
    """Accuracy and loss per round, and for a synchronous task the GUC time against the
    deadline, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    sync = (task.get("spec") or {}).get("sync") or {}
    deadline = sync.get("deadline_s")
    panels = 3 if task.get("mode", "sync") == "sync" else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    x = [r["index"] for r in rounds]
    unit = "round" if panels == 3 else "aggregation"
    for ax, key in zip(axes, ("accuracy", "loss"), strict=False):
        ax.plot(x, [float("nan") if r[key] is None else r[key] for r in rounds], marker="o")
        ax.set(xlabel=unit, ylabel=key, title=f"{key} per {unit}")
        ax.grid(alpha=0.3)
    if panels == 3:
        ax = axes[2]
        ax.bar(x, [r["round_time_s"] for r in rounds], color="tab:gray", label="GUC time")
        if deadline:
            ax.axhline(deadline, color="tab:red", linestyle="--", label=f"D = {deadline:g} s")
        ax.set(xlabel="round", ylabel="seconds", title="GUC time vs deadline")
        ax.legend()
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"task {task['id']} {task['name']} ({task['state']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

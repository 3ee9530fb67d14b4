"""Rendering helpers of the orchestrator commands: round tables, progress, job summaries."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.table import Table

from orchestrator.cli.common import console

if TYPE_CHECKING:
    from orchestrator.client import Client


def fmt(value: float | None, pattern: str) -> str:
    """`pattern` applied to `value`, or "-" when there is none."""
    return "-" if value is None else pattern.format(value)


def rounds_table(rounds: list[dict[str, Any]], names: dict[str, str], *,
                 detail: bool = True) -> Table:
    """Per round: GUC time, truancy, loss, accuracy, who was left out; with `detail` also the
    allocation and samples trained per learner."""
    table = Table(title="rounds")
    cols = ["round", "GUC time", "truancy", "loss", "accuracy", "left out"]
    if detail:
        cols[1:1] = ["allocation (shards)", "samples trained"]
    for col in cols:
        table.add_column(col)
    for r in rounds:
        row = [str(r["index"]), f"{r['round_time_s']:.2f} s", f"{100 * r['truancy']:+.1f} %",
               fmt(r["loss"], "{:.3f}"), fmt(r["accuracy"], "{:.1%}"),
               ", ".join(names.get(k, k) for k in sorted(r["left_out"])) or "-"]
        if detail:
            row[1:1] = [
                ", ".join(f"{names.get(k, k)}={v}" for k, v in sorted(r["allocation"].items())),
                ", ".join(f"{names.get(k, k)}={v}" for k, v in sorted(r["samples"].items()))]
        table.add_row(*row)
    return table


def follow(client: Client, task_id: int, *, poll_s: float = 0.5) -> dict[str, Any]:
    """Show a progress bar per round until the task ends; return the final task."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    task = client.task(task_id)
    total = task.get("rounds")  # None for async tasks: an open-ended bar
    seen = 0
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed:.0f} rounds"), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console) as progress:
        bar = progress.add_task(f"task {task_id}", total=total, info="")
        while True:
            task = client.task(task_id)
            rounds = client.rounds(task_id)
            for r in rounds[seen:]:
                progress.update(bar, completed=r["index"] + 1, info=(
                    f"acc {fmt(r['accuracy'], '{:.1%}')}, {r['round_time_s']:.1f} s, "
                    f"truancy {100 * r['truancy']:+.1f} %"))
            seen = len(rounds)
            if task["state"] not in ("pending", "running"):
                return task
            time.sleep(poll_s)


def follow_job(client: Client, job_id: int, *, poll_s: float = 0.5) -> dict[str, Any]:
    """Poll a job until it ends, printing one line per recorded round; returns the job."""
    shown = 0
    while True:
        job = client.job(job_id)
        for rec in job["records"][shown:]:
            met = "met" if rec["met_deadline"] else "missed"
            console.print(f"round {rec['round']} {rec['task']}: {rec['duration_s']:.2f} s "
                          f"(T {rec['deadline_s']:g} s, {met}), "
                          f"{rec['samples_trained']}/{rec['samples_allocated']} samples")
        shown = len(job["records"])
        if job["state"] not in ("pending", "running"):
            return job
        time.sleep(poll_s)


def job_summary(job: dict[str, Any]) -> None:
    reason = f" ({job['reason']})" if job["reason"] else ""
    console.print(f"job {job['id']} [bold]{job['state']}[/bold]{reason}: {job['allocator']}, "
                  f"{job['rounds_done']} rounds, tasks "
                  + ", ".join(f"{t['id']} {t['name']} {t['state']}" for t in job["tasks"]))
    m = job.get("metrics")
    if not m:
        return
    table = Table()
    for col in ("task", "avg training time", "satisfaction", "fulfillment", "data drop",
                "occupancy"):
        table.add_column(col)
    for name, row in [*m["per_task"].items(), ("all", m)]:
        table.add_row(name, f"{row['average_training_time_s']:.2f} s",
                      f"{row['satisfaction_ratio']:.0%}", f"{row['average_task_fulfillment']:.0%}",
                      f"{row['data_drop_rate']:.0%}", f"{row['occupancy']:.0%}")
    console.print(table)


def task_summary(client: Client, task: dict[str, Any]) -> None:
    names = {str(lr["id"]): lr["name"] for lr in client.learners()}
    rounds = client.rounds(task["id"])
    reason = f" ({task['reason']})" if task["reason"] else ""
    console.print(f"task {task['id']} [bold]{task['state']}[/bold]{reason}: "
                  f"{task['rounds_done']}/{task['rounds'] or '-'} rounds, "
                  f"{task['allocator']}")
    for name, why in sorted((task.get("skipped") or {}).items()):
        console.print(f"skipped {name}: {why}")
    if rounds:
        console.print(rounds_table(rounds, names))
        last = rounds[-1]
        console.print(f"final accuracy {fmt(last['accuracy'], '{:.1%}')}, "
                      f"loss {fmt(last['loss'], '{:.3f}')}")

"""Rendering helpers of the orchestrator commands: round tables, progress, job summaries."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from rich.table import Table

from orchestrator.cli.common import console

if TYPE_CHECKING:
    from orchestrator.client import Client


def fmt(value: float | None, pattern: str) -> str:
    """`pattern` applied to `value`, or "-" when there is none."""
    return "-" if value is None else pattern.format(value)


def table(*columns: str, title: str | None = None) -> Table:
    """A table whose header words are never cut (`allocat…`): each column is at least as
    wide as its longest header word, and long cells fold onto more lines."""
    out = Table(title=title)
    for col in columns:
        out.add_column(col, min_width=max(len(w) for w in col.split()), overflow="fold")
    return out


def ago(seconds: float) -> str:
    """`12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{max(seconds, 0):.0f} s ago"


def rounds_table(rounds: list[dict[str, Any]], names: dict[str, str]) -> Table:
    """Per round: GUC time, truancy, loss, accuracy, who was left out and why."""
    out = table("round", "time (s)", "truancy", "loss", "accuracy", "left out", title="rounds")
    for r in rounds:
        out.add_row(str(r["index"]), f"{r['round_time_s']:.2f}", f"{100 * r['truancy']:+.1f} %",
                    fmt(r["loss"], "{:.3f}"), fmt(r["accuracy"], "{:.1%}"),
                    "; ".join(f"{names.get(k, k)}: {why}"
                              for k, why in sorted(r["left_out"].items())) or "-")
    return out


def allocation_table(rounds: list[dict[str, Any]], names: dict[str, str]) -> Table:
    """Per round and learner: shards given, samples trained, seconds taken, the seconds SB
    predicted (eq. 3.4, where the learner reported b_k and c_k) and the prediction error."""
    out = table("round", "learner", "shards", "samples", "actual (s)", "predicted (s)",
                "error", title="allocation")
    for r in rounds:
        times = r.get("times") or {}
        for key in sorted(set(r["allocation"]) | set(times), key=lambda k: names.get(k, k)):
            t = times.get(key) or {}
            actual, predicted = t.get("actual_s"), t.get("predicted_s")
            error = (None if actual is None or not predicted
                     else (actual - predicted) / predicted)
            out.add_row(str(r["index"]), names.get(key, key), str(r["allocation"].get(key, 0)),
                        str(r["samples"].get(key, "-")), fmt(actual, "{:.2f}"),
                        fmt(predicted, "{:.2f}"), fmt(error, "{:+.0%}"))
    return out


def waiting_line(client: Client) -> str:
    """Why a task that has not started a round yet waits: no learner alive."""
    learners = client.learners()
    alive = sum(1 for lr in learners if lr["alive"])
    if alive:
        return ""
    if not learners:
        return "waiting for learners: 0 enrolled"
    return f"waiting for learners: {len(learners)} enrolled, none alive"


@contextlib.contextmanager
def ctrl_c_between_polls() -> Iterator[Callable[[float], None]]:
    """A `pause(seconds)` for polling loops that raises KeyboardInterrupt there, and only there,
    once Ctrl-C (SIGINT) was pressed.

    A KeyboardInterrupt raised by Python's default handler lands wherever the main thread is,
    often inside an HTTP call, where it can leave httpx's connection pool locked; closing the
    client then hung (`task submit --wait` did not exit 30 s after Ctrl-C, at load 9). Here the
    first Ctrl-C is only noted and acted on at the next pause (a poll takes a fraction of a
    second); a second Ctrl-C interrupts at once.
    """
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield time.sleep  # signal handlers live in the main thread only
        return

    def on_sigint(_signum: int, _frame: object) -> None:
        if pressed.is_set():
            raise KeyboardInterrupt
        pressed.set()

    def pause(seconds: float) -> None:
        if pressed.wait(seconds):
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pause
    finally:
        signal.signal(signal.SIGINT, old)


def follow(client: Client, task_id: int, *, poll_s: float = 0.5) -> dict[str, Any]:
    """Show a progress bar per round until the task ends; return the final task. Before the
    first round it says what the task waits for (`waiting for learners: 0 enrolled`)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    task = client.task(task_id)
    total = task.get("rounds")  # None for async tasks: an open-ended bar
    seen = 0
    unit = "updates" if task.get("mode") == "async" else "rounds"
    with ctrl_c_between_polls() as pause, Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=20),
            TextColumn("{task.completed:.0f} " + unit), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=console) as progress:
        bar = progress.add_task(f"task {task_id}", total=total, info="")
        while True:
            task = client.task(task_id)
            rounds = client.rounds(task_id)
            if not rounds and task["state"] in ("pending", "running"):
                progress.update(bar, info=waiting_line(client))
            for r in rounds[seen:]:
                progress.update(bar, completed=r["index"] + 1, info=(
                    f"acc {fmt(r['accuracy'], '{:.1%}')}, {r['round_time_s']:.1f} s, "
                    f"truancy {100 * r['truancy']:+.1f} %"))
            seen = len(rounds)
            if task["state"] not in ("pending", "running"):
                return task
            pause(poll_s)


def follow_job(client: Client, job_id: int, *, poll_s: float = 0.5) -> dict[str, Any]:
    """Poll a job until it ends, printing one line per recorded round; returns the job."""
    shown = 0
    with ctrl_c_between_polls() as pause:
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
            pause(poll_s)


def job_summary(job: dict[str, Any]) -> None:
    reason = f" ({job['reason']})" if job["reason"] else ""
    console.print(f"job {job['id']} [bold]{job['state']}[/bold]{reason}: {job['allocator']}, "
                  f"{job['rounds_done']} rounds, tasks "
                  + ", ".join(f"{t['id']} {t['name']} {t['state']}" for t in job["tasks"]))
    m = job.get("metrics")
    if not m:
        return
    out = table("task", "avg training time", "satisfaction", "fulfillment", "data drop",
                "occupancy")
    for name, row in [*m["per_task"].items(), ("all", m)]:
        out.add_row(name, f"{row['average_training_time_s']:.2f} s",
                      f"{row['satisfaction_ratio']:.0%}", f"{row['average_task_fulfillment']:.0%}",
                      f"{row['data_drop_rate']:.0%}", f"{row['occupancy']:.0%}")
    console.print(out)


def task_summary(client: Client, task: dict[str, Any]) -> None:
    names = {str(lr["id"]): lr["name"] for lr in client.learners()}
    rounds = client.rounds(task["id"])
    reason = f" ({task['reason']})" if task["reason"] else ""
    console.print(f"task {task['id']} [bold]{task['state']}[/bold]{reason}: "
                  f"{task['rounds_done']}/{task['rounds'] or '-'} rounds, "
                  f"{task['allocator']}")
    for name, why in sorted((task.get("skipped") or {}).items()):
        console.print(f"skipped {name}: {why}")
    if not rounds and task["state"] in ("pending", "running"):
        line = waiting_line(client)
        if line:
            console.print(line)
    if rounds:
        console.print(rounds_table(rounds, names))
        if any(r["allocation"] for r in rounds):
            console.print(allocation_table(rounds, names))
        last = rounds[-1]
        console.print(f"final accuracy {fmt(last['accuracy'], '{:.1%}')}, "
                      f"loss {fmt(last['loss'], '{:.3f}')}")
    evaluation = task.get("evaluation") or {}
    if evaluation:
        console.print(f"accuracy from {evaluation['accuracy_from']}")
    if evaluation.get("per_device"):
        latest = evaluation["per_device"][-1]
        devices = ", ".join(f"{name} {fmt(e['accuracy'], '{:.1%}')} on {e['samples']}"
                            for name, e in sorted(latest["learners"].items()))
        console.print(f"per-device evaluation (round {latest['round']}, global model on each "
                      f"device's held-out samples): {devices}")

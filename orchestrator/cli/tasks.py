"""`plexus task submit|list|show|watch|logs|cancel|model`: training tasks (several specs make
one job)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.cli.common import (
    DATA_DIR,
    DEFAULT_DATA,
    DEFAULT_URL,
    TOKEN,
    URL,
    client_for,
    console,
    fail,
)
from orchestrator.cli.render import (
    ctrl_c_between_polls,
    follow,
    follow_job,
    job_summary,
    table,
    task_summary,
)

if TYPE_CHECKING:
    from orchestrator.client import Client


def register(app: typer.Typer) -> None:
    """Add the `task` command group."""
    task = typer.Typer(help="Submit, list, show, watch and cancel training tasks; read their "
                       "events.", no_args_is_help=True)
    app.add_typer(task, name="task")
    task.command("submit")(submit)
    task.command("list")(list_)
    task.command("show")(show)
    task.command("watch")(watch)
    task.command("logs")(logs)
    task.command("cancel")(cancel)
    task.command("model")(model)


def submit(
    spec_paths: Annotated[list[Path], typer.Argument(
        help="Task spec(s), YAML or JSON; several make one multi-task job.")],
    wait: Annotated[bool, typer.Option(
        help="Follow the task until it ends (Ctrl-C detaches; `plexus task watch ID` "
             "re-attaches).")] = False,
    allocator: Annotated[str | None, typer.Option(
        help="Multi-task job allocator: med | mmtt_uncertain | mmtt_ideal | equal "
             "(default med when several specs are given).")] = None,
    budget: Annotated[float | None, typer.Option(
        help="Job budget B per round (eq. 4.4d); default unlimited.")] = None,
    min_shards: Annotated[int, typer.Option(
        help="Job D_l: shards every learner must get (eq. 4.4e).")] = 0,
    job_name: Annotated[str, typer.Option(help="Name of the multi-task job.")] = "job",
    url: URL = DEFAULT_URL, token: TOKEN = None, data_dir: DATA_DIR = DEFAULT_DATA,
) -> None:
    """Submit a task spec; with --wait, follow it (Ctrl-C detaches).

    Several specs (or --allocator med/mmtt_*) submit one multi-task job
    (docs/orchestrator.md)."""
    from orchestrator.client import APIError
    from plexus.errors import SpecError
    from plexus.spec import load_spec

    try:
        if len(spec_paths) > 1 or allocator is not None:
            specs = [load_spec(p).to_dict() for p in spec_paths]
            job: dict[str, Any] = {"name": job_name, "allocator": allocator or "med",
                                   "min_shards": min_shards, "tasks": specs}
            if budget is not None:
                job["budget"] = budget
            with client_for(url, token, data_dir) as client:
                _submit_job(client, job, wait)
            return
        spec = load_spec(spec_paths[0]).to_dict()
        with client_for(url, token, data_dir) as client:
            _submit_task(client, spec, wait)
    except (APIError, SpecError) as exc:
        fail(exc)


def _submit_job(client: Client, job: dict[str, Any], wait: bool) -> None:
    created = client.submit_job(job)
    console.print(f"job {created['id']} submitted ({created['name']}, "
                  f"{created['allocator']}, tasks "
                  f"{', '.join(str(t['id']) for t in created['tasks'])})")
    if not wait:
        return
    final = follow_job(client, created["id"])
    job_summary(final)
    if final["state"] != "finished":
        raise typer.Exit(1)


def _submit_task(client: Client, spec: dict[str, Any], wait: bool) -> None:
    created = client.submit(spec)
    console.print(f"task {created['id']} submitted ({created['name']})")
    if not wait:
        return
    _watch(client, created["id"])


def _watch(client: Client, task_id: int) -> None:
    """Follow a task until it ends, then summarise it; Ctrl-C detaches (exit 130) with a hint
    of how to re-attach. Exit 1 when the task did not finish."""
    try:
        final = follow(client, task_id)
    except KeyboardInterrupt:
        typer.echo(f"\ndetached: task {task_id} keeps running on the orchestrator\n"
                   f"re-attach: plexus task watch {task_id}\n"
                   f"its events: plexus task logs {task_id} --follow")
        raise typer.Exit(130) from None
    task_summary(client, final)
    if final["state"] != "finished":
        raise typer.Exit(1)


def watch(task_id: Annotated[int, typer.Argument(help="Task id (see `plexus task list`).")],
          url: URL = DEFAULT_URL, token: TOKEN = None,
          data_dir: DATA_DIR = DEFAULT_DATA) -> None:
    """Re-attach to a task: a progress bar per round until it ends.

    Then its summary, as `task submit --wait`. Ctrl-C detaches again (exit 130); the task keeps
    running."""
    from orchestrator.client import APIError

    try:
        with client_for(url, token, data_dir) as client:
            task = client.task(task_id)
            console.print(f"task {task_id} ({task['name']}) is {task['state']}")
            _watch(client, task_id)
    except APIError as exc:
        fail(exc)


def logs(task_id: Annotated[int, typer.Argument(help="Task id (see `plexus task list`).")],
         follow_: Annotated[bool, typer.Option(
             "--follow", "-f", help="Keep printing new events until the task ends "
             "(Ctrl-C stops).")] = False,
         url: URL = DEFAULT_URL, token: TOKEN = None,
         data_dir: DATA_DIR = DEFAULT_DATA) -> None:
    """Print a task's events: rounds, who was left out and why, refusals.

    Rounds started and closed, learners left out and why, aggregations, refused learner
    requests, state changes; each task keeps its newest 2000."""
    from orchestrator.client import APIError

    try:
        with client_for(url, token, data_dir) as client:
            _print_events(client, task_id, follow_)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except APIError as exc:
        fail(exc)


def _print_events(client: Client, task_id: int, keep_following: bool,
                  poll_s: float = 0.5) -> None:
    import time

    cursor = 0
    with ctrl_c_between_polls() as pause:
        while True:
            ended = client.task(task_id)["state"] not in ("pending", "running")
            while True:  # everything up to now, page by page
                page = client.events(task_id, cursor)
                for e in page["events"]:
                    stamp = time.strftime("%H:%M:%S", time.localtime(e["at"]))
                    typer.echo(f"{stamp} {e['kind']:<13} {e['message']}")
                cursor = page["next"]
                if not page["events"]:
                    break
            if not keep_following or ended:
                return
            pause(poll_s)


def list_(url: URL = DEFAULT_URL, token: TOKEN = None,
          data_dir: DATA_DIR = DEFAULT_DATA) -> None:
    """List every task with its state and progress."""
    from orchestrator.client import APIError

    try:
        with client_for(url, token, data_dir) as client:
            out = table("id", "name", "allocator", "state", "rounds", "reason")
            for t in client.tasks():
                out.add_row(str(t["id"]), t["name"], str(t["allocator"]), t["state"],
                              f"{t['rounds_done']}/{t['rounds'] or '-'}",
                              t["reason"] or "")
            console.print(out)
    except APIError as exc:
        fail(exc)


def show(task_id: Annotated[int, typer.Argument(help="Task id (see `plexus task list`).")],
         as_json: Annotated[bool, typer.Option(
             "--json", help="Print the task and its rounds as JSON instead.")] = False,
         csv_file: Annotated[Path | None, typer.Option(
             "--csv", help="Also write one row per round to this CSV file.")] = None,
         plot_file: Annotated[Path | None, typer.Option(
             "--plot", help="Also draw accuracy, loss and GUC time per round into this "
             "PNG file.")] = None,
         url: URL = DEFAULT_URL, token: TOKEN = None,
         data_dir: DATA_DIR = DEFAULT_DATA) -> None:
    """Show one task: state, rounds, allocation (SB's predicted vs actual time).

    --csv writes one row per round, --plot a PNG of accuracy, loss and GUC time."""
    from orchestrator.client import APIError

    try:
        with client_for(url, token, data_dir) as client:
            task = client.task(task_id)
            if as_json:
                out = {"task": task, "rounds": client.rounds(task_id)}
                typer.echo(json.dumps(out, indent=2))
            else:
                task_summary(client, task)
            if csv_file is not None or plot_file is not None:
                _export(client, task, csv_file, plot_file)
    except (APIError, OSError) as exc:
        fail(exc)


def _export(client: Client, task: dict[str, Any], csv_file: Path | None,
            plot_file: Path | None) -> None:
    from orchestrator.cli.export import write_csv, write_plot

    rounds = client.rounds(task["id"])
    names = {str(lr["id"]): lr["name"] for lr in client.learners()}
    if csv_file is not None:
        write_csv(csv_file, rounds, names)
        typer.echo(f"{len(rounds)} rounds written to {csv_file}", err=True)
    if plot_file is not None:
        write_plot(plot_file, task, rounds)
        typer.echo(f"plot written to {plot_file}", err=True)


def model(
    task_id: int,
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    version: Annotated[int | None, typer.Option(
        help="Model version (round r writes version r + 1); default the latest.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="safetensors | onnx")] = "safetensors",
    url: URL = DEFAULT_URL, token: TOKEN = None, data_dir: DATA_DIR = DEFAULT_DATA,
) -> None:
    """Write a task's trained model, as safetensors or ONNX.

    The safetensors header holds the architecture and the input/label metadata (load it with
    `plexus.models.load(FILE)`)."""
    from orchestrator.client import APIError
    from plexus.errors import PlexusError

    if fmt not in ("safetensors", "onnx"):
        fail(ValueError(f"--format must be safetensors or onnx, got {fmt!r}"))
    try:
        with client_for(url, token, data_dir) as client:
            task = client.task(task_id)
            payload = client.model(task_id, version)
        written = _write_model(task, payload, output, fmt)
    except (APIError, PlexusError, OSError) as exc:
        fail(exc)
    console.print(f"task {task_id} model version {written} written to {output} ({fmt})")


def _write_model(task: dict[str, Any], payload: bytes, output: Path, fmt: str) -> int:
    from plexus.models import build_for_task, export_onnx, file_header, geometry, save
    from plexus.spec import load_spec
    from plexus.tensors import decode_state

    spec = load_spec(task["spec"])
    state, meta = decode_state(payload)
    version = int(meta.get("version", task["model_version"]))
    if fmt == "safetensors":
        save(output, state, file_header(spec, task_id=task["id"], version=version))
        return version
    if spec.split is not None:
        from plexus.errors import SpecError

        raise SpecError("a split task's model is written as safetensors (load it, or cut it "
                        "into its two halves, with plexus.split.export: "
                        "docs/split-learning.md), not ONNX")
    net = build_for_task(spec)
    net.load_state_dict(state)
    export_onnx(net, geometry(spec)[0], output)
    return version


def cancel(task_id: int, url: URL = DEFAULT_URL, token: TOKEN = None,
           data_dir: DATA_DIR = DEFAULT_DATA) -> None:
    """Cancel a pending or running task."""
    from orchestrator.client import APIError

    try:
        with client_for(url, token, data_dir) as client:
            t = client.cancel(task_id)
            console.print(f"task {t['id']} is {t['state']}")
    except APIError as exc:
        fail(exc)

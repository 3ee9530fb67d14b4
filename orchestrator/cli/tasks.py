"""`plexus task submit|list|show|cancel`: training tasks (several specs make one job)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

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
from orchestrator.cli.render import follow, follow_job, job_summary, task_summary

if TYPE_CHECKING:
    from orchestrator.client import Client


def register(app: typer.Typer) -> None:
    """Add the `task` command group."""
    task = typer.Typer(help="Submit, list, show and cancel training tasks.",
                       no_args_is_help=True)
    app.add_typer(task, name="task")
    task.command("submit")(submit)
    task.command("list")(list_)
    task.command("show")(show)
    task.command("cancel")(cancel)
    task.command("model")(model)


def submit(
    spec_paths: Annotated[list[Path], typer.Argument(
        help="Task spec(s), YAML or JSON; several make one multi-task job.")],
    wait: Annotated[bool, typer.Option(help="Follow the task until it ends.")] = False,
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
    """Submit a task spec; with --wait, show a progress bar per round. Several specs (or
    --allocator med/mmtt_*) submit one multi-task job (docs/orchestrator.md)."""
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
    final = follow(client, created["id"])
    task_summary(client, final)
    if final["state"] != "finished":
        raise typer.Exit(1)


def list_(url: URL = DEFAULT_URL, token: TOKEN = None,
          data_dir: DATA_DIR = DEFAULT_DATA) -> None:
    """List every task with its state and progress."""
    from orchestrator.client import APIError

    try:
        with client_for(url, token, data_dir) as client:
            table = Table()
            for col in ("id", "name", "allocator", "state", "rounds", "reason"):
                table.add_column(col)
            for t in client.tasks():
                table.add_row(str(t["id"]), t["name"], str(t["allocator"]), t["state"],
                              f"{t['rounds_done']}/{t['rounds'] or '-'}",
                              t["reason"] or "")
            console.print(table)
    except APIError as exc:
        fail(exc)


def show(task_id: int, as_json: Annotated[bool, typer.Option("--json")] = False,
         url: URL = DEFAULT_URL, token: TOKEN = None,
         data_dir: DATA_DIR = DEFAULT_DATA) -> None:
    """Show one task and its per-round history."""
    from orchestrator.client import APIError

    try:
        with client_for(url, token, data_dir) as client:
            if as_json:
                out = {"task": client.task(task_id), "rounds": client.rounds(task_id)}
                typer.echo(json.dumps(out, indent=2))
                return
            task_summary(client, client.task(task_id))
    except APIError as exc:
        fail(exc)


def model(
    task_id: int,
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    version: Annotated[int | None, typer.Option(
        help="Model version (round r writes version r + 1); default the latest.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="safetensors | onnx")] = "safetensors",
    url: URL = DEFAULT_URL, token: TOKEN = None, data_dir: DATA_DIR = DEFAULT_DATA,
) -> None:
    """Write a task's trained model: safetensors whose header holds the architecture and the
    input/label metadata (load it with `plexus.models.load(FILE)`), or ONNX."""
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

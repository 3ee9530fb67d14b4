"""`plexus job show|cancel`: multi-task jobs (MED / MMTT / equal split)."""

from __future__ import annotations

import json
from typing import Annotated

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
from orchestrator.cli.render import job_summary


def register(app: typer.Typer) -> None:
    """Add the `job` command group."""
    job_app = typer.Typer(help="Show and cancel multi-task jobs (MED / MMTT / equal).",
                          no_args_is_help=True)
    app.add_typer(job_app, name="job")
    job_app.command("show")(job_show)
    job_app.command("cancel")(job_cancel)


def job_show(job_id: int, as_json: Annotated[bool, typer.Option("--json")] = False,
             url: URL = DEFAULT_URL, token: TOKEN = None,
             data_dir: DATA_DIR = DEFAULT_DATA) -> None:
    """Show a multi-task job: its tasks, per-round records and thesis 4.3 metrics."""
    from orchestrator.client import APIError

    try:
        with client_for(url, token, data_dir) as client:
            job = client.job(job_id)
            if as_json:
                typer.echo(json.dumps(job, indent=2))
                return
            job_summary(job)
    except APIError as exc:
        fail(exc)


def job_cancel(job_id: int, url: URL = DEFAULT_URL, token: TOKEN = None,
               data_dir: DATA_DIR = DEFAULT_DATA) -> None:
    """Cancel a running multi-task job and its tasks."""
    from orchestrator.client import APIError

    try:
        with client_for(url, token, data_dir) as client:
            console.print(f"job {job_id} is {client.cancel_job(job_id)['state']}")
    except APIError as exc:
        fail(exc)

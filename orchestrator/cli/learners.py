"""`plexus learners`: the enrolled learners and whether they are alive."""

from __future__ import annotations

import time

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


def register(app: typer.Typer) -> None:
    """Add the `learners` command."""
    app.command("learners")(learners)


def learners(url: URL = DEFAULT_URL, token: TOKEN = None,
             data_dir: DATA_DIR = DEFAULT_DATA) -> None:
    """List enrolled learners and whether they are alive."""
    from orchestrator.client import APIError

    try:
        with client_for(url, token, data_dir) as client:
            table = Table()
            for col in ("id", "name", "alive", "via", "cores", "last seen"):
                table.add_column(col)
            now = time.time()
            for lr in client.learners():
                table.add_row(str(lr["id"]), lr["name"], "yes" if lr["alive"] else "no",
                              lr["via"], str(lr["facts"].get("cores", "?")),
                              f"{now - lr['last_seen']:.0f} s ago")
            console.print(table)
    except APIError as exc:
        fail(exc)

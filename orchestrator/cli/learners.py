"""`plexus learners`: the enrolled learners and whether they are alive; `learners remove ID`."""

from __future__ import annotations

import time
from typing import Annotated

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
    """Add the `learners` group: it lists the learners, `remove` revokes one."""
    group = typer.Typer(no_args_is_help=False)
    group.callback(invoke_without_command=True)(learners)
    group.command("remove")(remove)
    app.add_typer(group, name="learners")


def remove(learner_id: Annotated[int, typer.Argument(help="Learner id (see `plexus learners`)")],
           url: URL = DEFAULT_URL, token: TOKEN = None,
           data_dir: DATA_DIR = DEFAULT_DATA) -> None:
    """Remove (revoke) a learner: its token stops working at once."""
    from orchestrator.client import APIError

    try:
        with client_for(url, token, data_dir) as client:
            gone = client.remove_learner(learner_id)
        console.print(f"removed learner {gone['id']} ({gone['name']}); its token no longer "
                      "works (to keep the device out for good, also rotate the join token)")
    except APIError as exc:
        fail(exc)


def learners(ctx: typer.Context, url: URL = DEFAULT_URL, token: TOKEN = None,
             data_dir: DATA_DIR = DEFAULT_DATA) -> None:
    """List enrolled learners and whether they are alive (`learners remove ID` revokes one)."""
    from orchestrator.client import APIError

    if ctx.invoked_subcommand is not None:
        return

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

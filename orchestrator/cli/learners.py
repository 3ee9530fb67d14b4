"""`plexus learners`: enrolled learners, online or offline, last seen; `learners remove ID`."""

from __future__ import annotations

import time
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
from orchestrator.cli.render import ago, table


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
    """List enrolled learners: online or offline, last seen (`learners remove ID` revokes one).

    Also how each is reached (direct or relay), its cores and 1-minute load."""
    from orchestrator.client import APIError

    if ctx.invoked_subcommand is not None:
        return

    try:
        with client_for(url, token, data_dir) as client:
            out = table("id", "name", "state", "last seen", "via", "cores", "load")
            now = time.time()
            for lr in client.learners():
                facts = lr["facts"] or {}
                load = facts.get("load_1m")
                out.add_row(str(lr["id"]), lr["name"], "online" if lr["alive"] else "offline",
                            ago(now - lr["last_seen"]), lr["via"], str(facts.get("cores", "?")),
                            "-" if not isinstance(load, (int, float)) else f"{load:.2f}")
            console.print(out)
    except APIError as exc:
        fail(exc)

"""What every orchestrator command shares: the console, the common options, the API client.

Only typer and rich are imported at module level (see `orchestrator.cli`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from orchestrator.client import Client

console = Console()

URL = Annotated[str, typer.Option("--url", envvar="PLEXUS_URL",
                                  help="Base URL of the orchestrator.")]
TOKEN = Annotated[str | None, typer.Option("--token", envvar="PLEXUS_ADMIN_TOKEN",
                                           help="Admin token (default: read from --data-dir).")]
DATA_DIR = Annotated[Path, typer.Option("--data-dir", envvar="PLEXUS_DATA_DIR",
                                        help="Orchestrator data directory.")]
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_DATA = Path("plexus-data")


def client_for(url: str, token: str | None, data_dir: Path) -> Client:
    from orchestrator.client import Client, read_token

    return Client(url, token or read_token(data_dir))


def fail(exc: Exception) -> NoReturn:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)

"""`plexus orchestrator serve`: the REST API, the relay and the drivers until interrupted."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.common import DATA_DIR, DEFAULT_DATA, console, fail

LOG_LEVEL = Annotated[str, typer.Option(
    help="Log level: debug, info (task events), warning, error.")]
LOG_FORMAT = Annotated[str, typer.Option(
    envvar="PLEXUS_LOG_FORMAT", help="text, or json: one JSON object per line on stderr.")]
ACCESS_LOG = Annotated[bool, typer.Option(
    help="Also log every HTTP request (uvicorn's access log; off: only task events, "
         "warnings and errors).")]


def register(app: typer.Typer) -> None:
    """Add the `orchestrator` command group."""
    orch = typer.Typer(help="Run the orchestrator service.", no_args_is_help=True)
    app.add_typer(orch, name="orchestrator")
    orch.command("serve")(serve)


def _announce(url: str, join_token: str, data_dir: Path) -> None:
    """What an operator needs to connect agents and clients."""
    console.print(f"orchestrator at [bold]{url}[/bold] (docs: {url}/docs), data in "
                  f"{data_dir.resolve()}")
    console.print(f"join token: {join_token}")
    console.print(f"admin token: in {data_dir.resolve() / 'admin_token'}")
    sys.stdout.flush()


def _setup_logging(level: str, log_format: str) -> None:
    """Root logging for every logger (uvicorn's too: it is run with log_config=None)."""
    import logging

    from plexus.logs import check_format, json_handler

    try:
        check_format(log_format)
        numeric = logging.getLevelNamesMapping()[level.upper()]
    except (ValueError, KeyError):
        fail(ValueError(f"--log-level {level!r} or --log-format {log_format!r} is not "
                        "known (levels: debug, info, warning, error; formats: text, json)"))
    handler = json_handler() if log_format == "json" else logging.StreamHandler()
    if log_format != "json":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per RPC poll is noise


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    data_dir: DATA_DIR = DEFAULT_DATA,
    db_url: Annotated[str | None, typer.Option(
        envvar="PLEXUS_DB_URL",
        help="SQLAlchemy URL (default: SQLite file in the data dir), e.g. "
             "postgresql+psycopg://user@host/plexus")] = None,
    join_token: Annotated[str | None, typer.Option(
        envvar="PLEXUS_JOIN_TOKEN", help="Token agents enroll with (default: generated "
        "once, kept in the data dir).")] = None,
    admin_token: Annotated[str | None, typer.Option(
        envvar="PLEXUS_ADMIN_TOKEN", help="Token for task and learner calls (default: "
        "generated once, kept in the data dir).")] = None,
    public_url: Annotated[str | None, typer.Option(
        help="URL agents reach this orchestrator at (default: http(s)://HOST:PORT).")] = None,
    heartbeat_s: Annotated[float, typer.Option(
        help="Heartbeat interval asked of agents, seconds.")] = 5.0,
    data_root: Annotated[Path | None, typer.Option(
        envvar="PLEXUS_DATA_ROOT", help="Directory user datasets are read from (dataset.path "
        "is relative to it; nothing outside is read). Default: <data dir>/datasets.")] = None,
    max_data_bytes: Annotated[int, typer.Option(
        envvar="PLEXUS_MAX_DATA_BYTES", help="Largest user dataset accepted (bytes on disk, "
        "train and test files together).")] = 2 * 1024**3,
    log_level: LOG_LEVEL = "info", log_format: LOG_FORMAT = "text", access_log: ACCESS_LOG = False,
    ssl_certfile: Annotated[Path | None, typer.Option(
        envvar="PLEXUS_SSL_CERTFILE",
        help="TLS certificate (PEM, chain included): serve https (passed to uvicorn).")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(
        envvar="PLEXUS_SSL_KEYFILE", help="Private key (PEM) of --ssl-certfile.")] = None,
) -> None:
    """Serve the REST API, the relay and the round driver until interrupted. Logs task events
    (round started/closed, learner left out, aggregation, refusal), not every request."""
    import uvicorn

    from orchestrator.api import create_app
    from orchestrator.service import Settings

    if (ssl_certfile is None) != (ssl_keyfile is None):
        fail(ValueError("TLS needs both --ssl-certfile and --ssl-keyfile"))
    scheme = "https" if ssl_certfile else "http"
    advertised = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    settings = Settings(
        data_dir=data_dir, db_url=db_url, join_token=join_token, admin_token=admin_token,
        public_url=public_url or f"{scheme}://{advertised}:{port}",
        heartbeat_interval_s=heartbeat_s, alive_after_s=max(4 * heartbeat_s, 10.0),
        data_root=data_root, max_data_bytes=max_data_bytes)
    _setup_logging(log_level, log_format)
    fastapi_app = create_app(settings)
    _announce(settings.public_url, fastapi_app.state.service.join_token, data_dir)
    # Shutdown waits for open requests at most a few seconds: relay long-polls and the
    # orchestrator's own keep-alive calls through its https relay would otherwise hold a
    # SIGTERM for tens of seconds. Durable state is committed per round, so nothing is lost.
    uvicorn.run(fastapi_app, host=host, port=port, log_level=log_level, log_config=None,
                access_log=access_log,
                ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
                timeout_graceful_shutdown=3)

"""`plexus orchestrator serve`: the REST API, the relay and the drivers until interrupted."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from orchestrator.cli.common import DATA_DIR, DEFAULT_DATA, console, fail

LEASE_TTL = Annotated[float, typer.Option(
    envvar="PLEXUS_LEASE_TTL_S", min=1.0, metavar="<float>",
    help="Driver lease, seconds: one instance per database drives tasks and renews it every "
    "third of this; a standby instance on the same database takes over this long after the "
    "driver stops (docs/orchestrator.md).")]
LOG_LEVEL = Annotated[str, typer.Option(
    help="Log level: debug, info (task events), warning, error.")]
LOG_FORMAT = Annotated[str, typer.Option(
    envvar="PLEXUS_LOG_FORMAT", help="text, or json: one JSON object per line on stderr.")]
ACCESS_LOG = Annotated[bool, typer.Option(
    "--access-log", help="Also log every HTTP request (uvicorn's access log; off: only task "
    "events, warnings and errors).")]


def register(app: typer.Typer) -> None:
    """Add the `orchestrator` command group."""
    orch = typer.Typer(help="Run the orchestrator service.", no_args_is_help=True)
    app.add_typer(orch, name="orchestrator")
    orch.command("serve")(serve)


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, plus: SIGTERM / SIGINT first mark the service as stopping (new
        requests get 503 `shutting_down`), and a shutdown asked for by a signal exits 0
        instead of re-raising the signal, so systemd's `Restart=on-failure` sees a clean
        stop (docs/orchestrator.md, "Shutdown")."""

        def __init__(self, config: uvicorn.Config, service: Any) -> None:
            super().__init__(config)
            self.service = service

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            self.service.stopping = True
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            originals = {sig: signal.signal(sig, self.handle_exit)
                         for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    return Server


def _server(config: Any, service: Any) -> Any:
    """A uvicorn server for `config` that stops `service` cleanly on SIGTERM."""
    return _server_class()(config, service)


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
    lease_ttl_s: LEASE_TTL = 30.0,
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
        data_root=data_root, max_data_bytes=max_data_bytes, lease_ttl_s=lease_ttl_s)
    _setup_logging(log_level, log_format)
    fastapi_app = create_app(settings)
    _announce(settings.public_url, fastapi_app.state.service.join_token, data_dir)
    # Shutdown waits for open requests at most a few seconds: relay long-polls and the
    # orchestrator's own keep-alive calls through its https relay would otherwise hold a
    # SIGTERM for tens of seconds; then the drivers stop (docs/orchestrator.md, "Shutdown").
    _server(uvicorn.Config(
        fastapi_app, host=host, port=port, log_level=log_level, log_config=None,
        access_log=access_log, timeout_graceful_shutdown=3,
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None), fastapi_app.state.service).run()

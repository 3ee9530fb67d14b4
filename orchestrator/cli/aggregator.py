"""`plexus aggregator serve --upstream URL`: an edge aggregator for a subtree of learners.

Learners enrol with it instead of the orchestrator (`plexus agent run --orchestrator
http://AGGREGATOR:PORT --join-token ITS_TOKEN`); it enrols upstream as one learner and answers
one FedAvg update per round for its subtree (docs/hierarchy.md).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.common import console, fail


def register(app: typer.Typer) -> None:
    """Add the `aggregator` command group."""
    agg = typer.Typer(help="Run an edge aggregator (hierarchical aggregation).",
                      no_args_is_help=True)
    app.add_typer(agg, name="aggregator")
    agg.command("serve")(serve)


def _join_token(data_dir: Path, given: str | None) -> str:
    """The children's join token: given, or generated once and kept in the data dir."""
    path = data_dir / "join_token"
    if given:
        return given
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(token)
    path.chmod(0o600)
    return token


def serve(
    upstream: Annotated[str, typer.Option(
        help="URL of the orchestrator (or of a higher aggregator) this one enrols with.")],
    upstream_join_token: Annotated[str, typer.Option(
        envvar="PLEXUS_UPSTREAM_JOIN_TOKEN", help="The upstream's join token.")],
    join_token: Annotated[str | None, typer.Option(
        envvar="PLEXUS_JOIN_TOKEN", help="Token this aggregator's learners enrol with "
        "(default: generated once, kept in the data dir).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8100,
    data_dir: Annotated[Path, typer.Option(
        "--data-dir", help="Children, upstream secret and kept updates.")
    ] = Path("plexus-aggregator"),
    name: Annotated[str | None, typer.Option(
        help="Learner name upstream (default: aggregator-PORT).")] = None,
    public_url: Annotated[str | None, typer.Option(
        help="URL the upstream and the learners reach this aggregator at "
        "(default: http://HOST:PORT).")] = None,
    heartbeat_s: Annotated[float, typer.Option(
        help="Heartbeat interval asked of learners, seconds.")] = 5.0,
    grace_s: Annotated[float, typer.Option(
        help="Seconds past a round's deadline that learners' answers are waited for.")] = 5.0,
    async_flush_s: Annotated[float, typer.Option(
        help="Async tasks: seconds after a cohort's first update that its partial goes up "
        "even if not every child has answered.")] = 5.0,
) -> None:
    """Serve an edge aggregator: learners enrol here; one update per round goes upstream."""
    import logging

    from orchestrator.hierarchy.edge import EdgeAggregator
    from orchestrator.hierarchy.edge import serve as run

    if heartbeat_s <= 0 or grace_s < 0 or async_flush_s <= 0:
        fail(ValueError("--heartbeat-s and --async-flush-s must be positive and --grace-s "
                        "not negative"))
    advertised = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    token = _join_token(data_dir, join_token)
    edge = EdgeAggregator(
        upstream=upstream, upstream_join_token=upstream_join_token, join_token=token,
        data_dir=data_dir, name=name or f"aggregator-{port}",
        public_url=public_url or f"http://{advertised}:{port}", heartbeat_s=heartbeat_s,
        grace_s=grace_s, async_flush_s=async_flush_s)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    console.print(f"aggregator at [bold]{edge.public_url}[/bold] -> {upstream}; "
                  f"learners' join token in {(data_dir / 'join_token').resolve()}"
                  if join_token is None else
                  f"aggregator at [bold]{edge.public_url}[/bold] -> {upstream}")
    run(edge, host, port)

"""`plexus agent …` commands; the top level imports only typer and rich (Pi-friendly)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add the `agent` command group to the `plexus` CLI."""
    agent = typer.Typer(help="Run a learner agent on this device.", no_args_is_help=True)

    @agent.command("run")
    def run(
        orchestrator: str = typer.Option(..., help="Orchestrator base URL, e.g. http://host:8000"),
        join_token: str = typer.Option(..., help="Join token the orchestrator's admin gave you"),
        relay: bool = typer.Option(False, help="Serve through the orchestrator's relay (NAT)"),
        name: str | None = typer.Option(None, help="Learner name (default: host name)"),
        host: str = typer.Option("0.0.0.0", help="Address to bind the RPC worker to"),
        port: int = typer.Option(0, help="Port for the RPC worker (0 = any free port)"),
        data_dir: Path | None = typer.Option(None, help="Directory to keep the agent name in"),  # noqa: B008
        stress_heat: float | None = typer.Option(
            None, help="Experiments only: sample stressor states with this softmax heat"
        ),
        threads: int = typer.Option(
            1, help="torch threads for training (0 = torch's default, one per core)"
        ),
        preload: bool = typer.Option(
            False, help="Import torch at start: faster first call, ~180 MiB more idle memory"
        ),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every heartbeat"),
    ) -> None:
        """Enroll with the orchestrator and serve status / plan / benchmark / train."""
        import logging
        import signal

        from rich.logging import RichHandler

        from learner_agent.daemon import AgentDaemon

        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.INFO,
            format="%(message)s",
            handlers=[RichHandler(console=console, show_path=False)],
        )
        if not verbose:
            logging.getLogger("httpx").setLevel(logging.WARNING)
        if preload:
            import torch  # noqa: F401 - paying the import now keeps the first plan call fast
        try:
            daemon = AgentDaemon(
                orchestrator,
                join_token,
                name=name,
                host=host,
                port=port,
                relay=relay,
                data_dir=data_dir,
                stress_heat=stress_heat,
                threads=threads,
            )
        except ValueError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None

        def _stop(signum: int, frame: object) -> None:
            daemon.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        # Enrolment keeps retrying in the background while the orchestrator is away.
        daemon.start(wait_s=0)
        where = "through the relay" if relay else f"on {daemon.endpoint}"
        console.print(
            f"agent [bold]{daemon.name}[/bold] serving {where}, enrolling with {orchestrator}"
        )
        daemon.wait()

    app.add_typer(agent, name="agent")

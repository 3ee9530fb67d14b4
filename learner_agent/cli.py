"""`plexus agent …` commands; the top level imports only typer and rich (Pi-friendly)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from learner_agent.daemon import AgentDaemon

console = Console(stderr=True)


def read_token_file(path: Path) -> str:
    """The join token held in `path`; refuses a file that group or other may read, since a
    token on a shared device must stay with the agent's user (and never on a command line,
    which every user can read in /proc)."""
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read join token file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(
            f"join token file {path} is readable by other users (mode "
            f"{stat.S_IMODE(mode):o}); run `chmod 600 {path}`"
        )
    if not token:
        raise ValueError(
            f"join token file {path} is empty; write the orchestrator's join token to it"
        )
    return token


def resolve_join_token(given: str | None, token_file: Path | None) -> str:
    """One join token from --join-token / PLEXUS_JOIN_TOKEN or --join-token-file."""
    if given and token_file is not None:
        raise ValueError(
            "give the join token once: --join-token (or PLEXUS_JOIN_TOKEN) or --join-token-file"
        )
    if token_file is not None:
        return read_token_file(token_file)
    if given:
        return given
    raise ValueError(
        "no join token: pass --join-token-file PATH (a file of mode 600), set "
        "PLEXUS_JOIN_TOKEN, or pass --join-token (visible to other users in the process list)"
    )


def tls_verify(ca_file: Path | None, insecure: bool) -> bool | str:
    """What the agent verifies an https orchestrator with: the system's CAs (True), the CA
    bundle in `ca_file` (its path), or nothing (False, `--insecure`, testing only)."""
    if ca_file is not None and insecure:
        raise ValueError("--ca-file and --insecure contradict each other; pass one")
    if ca_file is not None:
        if not ca_file.is_file():
            raise ValueError(f"CA file {ca_file} does not exist; pass the orchestrator's CA "
                             "certificate (PEM)")
        return str(ca_file)
    return not insecure


def _setup_logging(verbose: bool, log_format: str = "text") -> None:
    """Text lines through rich, or one JSON object per line on stderr (`--log-format json`)."""
    import logging

    from plexus.logs import check_format, json_handler

    try:
        check_format(log_format)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if log_format == "json":
        handler = json_handler()
    else:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[handler],
    )
    if not verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _credentials(
    join_token: str | None, join_token_file: Path | None, ca_file: Path | None, insecure: bool
) -> tuple[str, bool | str]:
    """The join token and the TLS verify setting; exits 2 on a bad option."""
    try:
        token = resolve_join_token(join_token, join_token_file)
        verify = tls_verify(ca_file, insecure)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    os.environ.pop("PLEXUS_JOIN_TOKEN", None)  # no child process needs to inherit it
    if insecure:
        console.print(
            "[bold red]WARNING: --insecure: the orchestrator's TLS certificate is NOT "
            "verified; anyone on the path can impersonate it and read the join token. "
            "Use --ca-file in production.[/bold red]"
        )
    return token, verify


def _serve(daemon: AgentDaemon, orchestrator: str, relay: bool) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    import signal

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
    if daemon.fatal:
        daemon.stop()
        console.print(f"[red]error:[/red] {daemon.fatal}")
        raise typer.Exit(1)


def _arm_adversary(adversary: str | None) -> None:
    """Experiments only (benchmarks, tests): make this agent attack training."""
    if not adversary:
        return
    from learner_agent.adversary import configure

    try:
        configure(adversary)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"[bold red]EXPERIMENTS ONLY: this agent attacks training "
                  f"({adversary})[/bold red]")


_DATA_DIR_HELP = ("Directory keeping the agent's name and its learner secret (mode 600); "
                  "default $XDG_STATE_HOME/plexus/agents/<name> (~/.local/state/...)")


_JOIN_TOKEN_HELP = ("Join token the orchestrator's admin gave you (other users can see it in "
                    "the process list: prefer --join-token-file or PLEXUS_JOIN_TOKEN)")
_LOCAL_DATA_HELP = ("Directory of this device's own samples (npz, safetensors, CSV, IDX or a "
                    "folder of pictures per class) for tasks with dataset.device: true; they "
                    "never leave the device")
_PRELOAD_HELP = "Import torch at start: faster first call, ~180 MiB more idle memory"


def run(
    orchestrator: str = typer.Option(..., help="Orchestrator base URL, e.g. http://host:8000"),
    join_token: str | None = typer.Option(None, envvar="PLEXUS_JOIN_TOKEN",
                                          help=_JOIN_TOKEN_HELP),
    join_token_file: Path | None = typer.Option(  # noqa: B008
        None, help="File holding the join token; must not be readable by group/other"),
    ca_file: Path | None = typer.Option(  # noqa: B008
        None, help="CA certificate (PEM) to verify an https orchestrator with"),
    insecure: bool = typer.Option(
        False, help="Testing only: do not verify the orchestrator's TLS certificate"),
    relay: bool = typer.Option(False, help="Serve through the orchestrator's relay (NAT)"),
    name: str | None = typer.Option(None, help="Learner name (default: host name)"),
    host: str = typer.Option("0.0.0.0", help="Address to bind the RPC worker to"),
    port: int = typer.Option(0, help="Port for the RPC worker (0 = any free port)"),
    data_dir: Path | None = typer.Option(None, help=_DATA_DIR_HELP),  # noqa: B008
    local_data: Path | None = typer.Option(  # noqa: B008
        None, "--data", envvar="PLEXUS_AGENT_DATA", help=_LOCAL_DATA_HELP),
    stress_heat: float | None = typer.Option(
        None, help="Experiments only: sample stressor states with this softmax heat"),
    threads: int = typer.Option(
        1, help="torch threads for training (0 = torch's default, one per core)"),
    preload: bool = typer.Option(False, help=_PRELOAD_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every heartbeat"),
    log_format: str = typer.Option(
        "text", envvar="PLEXUS_LOG_FORMAT",
        help="Log lines as text, or json: one JSON object per line on stderr"),
    adversary: str | None = typer.Option(None, envvar="PLEXUS_ADVERSARY", hidden=True,
                                         help="EXPERIMENTS ONLY: attack training"),
) -> None:
    """Enroll with the orchestrator and serve status / plan / benchmark / train. Logs one
    line per piece of work (task, round, shards, samples trained, seconds, halted or not,
    upload size) and each connection change (lost, retrying, reconnected)."""
    from learner_agent.daemon import AgentDaemon, default_name, state_dir

    _setup_logging(verbose, log_format)
    if local_data is not None and not local_data.is_dir():
        console.print(f"[red]error:[/red] --data {local_data} is not a directory")
        raise typer.Exit(2)
    token, verify = _credentials(join_token, join_token_file, ca_file, insecure)
    _arm_adversary(adversary)
    if preload:
        import torch  # noqa: F401 - paying the import now keeps the first plan call fast
    try:
        daemon = AgentDaemon(
            orchestrator, token, name=name, host=host, port=port, relay=relay,
            data_dir=data_dir or state_dir(name or default_name(None)),
            stress_heat=stress_heat, threads=threads, verify=verify, local_data=local_data,
        )
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    _serve(daemon, orchestrator, relay)


def register(app: typer.Typer) -> None:
    """Add the `agent` command group to the `plexus` CLI."""
    agent = typer.Typer(help="Run a learner agent on this device.", no_args_is_help=True)
    agent.command("run")(run)
    app.add_typer(agent, name="agent")

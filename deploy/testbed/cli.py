"""`plexus testbed ...`: bring the emulated fleet up and down, inspect it, inject faults.

The top level imports only typer, rich and the standard library; the testbed modules are
imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

_console = Console()

testbed_app = typer.Typer(
    name="testbed",
    help="Emulated heterogeneous fleet on this machine: namespaces, tc rate caps, cgroup quotas.",
    no_args_is_help=True,
)

_PREFIX = typer.Option(
    "pxtb", "--prefix", help="Name prefix of the testbed (as in the fleet file)."
)
_STATE_ROOT = typer.Option(
    None, "--state-root", help="Where state files live (default /run/plexus-testbed)."
)

_FAULTS = ("link-down", "link-up", "rate", "kill", "restart", "pause", "resume")


def _fail(exc: Exception) -> None:
    _console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(code=1)


def _mbit(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 8 / 1e6:.1f}"


def _status_table(rows: list[dict[str, object]]) -> Table:
    table = Table(title="testbed learners")
    for column in (
        "name",
        "profile",
        "ip",
        "link",
        "down Mbit/s",
        "up Mbit/s",
        "cpu",
        "memory MiB",
        "agent",
        "pid",
    ):
        table.add_column(column)
    for row in rows:
        memory = row["memory_bytes"]
        cpu = row["cpu"]
        table.add_row(
            str(row["name"]),
            str(row["profile"]),
            str(row["ip"]),
            str(row["link"] or "missing"),
            _mbit(row["down_rate"]),  # type: ignore[arg-type]
            _mbit(row["up_rate"]),  # type: ignore[arg-type]
            "-" if cpu is None else f"{cpu:.2f}",
            "-" if memory is None else str(int(memory) // (1024 * 1024)),  # type: ignore[call-overload]
            str(row["agent"]),
            str(row["pid"] or "-"),
        )
    return table


@testbed_app.command("up")
def up_command(
    fleet: Path = typer.Argument(..., exists=True, dir_okay=False, help="Fleet YAML file."),  # noqa: B008
    state_root: Path | None = _STATE_ROOT,
) -> None:
    """Create the fleet's namespaces, links, caps and cgroups; start orchestrator and agents."""
    from deploy.errors import TestbedError
    from deploy.testbed.fleet import load_fleet
    from deploy.testbed.testbed import Testbed

    try:
        spec = load_fleet(fleet)
        total_cpu = sum(lr.profile.cpu for lr in spec.learners)
        import os

        cores = os.cpu_count() or 1
        if total_cpu > cores - 0.5:
            _console.print(
                f"[yellow]warning:[/yellow] the learners' CPU quotas add up to {total_cpu:.2f} "
                f"cores on a {cores}-core host; quotas are ceilings, so under contention learners "
                f"get less than their profile (lower cpu_scale in the fleet file)"
            )
        with _console.status(f"bringing up {len(spec.learners)} learners"):
            bed = Testbed.up(spec, state_root=state_root)
    except TestbedError as exc:
        _fail(exc)
        return
    _console.print(_status_table(bed.status()))
    _console.print(f"orchestrator: {bed.url}   join token: {bed.state.join_token_file}")
    _console.print(
        f"agent logs: {bed.state_dir / 'logs'}   take it down: "
        f"plexus testbed down --prefix {spec.prefix}"
    )


@testbed_app.command("down")
def down_command(prefix: str = _PREFIX, state_root: Path | None = _STATE_ROOT) -> None:
    """Remove every process, namespace, link, qdisc and cgroup of the testbed, even after a crash"""
    from deploy.errors import TestbedError
    from deploy.testbed.testbed import down

    try:
        removed = down(prefix, state_root=state_root)
    except TestbedError as exc:
        _fail(exc)
        return
    counts = ", ".join(f"{len(v)} {k}" for k, v in removed.items())
    _console.print(f"testbed {prefix!r} removed: {counts}")


@testbed_app.command("status")
def status_command(prefix: str = _PREFIX, state_root: Path | None = _STATE_ROOT) -> None:
    """Show each learner's link, caps (read back from tc and cgroups) and agent state."""
    from deploy.errors import StateError, TestbedError
    from deploy.testbed.testbed import Testbed, leftovers

    try:
        bed = Testbed.attach(prefix, state_root=state_root)
    except StateError as exc:
        left = leftovers(prefix)
        if any(left.values()):
            _console.print(
                f"no state file, but leftovers exist: {left}; run `plexus testbed down "
                f"--prefix {prefix}`"
            )
            raise typer.Exit(code=1) from exc
        _console.print(f"testbed {prefix!r} is not up")
        return
    except TestbedError as exc:
        _fail(exc)
        return
    _console.print(_status_table(bed.status()))
    running = "running" if bed.orchestrator_running() else "not started by the testbed or stopped"
    _console.print(f"orchestrator {bed.url}: {running}")


@testbed_app.command("fault")
def fault_command(
    name: str = typer.Argument(..., help="Learner name (see `plexus testbed status`)."),
    action: str = typer.Argument(..., help=f"One of: {', '.join(_FAULTS)}."),
    down_rate: str | None = typer.Option(
        None, "--down", help="For `rate`: new download cap, e.g. 2mbit."
    ),
    up_rate: str | None = typer.Option(
        None, "--up", help="For `rate`: new upload cap, e.g. 1mbit."
    ),
    prefix: str = _PREFIX,
    state_root: Path | None = _STATE_ROOT,
) -> None:
    """Inject a fault: link down/up, change link rate, SIGKILL/restart or pause/resume an agent."""
    from deploy.errors import TestbedError
    from deploy.testbed.profiles import parse_rate
    from deploy.testbed.testbed import Testbed

    if action not in _FAULTS:
        _fail(ValueError(f"unknown fault {action!r}; choose one of {', '.join(_FAULTS)}"))
    try:
        bed = Testbed.attach(prefix, state_root=state_root)
        if action == "link-down":
            bed.link_down(name)
        elif action == "link-up":
            bed.link_up(name)
        elif action == "rate":
            if down_rate is None and up_rate is None:
                _fail(ValueError("`rate` needs --down RATE and/or --up RATE, e.g. --down 2mbit"))
            bed.set_rate(
                name,
                down=None if down_rate is None else parse_rate(down_rate),
                up=None if up_rate is None else parse_rate(up_rate),
            )
        elif action == "kill":
            bed.kill_agent(name)
        elif action == "restart":
            bed.restart_agent(name)
        elif action == "pause":
            bed.pause(name)
        else:
            bed.resume(name)
    except TestbedError as exc:
        _fail(exc)
        return
    _console.print(f"{action} applied to {name}")


@testbed_app.command(
    "exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def exec_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Learner name."),
    prefix: str = _PREFIX,
    state_root: Path | None = _STATE_ROOT,
) -> None:
    """Run a command inside a learner's namespace and cgroups: `plexus testbed exec pi1 -- CMD`."""
    from deploy.errors import TestbedError
    from deploy.testbed.testbed import Testbed

    argv = [a for a in ctx.args if a != "--"] if ctx.args[:1] == ["--"] else list(ctx.args)
    if not argv:
        _fail(ValueError("give the command after the learner name: plexus testbed exec pi1 -- CMD"))
    try:
        bed = Testbed.attach(prefix, state_root=state_root)
        child = bed.spawn_in(name, argv, stdout=None, stderr=None)
    except TestbedError as exc:
        _fail(exc)
        return
    raise typer.Exit(code=child.wait())


@testbed_app.command("profiles")
def profiles_command() -> None:
    """List the device profiles a fleet file can name."""
    from deploy.testbed.profiles import PROFILES

    table = Table(title="device profiles (thesis table 3.1, section 4.3.1)")
    for column in (
        "profile",
        "cpu (cores)",
        "memory MiB",
        "down Mbit/s",
        "up Mbit/s",
        "link",
        "thesis device",
    ):
        table.add_column(column)
    for p in PROFILES.values():
        table.add_row(
            p.name,
            f"{p.cpu:.2f}",
            str(p.memory_bytes // (1024 * 1024)),
            _mbit(p.down_rate),
            _mbit(p.up_rate),
            p.link,
            p.device,
        )
    _console.print(table)


def register(app: typer.Typer) -> None:
    """Attach `plexus testbed ...` to the root CLI."""
    app.add_typer(testbed_app, name="testbed")

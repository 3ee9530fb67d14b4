"""`plexus demo`: an orchestrator, three local agents of emulated speeds and one DAB task.

Everything runs on this machine on loopback: the orchestrator on the embedded defaults (SQLite
in a temporary data directory, MNIST-5k) and three `plexus agent run` processes. The agents
are equally fast hardware, so their speeds are emulated by a CPU duty cycle (SIGSTOP/SIGCONT;
`orchestrator.local.emulation`), and the demo says so.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    """Add the `demo` command."""
    app.command("demo")(demo)


def demo(
    rounds: Annotated[int, typer.Option(help="Global update cycles.")] = 4,
    deadline_s: Annotated[float, typer.Option(help="Deadline D per cycle, seconds.")]
    = 4.0,
    keep: Annotated[bool, typer.Option(help="Keep the temporary data directory.")]
    = False,
) -> None:
    """Orchestrator + three local agents of emulated speeds + one DAB task (TwoNN, MNIST-5k)."""
    from orchestrator.cli.common import console

    code = run_demo(rounds=rounds, deadline_s=deadline_s, keep=keep, console=console)
    raise typer.Exit(code)


SPEEDS = {"fast": 1.0, "medium": 0.35, "slow": 0.1}


def demo_spec(rounds: int, deadline_s: float) -> dict[str, Any]:
    """The demo's task: TwoNN on MNIST-5k, 250-sample shards, μ = 5, DAB with deadline D."""
    return {
        "name": "demo-mnist5k-dab", "model": "twonn", "seed": 0,
        "dataset": {"name": "mnist5k"},
        "partition": {"kind": "iid", "shard_size": 250},
        "training": {"optimizer": "sgd", "lr": 0.05, "batch_size": 32, "iterations": 5},
        "mode": "sync",
        "sync": {"allocator": "dab", "deadline_s": deadline_s, "rounds": rounds,
                 "grace_s": 2.0, "benchmark_shards": 4},
    }


def run_demo(*, rounds: int, deadline_s: float, keep: bool, console: Console) -> int:
    """Run the demo end to end; return the process exit code (0 when the task finished)."""
    from orchestrator.cli.render import follow, rounds_table, table
    from orchestrator.local.fleet import LocalFleet

    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="plexus-demo-"))
    fleet = LocalFleet(root / "data", speeds=dict(SPEEDS))
    console.print("[bold]Plexus demo[/bold]: one orchestrator and three learner agents on this "
                  f"machine (data in {root / 'data'}).")
    console.print("Device speeds are [bold]emulated[/bold]: each agent process may use only a "
                  "fraction of a CPU (SIGSTOP/SIGCONT duty cycle): "
                  + ", ".join(f"{n} {100 * f:.0f} %" for n, f in SPEEDS.items()) + ".")
    code = 1
    try:
        with console.status("starting the orchestrator and three agents ..."):
            fleet.start()
        with fleet.client() as client:
            console.print(f"orchestrator at {fleet.url}; learners enrolled: "
                          + ", ".join(lr["name"] for lr in client.learners()))
            task = client.submit(demo_spec(rounds, deadline_s))
            console.print(f"submitted task {task['id']}: TwoNN on MNIST-5k ({task['num_shards']}"
                          f" shards of 250 samples), DAB, deadline D = {deadline_s:g} s, "
                          f"μ = 5, {rounds} rounds. First the agents benchmark themselves "
                          "(subset benchmarking) and each picks its own number of shards.")
            final = follow(client, task["id"])
            names = {str(lr["id"]): lr["name"] for lr in client.learners()}
            history = client.rounds(task["id"])
            console.print(rounds_table(history, names))
            per = table("learner", "emulated speed", "shards per round", "samples trained",
                        title="per-learner allocation (DAB: chosen by each learner, eq. 3.5)")
            for lid, name in sorted(names.items(), key=lambda kv: -SPEEDS.get(kv[1], 0)):
                shards = [r["allocation"].get(lid, 0) for r in history]
                trained = sum(r["samples"].get(lid, 0) for r in history)
                per.add_row(name, f"{100 * SPEEDS.get(name, 1):.0f} % CPU",
                            " / ".join(map(str, shards)), str(trained))
            console.print(per)
            truancy = ", ".join(f"{100 * r['truancy']:+.1f} %" for r in history)
            console.print(f"per-round truancy (GUC time − D)/D: {truancy}")
            if history and history[-1]["accuracy"] is not None:
                console.print(f"final accuracy on the held-out split: "
                              f"[bold]{history[-1]['accuracy']:.1%}[/bold] (task "
                              f"{final['state']})")
            code = 0 if final["state"] == "finished" else 1
    except Exception as exc:  # the demo reports and still shuts everything down
        console.print(f"[red]demo failed:[/red] {type(exc).__name__}: {exc}")
    finally:
        with console.status("shutting down agents and orchestrator ..."):
            fleet.stop()
        if keep:
            console.print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    console.print(f"demo took {time.monotonic() - started:.0f} s")
    return code

"""`plexus simulate CONFIG.yaml`: run SPIN / FedBuff / PORT on a virtual clock.

Top-level imports are typer, rich and the standard library only; torch and the simulator load
when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from orchestrator.simulation.config import SimulationConfig
    from orchestrator.simulation.engine import Simulation, World
    from orchestrator.simulation.ray_backend import RayTrainer


def simulate_command(
    config: Annotated[Path, typer.Argument(help="Simulator config (YAML or JSON).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON trace (events + summary) here, "
                                  "and accuracy over virtual time beside it (same name, .png).")
    ] = None,
    plot: Annotated[bool, typer.Option(help="With --out, also write the PNG.")] = True,
    aggregator: Annotated[
        str | None,
        typer.Option("--aggregator", help="Override aggregator.name (spin, fedbuff, port)."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the seed.")] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Train clients on Ray workers (needs plexus-edge\\[ray]): 'local' starts a "
            "private single-node Ray, HOST:PORT or 'auto' joins that cluster. Same trace as "
            "without.",
        ),
    ] = None,
) -> None:
    """Run a virtual-clock simulation of asynchronous fine-tuning and print its summary."""
    from orchestrator.simulation.config import SimulationConfigError, load_config
    from orchestrator.simulation.engine import Simulation, build_world

    console = Console(stderr=True)
    try:
        cfg = load_config(config)
        updates: dict[str, object] = {}
        if seed is not None:
            updates["seed"] = seed
        if aggregator is not None:
            updates["aggregator"] = cfg.aggregator.model_copy(update={"name": aggregator})
        if updates:
            cfg = load_config({**cfg.model_dump(mode="json"), **_dump(updates)})
    except SimulationConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc

    with console.status("loading data and pretraining the deployed model"):
        world = build_world(cfg)
    trainer = _ray_trainer(ray, cfg, world, console) if ray is not None else None
    try:
        sim = Simulation(world, trainer=trainer)
        summary = _run(sim, cfg, console)
    finally:
        if trainer is not None:
            trainer.close()
    if out is not None:
        _write(console, sim.to_json(summary), out, plot)
    table = Table(title=f"{cfg.name}: {cfg.aggregator.name}, {cfg.clients} clients")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


def _ray_trainer(
    address: str, cfg: SimulationConfig, world: World, console: Console
) -> RayTrainer:
    from orchestrator.simulation.ray_backend import RayTrainer  # imports ray only when made

    try:
        with console.status("connecting to Ray"):
            trainer = RayTrainer(
                None if address == "local" else address,
                model=cfg.model,
                input_shape=world.input_shape,
                num_classes=world.num_classes,
                threads=cfg.threads,
            )
    except ImportError as exc:
        console.print("[red]error:[/red] --ray needs Ray: pip install 'plexus-edge[ray]'")
        raise typer.Exit(2) from exc
    except ConnectionError as exc:
        console.print(f"[red]error:[/red] cannot reach the Ray cluster at {address}: {exc}")
        raise typer.Exit(2) from exc
    console.print(f"Ray: {trainer.nodes()} node(s); local training runs on its workers")
    return trainer


def _run(sim: Simulation, cfg: SimulationConfig, console: Console) -> dict[str, Any]:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} virtual s"),
        TextColumn("acc {task.fields[acc]:.3f}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(cfg.aggregator.name, total=cfg.stop.max_time_s, acc=sim.accuracy)

        def advance(t: float) -> None:
            progress.update(task, completed=min(t, cfg.stop.max_time_s), acc=sim.accuracy)

        return sim.run(advance)


def _write(console: Console, doc: dict[str, Any], out: Path, plot: bool) -> None:
    """The JSON trace at `out` and, with `plot`, accuracy over virtual time beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc))
    if plot:
        from orchestrator.simulation.plot import write_accuracy_png

        write_accuracy_png(doc, out.with_suffix(".png"))
        console.print(f"trace in {out}, accuracy over virtual time in {out.with_suffix('.png')}")


def _dump(updates: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in updates.items():
        dump = getattr(v, "model_dump", None)
        out[k] = dump(mode="json") if dump is not None else v
    return out


def register(app: typer.Typer) -> None:
    """Add `plexus simulate` to the root CLI."""
    app.command("simulate")(simulate_command)

"""The orchestrator's commands: `plexus orchestrator serve`, `plexus task ...`, `learners`, `demo`.

Only typer and rich are imported at module level, so `plexus agent run` on a small device never
pays for FastAPI or SQLAlchemy; each command imports what it needs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

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


def _client(url: str, token: str | None, data_dir: Path) -> Client:
    from orchestrator.client import Client, read_token

    return Client(url, token or read_token(data_dir))


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def rounds_table(rounds: list[dict[str, Any]], names: dict[str, str], *,
                 detail: bool = True) -> Table:
    """Per round: GUC time, truancy, loss, accuracy, who was left out; with `detail` also the
    allocation and samples trained per learner."""
    table = Table(title="rounds")
    cols = ["round", "GUC time", "truancy", "loss", "accuracy", "left out"]
    if detail:
        cols[1:1] = ["allocation (shards)", "samples trained"]
    for col in cols:
        table.add_column(col)
    for r in rounds:
        row = [str(r["index"]), f"{r['round_time_s']:.2f} s", f"{100 * r['truancy']:+.1f} %",
               _fmt(r["loss"], "{:.3f}"), _fmt(r["accuracy"], "{:.1%}"),
               ", ".join(names.get(k, k) for k in sorted(r["left_out"])) or "-"]
        if detail:
            row[1:1] = [
                ", ".join(f"{names.get(k, k)}={v}" for k, v in sorted(r["allocation"].items())),
                ", ".join(f"{names.get(k, k)}={v}" for k, v in sorted(r["samples"].items()))]
        table.add_row(*row)
    return table


def follow(client: Client, task_id: int, *, poll_s: float = 0.5) -> dict[str, Any]:
    """Show a progress bar per round until the task ends; return the final task."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    task = client.task(task_id)
    total = task.get("rounds")  # None for async tasks: an open-ended bar
    seen = 0
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed:.0f} rounds"), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console) as progress:
        bar = progress.add_task(f"task {task_id}", total=total, info="")
        while True:
            task = client.task(task_id)
            rounds = client.rounds(task_id)
            for r in rounds[seen:]:
                progress.update(bar, completed=r["index"] + 1, info=(
                    f"acc {_fmt(r['accuracy'], '{:.1%}')}, {r['round_time_s']:.1f} s, "
                    f"truancy {100 * r['truancy']:+.1f} %"))
            seen = len(rounds)
            if task["state"] not in ("pending", "running"):
                return task
            time.sleep(poll_s)


def register(app: typer.Typer) -> None:
    """Add the orchestrator's commands to the `plexus` CLI."""
    orch = typer.Typer(help="Run the orchestrator service.", no_args_is_help=True)
    task = typer.Typer(help="Submit, list, show and cancel training tasks.",
                       no_args_is_help=True)
    app.add_typer(orch, name="orchestrator")
    app.add_typer(task, name="task")
    job_app = typer.Typer(help="Show and cancel multi-task jobs (MED / MMTT / equal).",
                          no_args_is_help=True)
    app.add_typer(job_app, name="job")

    @orch.command("serve")
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
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
        ssl_certfile: Annotated[Path | None, typer.Option(
            envvar="PLEXUS_SSL_CERTFILE",
            help="TLS certificate (PEM, chain included): serve https (passed to uvicorn).")
        ] = None,
        ssl_keyfile: Annotated[Path | None, typer.Option(
            envvar="PLEXUS_SSL_KEYFILE", help="Private key (PEM) of --ssl-certfile.")] = None,
    ) -> None:
        """Serve the REST API, the relay and the round driver until interrupted."""
        import logging

        import uvicorn

        from orchestrator.app import create_app
        from orchestrator.service import Settings

        if (ssl_certfile is None) != (ssl_keyfile is None):
            _fail(ValueError("TLS needs both --ssl-certfile and --ssl-keyfile"))
        scheme = "https" if ssl_certfile else "http"
        advertised = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        settings = Settings(
            data_dir=data_dir, db_url=db_url, join_token=join_token, admin_token=admin_token,
            public_url=public_url or f"{scheme}://{advertised}:{port}",
            heartbeat_interval_s=heartbeat_s, alive_after_s=max(4 * heartbeat_s, 10.0))
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per RPC poll is noise
        fastapi_app = create_app(settings)
        service = fastapi_app.state.service
        console.print(f"orchestrator at [bold]{settings.public_url}[/bold] "
                      f"(docs: {settings.public_url}/docs), data in {data_dir.resolve()}")
        console.print(f"join token: {service.join_token}")
        console.print(f"admin token: in {data_dir.resolve() / 'admin_token'}")
        sys.stdout.flush()
        # Shutdown waits for open requests at most a few seconds: relay long-polls and the
        # orchestrator's own keep-alive calls through its https relay would otherwise hold a
        # SIGTERM for tens of seconds. Durable state is committed per round, so nothing is lost.
        uvicorn.run(fastapi_app, host=host, port=port, log_level=log_level,
                    ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                    ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
                    timeout_graceful_shutdown=3)

    @task.command("submit")
    def submit(
        spec_paths: Annotated[list[Path], typer.Argument(
            help="Task spec(s), YAML or JSON; several make one multi-task job.")],
        wait: Annotated[bool, typer.Option(help="Follow the task until it ends.")] = False,
        allocator: Annotated[str | None, typer.Option(
            help="Multi-task job allocator: med | mmtt_uncertain | mmtt_ideal | equal "
                 "(default med when several specs are given).")] = None,
        budget: Annotated[float | None, typer.Option(
            help="Job budget B per round (eq. 4.4d); default unlimited.")] = None,
        min_shards: Annotated[int, typer.Option(
            help="Job D_l: shards every learner must get (eq. 4.4e).")] = 0,
        job_name: Annotated[str, typer.Option(help="Name of the multi-task job.")] = "job",
        url: URL = DEFAULT_URL, token: TOKEN = None, data_dir: DATA_DIR = DEFAULT_DATA,
    ) -> None:
        """Submit a task spec; with --wait, show a progress bar per round. Several specs (or
        --allocator med/mmtt_*) submit one multi-task job (docs/orchestrator.md)."""
        from orchestrator.client import APIError
        from plexus.errors import SpecError
        from plexus.spec import load_spec

        try:
            if len(spec_paths) > 1 or allocator is not None:
                specs = [load_spec(p).to_dict() for p in spec_paths]
                job: dict[str, Any] = {"name": job_name, "allocator": allocator or "med",
                                       "min_shards": min_shards, "tasks": specs}
                if budget is not None:
                    job["budget"] = budget
                with _client(url, token, data_dir) as client:
                    created = client.submit_job(job)
                    console.print(f"job {created['id']} submitted ({created['name']}, "
                                  f"{created['allocator']}, tasks "
                                  f"{', '.join(str(t['id']) for t in created['tasks'])})")
                    if not wait:
                        return
                    final = follow_job(client, created["id"])
                    _job_summary(final)
                    if final["state"] != "finished":
                        raise typer.Exit(1)
                return
            spec = load_spec(spec_paths[0]).to_dict()
            with _client(url, token, data_dir) as client:
                created = client.submit(spec)
                console.print(f"task {created['id']} submitted ({created['name']})")
                if not wait:
                    return
                final = follow(client, created["id"])
                _summary(client, final)
                if final["state"] != "finished":
                    raise typer.Exit(1)
        except (APIError, SpecError) as exc:
            _fail(exc)

    @task.command("list")
    def list_(url: URL = DEFAULT_URL, token: TOKEN = None,
              data_dir: DATA_DIR = DEFAULT_DATA) -> None:
        """List every task with its state and progress."""
        from orchestrator.client import APIError

        try:
            with _client(url, token, data_dir) as client:
                table = Table()
                for col in ("id", "name", "allocator", "state", "rounds", "reason"):
                    table.add_column(col)
                for t in client.tasks():
                    table.add_row(str(t["id"]), t["name"], str(t["allocator"]), t["state"],
                                  f"{t['rounds_done']}/{t['rounds'] or '-'}",
                                  t["reason"] or "")
                console.print(table)
        except APIError as exc:
            _fail(exc)

    @task.command("show")
    def show(task_id: int, as_json: Annotated[bool, typer.Option("--json")] = False,
             url: URL = DEFAULT_URL, token: TOKEN = None,
             data_dir: DATA_DIR = DEFAULT_DATA) -> None:
        """Show one task and its per-round history."""
        from orchestrator.client import APIError

        try:
            with _client(url, token, data_dir) as client:
                if as_json:
                    out = {"task": client.task(task_id), "rounds": client.rounds(task_id)}
                    typer.echo(json.dumps(out, indent=2))
                    return
                _summary(client, client.task(task_id))
        except APIError as exc:
            _fail(exc)

    @task.command("cancel")
    def cancel(task_id: int, url: URL = DEFAULT_URL, token: TOKEN = None,
               data_dir: DATA_DIR = DEFAULT_DATA) -> None:
        """Cancel a pending or running task."""
        from orchestrator.client import APIError

        try:
            with _client(url, token, data_dir) as client:
                t = client.cancel(task_id)
                console.print(f"task {t['id']} is {t['state']}")
        except APIError as exc:
            _fail(exc)

    @job_app.command("show")
    def job_show(job_id: int, as_json: Annotated[bool, typer.Option("--json")] = False,
                 url: URL = DEFAULT_URL, token: TOKEN = None,
                 data_dir: DATA_DIR = DEFAULT_DATA) -> None:
        """Show a multi-task job: its tasks, per-round records and thesis 4.3 metrics."""
        from orchestrator.client import APIError

        try:
            with _client(url, token, data_dir) as client:
                job = client.job(job_id)
                if as_json:
                    typer.echo(json.dumps(job, indent=2))
                    return
                _job_summary(job)
        except APIError as exc:
            _fail(exc)

    @job_app.command("cancel")
    def job_cancel(job_id: int, url: URL = DEFAULT_URL, token: TOKEN = None,
                   data_dir: DATA_DIR = DEFAULT_DATA) -> None:
        """Cancel a running multi-task job and its tasks."""
        from orchestrator.client import APIError

        try:
            with _client(url, token, data_dir) as client:
                console.print(f"job {job_id} is {client.cancel_job(job_id)['state']}")
        except APIError as exc:
            _fail(exc)

    @app.command("learners")
    def learners(url: URL = DEFAULT_URL, token: TOKEN = None,
                 data_dir: DATA_DIR = DEFAULT_DATA) -> None:
        """List enrolled learners and whether they are alive."""
        from orchestrator.client import APIError

        try:
            with _client(url, token, data_dir) as client:
                table = Table()
                for col in ("id", "name", "alive", "via", "cores", "last seen"):
                    table.add_column(col)
                now = time.time()
                for lr in client.learners():
                    table.add_row(str(lr["id"]), lr["name"], "yes" if lr["alive"] else "no",
                                  lr["via"], str(lr["facts"].get("cores", "?")),
                                  f"{now - lr['last_seen']:.0f} s ago")
                console.print(table)
        except APIError as exc:
            _fail(exc)

    @app.command("demo")
    def demo(
        rounds: Annotated[int, typer.Option(help="Global update cycles.")] = 4,
        deadline_s: Annotated[float, typer.Option(help="Deadline D per cycle, seconds.")]
        = 4.0,
        keep: Annotated[bool, typer.Option(help="Keep the temporary data directory.")]
        = False,
    ) -> None:
        """Orchestrator + three local agents of emulated speeds + one DAB task (TwoNN, MNIST-5k)."""
        from orchestrator.demo import run_demo

        code = run_demo(rounds=rounds, deadline_s=deadline_s, keep=keep, console=console)
        raise typer.Exit(code)


def follow_job(client: Client, job_id: int, *, poll_s: float = 0.5) -> dict[str, Any]:
    """Poll a job until it ends, printing one line per recorded round; returns the job."""
    shown = 0
    while True:
        job = client.job(job_id)
        for rec in job["records"][shown:]:
            met = "met" if rec["met_deadline"] else "missed"
            console.print(f"round {rec['round']} {rec['task']}: {rec['duration_s']:.2f} s "
                          f"(T {rec['deadline_s']:g} s, {met}), "
                          f"{rec['samples_trained']}/{rec['samples_allocated']} samples")
        shown = len(job["records"])
        if job["state"] not in ("pending", "running"):
            return job
        time.sleep(poll_s)


def _job_summary(job: dict[str, Any]) -> None:
    reason = f" ({job['reason']})" if job["reason"] else ""
    console.print(f"job {job['id']} [bold]{job['state']}[/bold]{reason}: {job['allocator']}, "
                  f"{job['rounds_done']} rounds, tasks "
                  + ", ".join(f"{t['id']} {t['name']} {t['state']}" for t in job["tasks"]))
    m = job.get("metrics")
    if not m:
        return
    table = Table()
    for col in ("task", "avg training time", "satisfaction", "fulfillment", "data drop",
                "occupancy"):
        table.add_column(col)
    for name, row in [*m["per_task"].items(), ("all", m)]:
        table.add_row(name, f"{row['average_training_time_s']:.2f} s",
                      f"{row['satisfaction_ratio']:.0%}", f"{row['average_task_fulfillment']:.0%}",
                      f"{row['data_drop_rate']:.0%}", f"{row['occupancy']:.0%}")
    console.print(table)


def _summary(client: Client, task: dict[str, Any]) -> None:
    names = {str(lr["id"]): lr["name"] for lr in client.learners()}
    rounds = client.rounds(task["id"])
    reason = f" ({task['reason']})" if task["reason"] else ""
    console.print(f"task {task['id']} [bold]{task['state']}[/bold]{reason}: "
                  f"{task['rounds_done']}/{task['rounds'] or '-'} rounds, "
                  f"{task['allocator']}")
    if rounds:
        console.print(rounds_table(rounds, names))
        last = rounds[-1]
        console.print(f"final accuracy {_fmt(last['accuracy'], '{:.1%}')}, "
                      f"loss {_fmt(last['loss'], '{:.3f}')}")


if __name__ == "__main__":  # `python -m orchestrator.cli ...` runs these commands alone
    _root = typer.Typer(no_args_is_help=True)
    register(_root)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _root()

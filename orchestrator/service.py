"""One orchestrator instance: its settings and the wiring of its parts.

`Service(settings)` builds the store, the metrics, the RPC plumbing (callback receiver and
relay), the learner gateway and the three drivers (sync tasks, jobs, async tasks), and starts
and stops them. It knows no HTTP: `orchestrator.api.create_app` wraps a Service in the FastAPI
app. Nothing in `orchestrator.runs` imports this module; each driver gets the store, the
gateway and the metrics it needs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.metrics import Metrics
from orchestrator.runs.asynchronous import AsyncDriver
from orchestrator.runs.gateway import LearnerGateway
from orchestrator.runs.jobs import JobDriver
from orchestrator.runs.split import SplitDriver
from orchestrator.runs.sync import SyncDriver
from orchestrator.store import Store, write_atomic


@dataclass
class Settings:
    """How an orchestrator runs. Durations in seconds.

    `public_url` is the base URL agents reach this orchestrator at; duplex results are posted
    to `<public_url>/rpc-callbacks` and relayed agents poll `<public_url>/relay`. Tokens left
    as None are generated once and kept in the data directory (`join_token`, `admin_token`).
    """

    data_dir: Path = field(default_factory=lambda: Path("plexus-data"))
    db_url: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    join_token: str | None = None
    admin_token: str | None = None
    heartbeat_interval_s: float = 5.0
    # A learner is alive while its last heartbeat is younger than this.
    alive_after_s: float = 20.0
    # User datasets (`dataset: {name: files, path: …}`) are read only from under this
    # directory (default: <data_dir>/datasets), at most `max_data_bytes` per task.
    data_root: Path | None = None
    max_data_bytes: int = 2 * 1024**3

    @property
    def datasets_dir(self) -> Path:
        """The directory user dataset paths are resolved under."""
        return self.data_root if self.data_root is not None else self.data_dir / "datasets"


def _token_file(path: Path, given: str | None) -> str:
    """Use the given token (and remember it), or the remembered one, or a new one."""
    if given:
        write_atomic(path, given.encode())
        return given
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    write_atomic(path, token.encode())
    path.chmod(0o600)
    return token


class Service:
    """Everything one orchestrator process holds; the FastAPI app wraps it."""

    def __init__(self, settings: Settings) -> None:
        import rpc

        self.settings = settings
        self.store = Store(settings.data_dir, settings.db_url)
        root = self.store.layout.root
        self.join_token = _token_file(root / "join_token", settings.join_token)
        self.admin_token = _token_file(root / "admin_token", settings.admin_token)
        base = settings.public_url.rstrip("/")
        self.relay_url = f"{base}/relay"
        self.receiver = rpc.CallbackReceiver(public_url=f"{base}/rpc-callbacks")
        # The relay queues calls for agents behind NAT but does not pass the caller's token on
        # to them, so only this orchestrator may call through it: with a secret of its own.
        relay_secret = secrets.token_urlsafe(24)
        self.relay = rpc.Relay(caller_tokens={relay_secret},
                               authorize_worker=self._authorize_worker)
        self.gateway = LearnerGateway(self.store, relay_url=self.relay_url,
                                      relay_secret=relay_secret, receiver=self.receiver,
                                      alive_after_s=settings.alive_after_s)
        self.metrics = Metrics(lambda: len(self.gateway.alive()))
        self.sync = SyncDriver(self.store, self.gateway, self.metrics)
        self.jobs = JobDriver(self.store, self.gateway, self.metrics)
        self.asynchronous = AsyncDriver(self.store, self.gateway, self.metrics)
        self.split = SplitDriver(self.store, self.gateway, self.metrics)

    def _authorize_worker(self, name: str, token: str | None) -> bool:
        # A relayed agent serves under its enrolled name with its own learner token.
        if not token:
            return False
        row = self.store.learner_by_token(token)
        return row is not None and row.name == name

    def start(self) -> None:
        """In the running event loop: settle what a previous process left, resume sync tasks."""
        self.asynchronous.fail_leftovers()
        self.jobs.fail_leftovers()
        self.sync.resume_all()
        self.split.resume_all()

    async def stop(self) -> None:
        """Stop every driver (durable state stays for the next start), then close."""
        await self.jobs.stop()
        await self.asynchronous.stop()
        await self.sync.stop()
        await self.split.stop()
        self.gateway.close()
        self.store.close()

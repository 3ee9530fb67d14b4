"""One orchestrator instance: settings, store, metrics, RPC plumbing and the round driver."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.metrics import Metrics
from orchestrator.store import LearnerRow, Store, write_atomic


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
        from orchestrator.async_mode import AsyncTasks
        from orchestrator.driver import RoundDriver

        self.settings = settings
        self.store = Store(settings.data_dir, settings.db_url)
        root = self.store.layout.root
        self.join_token = _token_file(root / "join_token", settings.join_token)
        self.admin_token = _token_file(root / "admin_token", settings.admin_token)
        self.metrics = Metrics(lambda: len(self.alive_learners()))
        base = settings.public_url.rstrip("/")
        self.relay_url = f"{base}/relay"
        self.receiver = rpc.CallbackReceiver(public_url=f"{base}/rpc-callbacks")
        # The relay queues calls for agents behind NAT but does not pass the caller's token on
        # to them, so only this orchestrator may call through it: with a secret of its own.
        self.relay_secret = secrets.token_urlsafe(24)
        self.relay = rpc.Relay(caller_tokens={self.relay_secret},
                               authorize_worker=self._authorize_worker)
        self.driver = RoundDriver(self)
        self.async_tasks = AsyncTasks(self)
        from orchestrator.multitask import MultiTaskJobs

        self.jobs = MultiTaskJobs(self)

    def _authorize_worker(self, name: str, token: str | None) -> bool:
        # A relayed agent serves under its enrolled name with its own learner token.
        if not token:
            return False
        row = self.store.learner_by_token(token)
        return row is not None and row.name == name

    def alive_learners(self, now: float | None = None) -> list[LearnerRow]:
        """Learners whose last heartbeat is younger than `alive_after_s`."""
        now = time.time() if now is None else now
        horizon = now - self.settings.alive_after_s
        return [lr for lr in self.store.learners() if lr.last_seen >= horizon]

    def learner_view(self, lr: LearnerRow, now: float) -> dict[str, Any]:
        """A learner as the API shows it (never its token)."""
        return {"id": lr.id, "name": lr.name, "endpoint": lr.endpoint, "facts": lr.facts,
                "enrolled_at": lr.enrolled_at, "last_seen": lr.last_seen,
                "alive": lr.last_seen >= now - self.settings.alive_after_s,
                "via": "direct" if lr.endpoint else "relay"}

"""One orchestrator instance: its settings and the wiring of its parts.

`Service(settings)` builds the store, the metrics, the RPC plumbing (callback receiver and
relay), the learner gateway and the three drivers (sync tasks, jobs, async tasks), and starts
and stops them. It knows no HTTP: `orchestrator.api.create_app` wraps a Service in the FastAPI
app. Nothing in `orchestrator.runs` imports this module; each driver gets the store, the
gateway and the metrics it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import Conflict
from orchestrator.metrics import Metrics
from orchestrator.runs.asynchronous import AsyncDriver
from orchestrator.runs.gateway import LearnerGateway
from orchestrator.runs.jobs import JobDriver
from orchestrator.runs.split import SplitDriver
from orchestrator.runs.sync import SyncDriver
from orchestrator.store import Store, lease, write_atomic

log = logging.getLogger("orchestrator.service")


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
    # The driver lease (orchestrator.store.lease): renewed every third of this; a standby
    # instance on the same database takes over this long after the holder stopped renewing.
    lease_ttl_s: float = 30.0

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
        # A relayed agent that has not polled for alive_after_s is gone: calls for it fail at
        # once (rpc.WorkerGone) instead of holding a round until its cut-off. Its queue stays
        # in memory: the only caller, this process, does not outlive it, and a restarted
        # orchestrator re-issues the calls of the round it resumes (docs/orchestrator.md).
        self.relay = rpc.Relay(caller_tokens={relay_secret},
                               authorize_worker=self._authorize_worker,
                               gone_after_s=max(settings.alive_after_s, 6.0))
        self.gateway = LearnerGateway(self.store, relay_url=self.relay_url,
                                      relay_secret=relay_secret, receiver=self.receiver,
                                      alive_after_s=settings.alive_after_s)
        self.metrics = Metrics(lambda: len(self.gateway.alive()), store=self.store,
                               alive_after_s=settings.alive_after_s,
                               async_status=lambda: self.asynchronous.runners)
        self.sync = SyncDriver(self.store, self.gateway, self.metrics)
        self.jobs = JobDriver(self.store, self.gateway, self.metrics)
        self.asynchronous = AsyncDriver(self.store, self.gateway, self.metrics)
        self.split = SplitDriver(self.store, self.gateway, self.metrics)
        # Only the holder of the driver lease runs tasks (orchestrator.store.lease).
        self.owner = lease.new_owner_id()
        self.leader = False
        self._renewed = 0.0
        self._lease_loop: asyncio.Task[None] | None = None
        # Set on SIGTERM (`plexus orchestrator serve`) or at stop: new requests get 503
        # `shutting_down` (orchestrator.api.stopping) while what runs is wound down.
        self.stopping = False

    def _authorize_worker(self, name: str, token: str | None) -> bool:
        # A relayed agent serves under its enrolled name with its own learner token.
        if not token:
            return False
        row = self.store.learner_by_token(token)
        return row is not None and row.name == name

    def start(self) -> None:
        """In the running event loop: take the driver lease if free and drive, else stand by
        (serve the API, refuse new work) and take over once the holder's lease expires."""
        ttl, now = self.settings.lease_ttl_s, time.time()
        # A holder that is a dead process of this host (this orchestrator before a kill -9)
        # is replaced at once; a live or remote one only after its lease expired.
        if (lease.acquire(self.store, self.owner, ttl, now)
                or lease.take_from_dead(self.store, self.owner, ttl, now)):
            self._drive()
        else:
            held = lease.holder(self.store)
            log.warning("standby: %s holds the driver lease of this database; this instance "
                        "takes over when it stops renewing", held[0] if held else "?")
        self._lease_loop = asyncio.get_running_loop().create_task(
            self._keep_lease(), name="driver-lease")

    def _drive(self) -> None:
        """Become the driving instance: settle what a previous holder left, resume tasks."""
        self.leader = True
        self._renewed = time.time()
        self.store.fence = lambda s: lease.check(s, self.owner)
        log.info("driver lease taken by %s", self.owner)
        self.asynchronous.resume_all()
        self.jobs.resume_all()
        self.sync.resume_all()
        self.split.resume_all()

    async def _stand_down(self, why: str) -> None:
        """Stop driving (another instance holds the lease now); durable state stays."""
        log.error("driver lease lost (%s): stopping every task driver of %s", why, self.owner)
        self.leader = False
        await self._stop_drivers()

    async def _keep_lease(self) -> None:
        """Renew the lease every third of its TTL, or take it over once it expired."""
        ttl = self.settings.lease_ttl_s
        while True:
            await asyncio.sleep(ttl / 3)
            now = time.time()
            try:
                held = await asyncio.to_thread(lease.acquire, self.store, self.owner, ttl, now)
            except Exception as exc:  # the database is unreachable: retry until expiry
                log.warning("driver lease not renewed: %s", exc)
                if self.leader and time.time() > self._renewed + ttl:
                    await self._stand_down(f"not renewed for {ttl:.0f} s: {exc}")
                continue
            if held and not self.leader:
                self._drive()
            elif held:
                self._renewed = now
            elif self.leader:
                await self._stand_down("another instance took it over")

    def require_leader(self) -> None:
        """Conflict `standby` unless this instance drives tasks (new work would not run)."""
        if not self.leader:
            held = lease.holder(self.store)
            raise Conflict(
                "this orchestrator is on standby: another instance "
                f"({held[0] if held else 'unknown'}) holds the driver lease of this database "
                "and runs its tasks; submit to that instance, or wait until this one takes "
                "over (GET /healthz says \"driving\")", code="standby")

    async def _stop_drivers(self) -> None:
        await self.jobs.stop()
        await self.asynchronous.stop()
        await self.sync.stop()
        await self.split.stop()

    async def stop(self) -> None:
        """Stop every driver (durable state stays for the next start), give the lease back
        so a standby takes over at once, then close.

        Jobs first finish committing a GUC they are closing (bounded); a sync round or async
        aggregation cut here was not committed and runs again after the restart. Writes
        already handed to a thread complete: the event loop's executor is joined at exit.
        """
        self.stopping = True
        if self._lease_loop is not None:
            self._lease_loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_loop
        await self._stop_drivers()
        if self.leader:
            with contextlib.suppress(Exception):
                lease.release(self.store, self.owner)
        self.gateway.close()
        self.store.close()

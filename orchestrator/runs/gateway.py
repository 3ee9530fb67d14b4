"""The learner gateway: how every driver reaches the learner agents.

One duplex stub per learner (straight to its worker, or through the orchestrator's relay for an
agent behind NAT), shared by the synchronous, job and asynchronous drivers; `gather` calls many
learners at once under one time limit; one typed method per agent procedure (docs/protocol.md).
The gateway also answers which learners are alive (last heartbeat younger than
`alive_after_s`). It knows the store and the RPC plumbing, never a driver or the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.store import LearnerRow, Store
from plexus import protocol

# One learner's call: the learner and a function that starts the call.
Call = tuple[LearnerRow, Callable[[], Awaitable[Any]]]


@dataclass
class Reply:
    """One learner's answer (`value`) or why it has none (`error`), after `elapsed_s`."""

    learner: LearnerRow
    value: Any = None
    error: str | None = None
    elapsed_s: float = 0.0


class LearnerGateway:
    """Stubs, calls and liveness of the learners of one orchestrator."""

    def __init__(self, store: Store, *, relay_url: str, relay_secret: str, receiver: Any,
                 alive_after_s: float) -> None:
        self.store = store
        self.relay_url = relay_url
        self.relay_secret = relay_secret
        self.receiver = receiver
        self.alive_after_s = alive_after_s
        self._stubs: dict[tuple[str, str], Any] = {}

    # -- learners -------------------------------------------------------------------------

    def alive(self, now: float | None = None) -> list[LearnerRow]:
        """Learners whose last heartbeat is younger than `alive_after_s` (from the store's
        in-memory view: no database read of every learner on each call)."""
        now = time.time() if now is None else now
        horizon = now - self.alive_after_s
        return [lr for lr in self.store.learner_view() if lr.last_seen >= horizon]

    async def wait_for_alive(self, count: int = 1) -> list[LearnerRow]:
        """The alive learners, once there are at least `count` of them."""
        while True:
            alive = await asyncio.to_thread(self.alive)
            if len(alive) >= count:
                return alive
            await asyncio.sleep(0.5)

    def stub(self, learner: LearnerRow) -> Any:
        """A duplex stub for the learner: straight to its worker, or through our relay."""
        import rpc

        if learner.endpoint:
            url, token = learner.endpoint, learner.token  # the agent's worker checks it
        else:
            url, token = f"{self.relay_url}/{learner.name}", self.relay_secret
        key = (url, token)
        stub = self._stubs.get(key)
        if stub is None:
            stub = rpc.connect(url, token=token, duplex=True, timeout=None,
                               callback=self.receiver, poll_interval_s=1.0)
            self._stubs[key] = stub
        return stub

    def close(self) -> None:
        """Close every stub (after the drivers have stopped)."""
        for stub in self._stubs.values():
            with contextlib.suppress(Exception):
                stub.close()
        self._stubs.clear()

    # -- many learners at once --------------------------------------------------------------

    @staticmethod
    async def gather(calls: list[Call], timeout_s: float) -> list[Reply]:
        """Run every call at once; one reply per call, in the order given, each with its own
        elapsed seconds. Calls still open after `timeout_s` are cancelled and answered with an
        error; any failure of one learner only leaves that learner out."""
        t0 = time.monotonic()

        async def one(lr: LearnerRow, call: Callable[[], Awaitable[Any]]) -> Reply:
            try:
                value = await call()
                return Reply(lr, value=value, elapsed_s=time.monotonic() - t0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                return Reply(lr, error=f"{type(exc).__name__}: {exc}",
                             elapsed_s=time.monotonic() - t0)

        futures = [asyncio.ensure_future(one(lr, call)) for lr, call in calls]
        if not futures:
            return []
        try:
            await asyncio.wait(futures, timeout=timeout_s)
        except asyncio.CancelledError:
            for f in futures:
                f.cancel()
            raise
        out = []
        for f, (lr, _call) in zip(futures, calls, strict=True):
            if f.done():
                out.append(f.result())
            else:
                f.cancel()
                out.append(Reply(lr, error="no answer by deadline + grace", elapsed_s=timeout_s))
        return out

    # -- the agent's procedures (docs/protocol.md) -------------------------------------------

    async def grant(self, lr: LearnerRow, task_id: int) -> None:
        """Record that `lr` takes part in task `task_id` before it is given the task's work:
        from then on its token may read the task's model and data (docs/security.md)."""
        await asyncio.to_thread(self.store.add_participant, task_id, lr.id)

    async def _call(self, lr: LearnerRow, call: protocol.Call) -> Any:
        """One procedure call, its name and argument order taken from `plexus.protocol`."""
        return await self.stub(lr)[call.name].acall(*call.args())

    async def plan(self, lr: LearnerRow, spec: dict[str, Any], task_id: int) -> Any:
        """DAB: the learner picks its own number of shards a_k."""
        await self.grant(lr, task_id)
        return await self._call(lr, protocol.Plan(task=spec, task_id=task_id))

    async def benchmark(self, lr: LearnerRow, spec: dict[str, Any], task_id: int,
                        state: str | None) -> Any:
        """Subset benchmarking (b_k, c_k), in the given stressor state or none."""
        await self.grant(lr, task_id)
        return await self._call(lr, protocol.Benchmark(task=spec, task_id=task_id, state=state))

    async def round_state(self, lr: LearnerRow, distribution: dict[str, float],
                          reveal: bool, seed: int | None = None) -> Any:
        """The learner draws its stressor state for the round (from `seed` when given); says
        which if `reveal`."""
        return await self._call(lr, protocol.RoundState(distribution=distribution, reveal=reveal,
                                                        seed=seed))

    async def train(self, lr: LearnerRow, spec: dict[str, Any], task_id: int, index: int,
                    shards: list[int], halt_s: float, state: str | None) -> Any:
        """Train on `shards` for round `index`, halting after `halt_s` seconds."""
        await self.grant(lr, task_id)
        return await self._call(lr, protocol.Train(task=spec, task_id=task_id, round=index,
                                                   shards=shards, deadline_s=halt_s, state=state))

    async def join_async(self, lr: LearnerRow, spec: dict[str, Any], task_id: int,
                         client: int) -> Any:
        """Join asynchronous task `task_id` as client index `client`."""
        await self.grant(lr, task_id)
        return await self._call(lr, protocol.JoinAsync(task=spec, task_id=task_id, client=client))

    async def split_train(self, lr: LearnerRow, spec: dict[str, Any], task_id: int, index: int,
                          shards: list[int], device: dict[str, Any]) -> Any:
        """Split learning: train the device half `device` on `shards` against our server
        half (the learner must have been granted the task first)."""
        return await self._call(lr, protocol.SplitTrain(task=spec, task_id=task_id, round=index,
                                                        shards=shards, device=device))

    async def leave_async(self, lr: LearnerRow, task_id: int) -> Any:
        """Leave asynchronous task `task_id`."""
        return await self._call(lr, protocol.LeaveAsync(task_id=task_id))

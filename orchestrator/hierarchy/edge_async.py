"""The edge aggregator's part in asynchronous tasks: its children's pull / updates / stop /
partitions routes, `join_async` / `leave_async` served upstream, and the flush loop.

The state and its checks are `asynctier.AsyncTier` (on disk); this module does the HTTP: one
upstream pull per cohort, one upstream push per flushed cohort (docs/hierarchy.md,
"Asynchronous tasks").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Protocol

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.hierarchy.asynctier import (
    MAX_CHILD_UPDATE_BYTES,
    AsyncTier,
    Refused,
    TierTask,
    slice_rows,
)
from orchestrator.hierarchy.children import Child, Children
from plexus import protocol

log = logging.getLogger("orchestrator.hierarchy")

JOIN_TIMEOUT_S = 30.0  # join_async / leave_async answer at once; this covers a slow relay
FLUSH_POLL_S = 0.25  # how often the flush loop looks at the cohorts
MAX_PULL_BODY = 4096


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read at most ``limit`` bytes (a larger one is refused before it is all in
    memory)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, "too_large", f"the body of {declared} bytes exceeds {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, "too_large", f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Edge(Protocol):
    """What this module uses of `edge.EdgeAggregator` (no import: no cycle)."""

    data_dir: Path
    name: str
    heartbeat_s: float
    children: Children
    _http: httpx.AsyncClient | None

    async def _gather(self, calls: dict[str, protocol.Call], timeout_s: float
                      ) -> dict[str, Any]: ...

    def _child(self, request: Request) -> Child | None: ...

    async def _fetch(self, path: str) -> bytes: ...

    def _upstream_auth(self) -> dict[str, str]: ...


class EdgeAsync:
    """Async tasks through one edge aggregator (``edge``)."""

    def __init__(self, edge: Edge, flush_s: float) -> None:
        self.edge = edge
        self.flush_s = flush_s
        self.max_open_s = max(60.0, 10 * flush_s)  # an empty cohort no child answers: close
        self.tiers = AsyncTier(edge.data_dir / "async")
        self._locks: dict[int, asyncio.Lock] = {}
        self._partitions: dict[int, tuple[Any, Any]] = {}  # task → (x, y) of our partition
        self._kicked: set[asyncio.Task[None]] = set()
        # Task → (failures in a row, monotonic time of the next try) of a partial that could
        # not go up: retried with a doubling delay (0.5 s up to 30 s), not every poll.
        self._backoff: dict[int, tuple[int, float]] = {}
        self.routes = [
            Route("/v1/tasks/{task_id:int}/pull", self._pull, methods=["POST"]),
            Route("/v1/tasks/{task_id:int}/updates", self._updates, methods=["POST"]),
            Route("/v1/tasks/{task_id:int}/stop", self._stop, methods=["GET"]),
            Route("/v1/tasks/{task_id:int}/partitions/{client:int}", self._partition_route,
                  methods=["GET"]),
        ]

    def _lock(self, task_id: int) -> asyncio.Lock:
        return self._locks.setdefault(task_id, asyncio.Lock())

    def status(self) -> dict[str, Any]:
        """Per task: client index, children's slots, the open cohort, partials sent / dropped."""
        out: dict[str, Any] = {}
        for tid, t in self.tiers.tasks.items():
            c = t.cohort
            out[str(tid)] = {"client": t.client, "slots": dict(t.slots),
                             "delivered": t.delivered, "dropped": t.dropped,
                             "cohort": None if c is None else {
                                 "version": c.version, "members": sorted(c.members),
                                 "buffered": sorted(c.buffered), "sealed": c.sealed}}
        return out

    # -- served upstream ----------------------------------------------------------------------

    async def join_async(self, task: dict[str, Any], task_id: int, client: int
                         ) -> dict[str, Any]:
        """Take part in async task ``task_id`` as upstream client ``client``: deal our
        partition to the alive children (a stride each) and join each of them."""
        from plexus.spec import load_spec

        if load_spec(task).async_ is None:
            raise ValueError("join_async is for asynchronous tasks (mode: async)")
        for what, v in (("task_id", task_id), ("client", client)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{what} must be a non-negative integer, got {v!r}")
        alive = [c.name for c in self.edge.children.alive(3 * self.edge.heartbeat_s)]
        if not alive:
            raise RuntimeError(f"aggregator {self.edge.name} has no alive child to join")
        t = await asyncio.to_thread(self.tiers.join, task, task_id, client, alive)
        answers = await self.edge._gather(
            {n: protocol.JoinAsync(task=task, task_id=task_id, client=j)
             for n, j in t.slots.items()}, JOIN_TIMEOUT_S)
        if not answers:
            raise RuntimeError(f"no child of aggregator {self.edge.name} joined task {task_id}")
        return {"task_id": task_id, "client": client, "joined": True,
                "children": sorted(answers)}

    async def leave_async(self, task_id: int) -> dict[str, Any]:
        """Leave ``task_id``: tell the children to leave, forget the task."""
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            raise ValueError(f"task_id must be an integer, got {task_id!r}")
        t = self.tiers.tasks.get(task_id)
        if t is None:
            return {"left": False}
        await self.edge._gather({n: protocol.LeaveAsync(task_id=task_id) for n in t.slots},
                                JOIN_TIMEOUT_S)
        async with self._lock(task_id):
            await asyncio.to_thread(self.tiers.leave, task_id)
        self._partitions.pop(task_id, None)
        return {"left": True}

    # -- the children's routes ----------------------------------------------------------------

    def _who(self, request: Request) -> str:
        child = self.edge._child(request)
        if child is None:
            raise Refused(401, "unauthorized", "a learner's own token is needed")
        return child.name

    async def _partition(self, t: TierTask) -> tuple[Any, Any]:
        """Our partition upstream (client ``t.client``), downloaded once; notes every child's
        slice size (on disk) so pulls are bounded by it."""
        from plexus.shards import decode_shard

        got = self._partitions.get(t.task_id)
        if got is None:
            try:
                data = await self.edge._fetch(f"/v1/tasks/{t.task_id}/partitions/{t.client}")
            except (httpx.HTTPError, OSError) as exc:
                raise Refused(503, "upstream_unavailable",
                              f"our partition could not be read upstream: {exc}") from None
            x, y, _meta = decode_shard(data)
            got = self._partitions[t.task_id] = (x, y)
            k = len(t.slots)
            sizes = {n: len(slice_rows(len(y), j, k)) for n, j in t.slots.items()}
            if sizes != t.sizes:
                t.sizes = sizes
                await asyncio.to_thread(self.tiers.save, t)
        return got

    async def _partition_route(self, request: Request) -> Response:
        from plexus.shards import encode_shard

        try:
            name = self._who(request)
            t = self.tiers.slot(int(request.path_params["task_id"]), name)
            j = int(request.path_params["client"])
            if t.slots[name] != j:
                raise Refused(403, "not_your_partition", f"learner {name} is client "
                              f"{t.slots[name]} of this task here, not {j}")
            x, y = await self._partition(t)
        except Refused as r:
            return _error(r.status, r.code, r.detail)
        rows = slice_rows(len(y), j, len(t.slots))
        data = await asyncio.to_thread(encode_shard, x[rows], y[rows], {"client": j})
        return Response(data, media_type="application/octet-stream")

    async def _pull(self, request: Request) -> Response:
        import json

        try:
            name = self._who(request)
            task_id = int(request.path_params["task_id"])
            try:
                body = json.loads(await _read_body(request, MAX_PULL_BODY))
            except ValueError:
                body = None
            if not isinstance(body, dict) or set(body) != {"n_samples"}:
                raise Refused(422, "bad_request", 'the body must be {"n_samples": N}')
            async with self._lock(task_id):
                t = self.tiers.slot(task_id, name)
                self.tiers.check_pull(t, name, body["n_samples"])
                if name not in t.sizes:  # the slice sizes bound the pull: learn them first
                    try:
                        await self._partition(t)
                    except Refused:
                        return Response(status_code=204)  # upstream away: pull again later
                    self.tiers.check_pull(t, name, body["n_samples"])
                return await self._serve_pull(t, name, int(body["n_samples"]))
        except Refused as r:
            return _error(r.status, r.code, r.detail)

    async def _serve_pull(self, t: TierTask, name: str, n_samples: int) -> Response:
        """The open cohort's model (opening one with an upstream pull), or 204."""
        c = t.cohort
        if c is not None and (c.sealed or name in c.buffered):
            return Response(status_code=204)  # one update per child per cohort: later
        if c is None:
            assert self.edge._http is not None
            try:
                r = await self.edge._http.post(
                    f"/v1/tasks/{t.task_id}/pull", headers=self.edge._upstream_auth(),
                    json={"n_samples": max(1, sum(t.sizes.values()))})
            except httpx.TransportError as exc:
                log.warning("task %s: upstream pull failed: %s", t.task_id, exc)
                return Response(status_code=204)  # the child asks again later
            if r.status_code == 204 or r.status_code >= 500:
                return Response(status_code=204)
            if r.status_code != 200:  # the task ended (404 / 409) or we were refused
                return Response(r.content, status_code=r.status_code,
                                media_type=r.headers.get("content-type"))
            version = int(r.headers["x-model-version"])
            await asyncio.to_thread(self.tiers.open_cohort, t, version, r.content)
            c = t.cohort
            assert c is not None
        await asyncio.to_thread(self.tiers.member, t, name, n_samples)
        data = await asyncio.to_thread(self.tiers.base_bytes, t.task_id)
        return Response(data, media_type="application/octet-stream",
                        headers={"X-Model-Version": str(c.version)})

    async def _updates(self, request: Request) -> Response:
        try:
            name = self._who(request)
            task_id = int(request.path_params["task_id"])
            self.tiers.slot(task_id, name)
            body = await _read_body(request, MAX_CHILD_UPDATE_BYTES)
            answer = await asyncio.to_thread(self.tiers.accept, task_id, name, body)
        except Refused as r:
            return _error(r.status, r.code, r.detail)
        t = self.tiers.tasks.get(task_id)
        if t is not None and self.tiers.due(t, self.flush_s):
            self.kick(task_id)
        return JSONResponse(answer)

    async def _stop(self, request: Request) -> Response:
        """PORT's stop request for the subtree: the upstream's answer for this aggregator."""
        try:
            name = self._who(request)
            task_id = int(request.path_params["task_id"])
            self.tiers.slot(task_id, name)
        except Refused as r:
            return _error(r.status, r.code, r.detail)
        assert self.edge._http is not None
        try:
            up = await self.edge._http.get(f"/v1/tasks/{task_id}/stop",
                                           headers=self.edge._upstream_auth())
        except httpx.TransportError:
            return JSONResponse({"stop": False})
        if up.status_code in (404, 409):
            return Response(up.content, status_code=up.status_code,
                            media_type=up.headers.get("content-type"))
        return JSONResponse({"stop": up.status_code == 200 and bool(up.json().get("stop"))})

    # -- flushing -------------------------------------------------------------------------------

    def kick(self, task_id: int) -> None:
        """Flush ``task_id``'s cohort in the background now."""
        with contextlib.suppress(RuntimeError):
            job = asyncio.get_running_loop().create_task(self.flush(task_id))
            self._kicked.add(job)  # held until done: the loop keeps only weak references
            job.add_done_callback(self._kicked.discard)

    async def loop(self) -> None:
        """Flush every due cohort (time threshold, or a partial a crash left to send), and
        close cohorts nobody pushed to for ``max_open_s``."""
        while True:
            for task_id in list(self.tiers.tasks):
                try:
                    await self.flush(task_id)
                except asyncio.CancelledError:
                    raise
                except Exception:  # one task's hiccup must not stop the others' flushes
                    log.exception("task %s: flushing failed", task_id)
            await asyncio.sleep(FLUSH_POLL_S)

    async def flush(self, task_id: int) -> None:
        """Send the cohort's partial aggregate up once it is due; keep it on a transient
        failure (the loop tries again), drop it when the upstream refuses it for good."""
        async with self._lock(task_id):
            t = self.tiers.tasks.get(task_id)
            if t is None or t.cohort is None:
                return
            c = t.cohort
            if not c.buffered:
                if time.time() - c.opened >= self.max_open_s:
                    await asyncio.to_thread(self.tiers.close_cohort, t, False)
                return
            if not self.tiers.due(t, self.flush_s):
                return
            failures, next_try = self._backoff.get(task_id, (0, 0.0))
            if time.monotonic() < next_try:
                return
            alive = {ch.name for ch in self.edge.children.alive(3 * self.edge.heartbeat_s)}
            body, version, n = await asyncio.to_thread(self.tiers.seal, t, alive)
            assert self.edge._http is not None
            r: httpx.Response | None = None
            try:
                r = await self.edge._http.post(
                    f"/v1/tasks/{task_id}/updates", content=body,
                    headers={**self.edge._upstream_auth(),
                             "content-type": "application/octet-stream"})
                why = f"answered {r.status_code}"
            except httpx.TransportError as exc:
                why = f"{type(exc).__name__}: {exc}"
            if r is None or r.status_code >= 500 or r.status_code == 401:
                delay = min(30.0, 0.5 * 2 ** failures)
                self._backoff[task_id] = (failures + 1, time.monotonic() + delay)
                log.warning("task %s: the partial of version %s did not go up (%s); kept, "
                            "retrying in %.1f s", task_id, version, why, delay)
                return
            self._backoff.pop(task_id, None)
            ok = r.status_code == 200
            if not ok:
                log.warning("task %s: upstream refused the partial of version %s (%d samples "
                            "from %s): %s %s", task_id, version, n, sorted(c.buffered),
                            r.status_code, r.text[:300])
            else:
                log.info("task %s: partial of version %s sent up: %d samples from %s",
                         task_id, version, n, sorted(c.buffered))
            await asyncio.to_thread(self.tiers.close_cohort, t, ok)

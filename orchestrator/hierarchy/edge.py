"""The edge aggregator service (`plexus aggregator serve --upstream URL`).

Downstream it speaks the orchestrator's side of the agent protocol (docs/protocol.md): learner
agents enrol with it (`POST /v1/learners/enroll`, its own join token), heartbeat, and download
the task's model and shards from it (proxied upstream once and cached, so k children cost one
upstream download of each). Upstream it is one learner: it enrols with the orchestrator (or a
higher aggregator), heartbeats, and serves the agent's procedures over the same RPC layer
(`rpc.Worker`, duplex results, callbacks to its own receiver):

- `plan` (DAB) asks every child for its bound a_k, answers Σ a_k and deals the allocation back by
  each child's a_k; `benchmark` (CSA, MED, MMTT) answers the subtree's summed compute rate and its
  slowest link (an approximation: docs/hierarchy.md);
- `train` deals the shards, calls every child's `train` at once, keeps each accepted update on
  disk, and answers ONE update: the subtree's FedAvg weighted by samples with the total samples
  as its weight (`combine`), so the orchestrator's FedAvg over aggregators equals flat FedAvg;
- `join_async` / `leave_async` (SPIN, FedBuff, PORT) are `edge_async`'s: the edge is one async
  client upstream and sends one partial aggregate per cohort of its children's updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from orchestrator.hierarchy.children import Child, Children, EnrolError, token_digest
from orchestrator.hierarchy.combine import combine, split_shards
from orchestrator.store import write_atomic
from plexus import protocol

log = logging.getLogger("orchestrator.hierarchy")

PROBE_TIMEOUT_S = 300.0  # plan / benchmark: children subset-benchmark first
MAX_CACHED_SHARDS = 256
MAX_BODY_BYTES = 64 * 1024  # an enrolment or a heartbeat (facts are at most 16 KiB)


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


class _BadBody(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


async def _read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object, read at most MAX_BODY_BYTES (a larger body is a 413 before
    it is all in memory); raises _BadBody with the 400/413 to answer."""
    import json

    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BadBody(_error(413, "payload_too_large",
                                  f"the body exceeds {MAX_BODY_BYTES} bytes"))
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _BadBody(_error(400, "malformed_json", "the body must be a JSON object"))
    return body


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else None


class EdgeAggregator:
    """One edge aggregator: its children, its upstream link and its ASGI app (``self.app``)."""

    def __init__(self, *, upstream: str, upstream_join_token: str, join_token: str,
                 data_dir: Path, name: str, public_url: str, heartbeat_s: float = 5.0,
                 grace_s: float = 5.0, async_flush_s: float = 5.0) -> None:
        import rpc
        from orchestrator.hierarchy.edge_async import EdgeAsync

        self.upstream = upstream.rstrip("/")
        self.upstream_join_token = upstream_join_token
        self.join_token = join_token
        self.data_dir = data_dir
        self.name = name
        self.public_url = public_url.rstrip("/")
        self.heartbeat_s = heartbeat_s
        self.grace_s = grace_s
        self.children = Children(data_dir / "aggregator.json")
        self.asyncs = EdgeAsync(self, async_flush_s)  # async tasks (SPIN / FedBuff / PORT)
        self.receiver = rpc.CallbackReceiver(public_url=f"{self.public_url}/rpc-callbacks")
        self.worker = rpc.Worker(self._registry(), tokens=frozenset())
        # Children behind NAT long-poll this relay; only a child's own token serves its name,
        # and only this aggregator (its relay secret) may call through it.
        self.relay_secret = secrets.token_urlsafe(32)
        self.relay = rpc.Relay(caller_tokens=frozenset({self.relay_secret}),
                               authorize_worker=self._authorize_child)
        self._stubs: dict[str, Any] = {}
        self._models: dict[int, bytes] = {}  # task id -> model payload of the current round
        self._shards: dict[tuple[int, int], bytes] = {}
        # Task id -> children called for it (plan, benchmark, train): only they may read its
        # model and shards, as the orchestrator lets only a task's participants read them.
        self.granted: dict[int, set[str]] = {}
        self._http: httpx.AsyncClient | None = None
        self._busy = 0
        self.enrolled = asyncio.Event()
        self.app = Starlette(routes=[
            *self.asyncs.routes,
            Route("/healthz", self._health),
            Route("/v1/learners/enroll", self._enrol, methods=["POST"]),
            Route("/v1/learners/{learner_id:int}/heartbeat", self._heartbeat, methods=["POST"]),
            Route("/v1/tasks/{task_id:int}/model", self._model, methods=["GET"]),
            Route("/v1/tasks/{task_id:int}/shards/{n:int}", self._shard, methods=["GET"]),
            Mount("/rpc-callbacks", self.receiver.app),
            Mount("/relay", self.relay.app),
            Mount("/rpc", self.worker.app),
        ], lifespan=self._lifespan)

    def _registry(self) -> Any:
        import rpc

        served: dict[type[protocol.Call], Callable[..., Any]] = {
            protocol.Status: self.status, protocol.Plan: self.plan,
            protocol.Benchmark: self.benchmark, protocol.Train: self.train,
            protocol.RoundState: self.round_state,
            protocol.JoinAsync: self.asyncs.join_async,
            protocol.LeaveAsync: self.asyncs.leave_async}
        registry = rpc.Registry()
        for call, fn in served.items():
            protocol.check_signature(call, fn)
            registry.add(fn, name=call.name)
        return registry

    # -- lifecycle and the upstream link -----------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self._http = httpx.AsyncClient(base_url=self.upstream, timeout=60.0)
        loop = asyncio.get_running_loop()
        link = loop.create_task(self._upstream_loop())
        flusher = loop.create_task(self.asyncs.loop())
        try:
            yield
        finally:
            for job in (link, flusher):
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
            for stub in self._stubs.values():
                with contextlib.suppress(Exception):
                    stub.close()
            await self._http.aclose()
            self.worker.close()

    def facts(self) -> dict[str, Any]:
        """What the upstream learns about the subtree: the smallest memory of its alive
        children and the model factories all of them have (eligibility, docs/hierarchy.md)."""
        alive = self.children.alive(3 * self.heartbeat_s)
        mems = [c.facts.get("memory_bytes") for c in alive]
        facts: dict[str, Any] = {"role": "aggregator", "children": len(alive)}
        if alive and all(isinstance(m, int) for m in mems):
            facts["memory_bytes"] = min(m for m in mems if isinstance(m, int))
        factories = [set(c.facts.get("model_factories") or []) for c in alive]
        if factories:
            facts["model_factories"] = sorted(set.intersection(*factories))
        return facts

    async def _upstream_loop(self) -> None:
        """Enrol upstream (again after a refusal), then heartbeat; back off when unreachable."""
        assert self._http is not None
        delay = 0.5
        need_enrol = True
        while True:
            try:
                if need_enrol:
                    await self._enrol_upstream()
                    need_enrol = False
                else:
                    lid = self.children.upstream["learner_id"]
                    r = await self._http.post(f"/v1/learners/{lid}/heartbeat",
                                              json={"facts": self.facts()},
                                              headers=self._upstream_auth())
                    if r.status_code in (401, 403, 404):
                        need_enrol = True
                        continue
                    r.raise_for_status()
                delay = 0.5
                await asyncio.sleep(self._upstream_interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("upstream %s: %s; retrying in %.1f s", self.upstream, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    _upstream_interval = 10.0

    def _upstream_auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.children.upstream.get('token', '')}"}

    async def _enrol_upstream(self) -> None:
        assert self._http is not None
        body: dict[str, Any] = {"join_token": self.upstream_join_token, "name": self.name,
                                "facts": self.facts(), "endpoint": f"{self.public_url}/rpc"}
        if self.children.upstream.get("token"):
            body["secret"] = self.children.upstream["token"]
        r = await self._http.post("/v1/learners/enroll", json=body)
        if r.status_code >= 400:
            raise RuntimeError(f"enrolment answered {r.status_code}: {r.text[:300]}")
        answer = r.json()
        self.children.upstream = {"learner_id": int(answer["learner_id"]),
                                  "token": str(answer["token"])}
        await asyncio.to_thread(self.children.save)  # the secret survives a restart
        self.worker.tokens = frozenset({self.children.upstream["token"]})
        self._upstream_interval = float(answer.get("heartbeat_interval_s", 10.0))
        log.info("enrolled upstream at %s as %s (learner %s)", self.upstream, self.name,
                 answer["learner_id"])
        self.enrolled.set()

    # -- downstream REST: enrolment, heartbeats, model and shards ---------------------------

    async def _health(self, _request: Request) -> Response:
        return JSONResponse({"ok": True, "role": "aggregator", "upstream": self.upstream,
                             "enrolled": self.enrolled.is_set(),
                             "children": len(self.children.alive(3 * self.heartbeat_s))})

    async def _enrol(self, request: Request) -> Response:
        try:
            body = await _read_json(request)
        except _BadBody as bad:
            return bad.response
        token = body.get("join_token")
        if not isinstance(token, str) or not secrets.compare_digest(
                token_digest(token), token_digest(self.join_token)):  # digests: any text compares
            return _error(401, "bad_join_token", "wrong join token for this aggregator")
        secret = body.get("secret")
        try:
            child = await asyncio.to_thread(
                self.children.enrol, body.get("name"), body.get("endpoint"),
                body.get("facts", {}), secret if isinstance(secret, str) else None)
        except EnrolError as exc:
            return _error(exc.status, exc.code, str(exc))
        self._stubs.pop(child.name, None)  # a new endpoint: a new stub
        return JSONResponse({"learner_id": child.id, "token": child.token,
                             "heartbeat_interval_s": self.heartbeat_s,
                             "relay_url": f"{self.public_url}/relay"})

    def _authorize_child(self, name: str, token: str) -> bool:
        child = self.children.by_token(token)
        return child is not None and child.name == name

    def _child(self, request: Request) -> Child | None:
        return self.children.by_token(_bearer(request))

    def _reader(self, request: Request) -> Response | None:
        """None when the bearer is a child taking part in the path's task, else the 401/403."""
        child = self._child(request)
        if child is None:
            return _error(401, "unauthorized", "a learner's own token is needed")
        task_id = int(request.path_params["task_id"])
        if child.name not in self.granted.get(task_id, set()):
            return _error(403, "not_a_participant",
                          f"learner {child.name} takes no part in task {task_id}")
        return None

    async def _heartbeat(self, request: Request) -> Response:
        child = self._child(request)
        if child is None or child.id != request.path_params["learner_id"]:
            return _error(401, "unauthorized", "a learner's own token is needed")
        try:
            body = await _read_json(request)
        except _BadBody as bad:
            return bad.response
        self.children.heartbeat(child, body.get("facts"))
        return JSONResponse({"ok": True})

    async def _fetch(self, path: str) -> bytes:
        assert self._http is not None
        r = await self._http.get(path, headers=self._upstream_auth())
        r.raise_for_status()
        return r.content

    async def _model(self, request: Request) -> Response:
        if (refused := self._reader(request)) is not None:
            return refused
        task_id = int(request.path_params["task_id"])
        payload = self._models.get(task_id)
        if payload is None:
            return await self._proxy(f"/v1/tasks/{task_id}/model")
        return Response(payload, media_type="application/octet-stream")

    async def _shard(self, request: Request) -> Response:
        if (refused := self._reader(request)) is not None:
            return refused
        key = (int(request.path_params["task_id"]), int(request.path_params["n"]))
        if key not in self._shards:
            path = f"/v1/tasks/{key[0]}/shards/{key[1]}"
            try:
                payload = await self._fetch(path)
            except httpx.HTTPStatusError:
                return await self._proxy(path)  # the upstream's own error, as it said it
            if len(self._shards) >= MAX_CACHED_SHARDS:
                self._shards.pop(next(iter(self._shards)))
            self._shards[key] = payload  # shards never change: one upstream download each
        return Response(self._shards[key], media_type="application/octet-stream")

    async def _proxy(self, path: str) -> Response:
        assert self._http is not None
        try:
            r = await self._http.get(path, headers=self._upstream_auth())
        except httpx.TransportError as exc:
            return _error(502, "upstream_unreachable", f"{self.upstream}: {exc}")
        return Response(r.content, status_code=r.status_code,
                        media_type=r.headers.get("content-type"))

    # -- calls to the children ----------------------------------------------------------------

    def _stub(self, child: Child) -> Any:
        import rpc

        stub = self._stubs.get(child.name)
        if stub is None:
            # Straight to the child's worker, or through our own relay (as the orchestrator's
            # gateway reaches relayed agents through its relay).
            url, token = ((child.endpoint, child.token) if child.endpoint
                          else (f"{self.public_url}/relay/{child.name}", self.relay_secret))
            stub = rpc.connect(url, token=token, duplex=True, timeout=None,
                               callback=self.receiver, poll_interval_s=1.0)
            self._stubs[child.name] = stub
        return stub

    async def _gather(self, calls: dict[str, protocol.Call], timeout_s: float
                      ) -> dict[str, Any]:
        """Call each alive child named in ``calls`` at once; the answers that came back in
        ``timeout_s`` seconds (a failed or late child is left out and logged)."""
        by_name = {c.name: c for c in self.children.alive(3 * self.heartbeat_s)}
        names = [n for n in calls if n in by_name]
        for n in names:  # granted before the call, as the orchestrator's gateway does
            task_id = getattr(calls[n], "task_id", None)
            if isinstance(task_id, int):
                self.granted.setdefault(task_id, set()).add(n)

        async def one(name: str, call: protocol.Call) -> Any:
            return await self._stub(by_name[name])[call.name].acall(*call.args())

        results = await asyncio.gather(
            *(asyncio.wait_for(one(n, calls[n]), timeout_s) for n in names),
            return_exceptions=True)
        out: dict[str, Any] = {}
        for name, res in zip(names, results, strict=True):
            if isinstance(res, BaseException):
                log.warning("child %s: %s: %s", name, type(res).__name__, res)
            else:
                out[name] = res
        return out

    # -- the agent procedures, served upstream -------------------------------------------------

    def status(self) -> dict[str, Any]:
        """`{name, busy, state, facts, async, children}` (the agent's status, for a subtree)."""
        return {"name": self.name, "busy": self._busy > 0, "state": None,
                "facts": self.facts(), "async": self.asyncs.status(),
                "children": [c.name for c in self.children.alive(3 * self.heartbeat_s)]}

    async def round_state(self, distribution: dict[str, float], reveal: bool = False,
                          seed: int | None = None) -> dict[str, Any]:
        """Children draw their own stressor states when they train; nothing to reveal here."""
        return {"state": None}

    async def plan(self, task: dict[str, Any], task_id: int) -> dict[str, int]:
        """DAB through the tier: each child computes its own bound a_k (eq. 3.5); the subtree
        asks for Σ a_k and later deals each child exactly its a_k."""
        alive = self.children.alive(3 * self.heartbeat_s)
        answers = await self._gather(
            {c.name: protocol.Plan(task=task, task_id=task_id) for c in alive}, PROBE_TIMEOUT_S)
        shares = {n: int(a["a_k"]) for n, a in answers.items()
                  if isinstance(a, dict) and isinstance(a.get("a_k"), int)}
        await asyncio.to_thread(self.children.set_shares, task_id, shares)
        return {"a_k": sum(max(0, a) for a in shares.values())}

    async def benchmark(self, task: dict[str, Any], task_id: int,
                        state: str | None = None) -> dict[str, Any]:
        """Centralized allocators through the tier: the subtree's summed compute (samples/s)
        and its slowest bandwidth (bytes/s); allocations are dealt by compute share."""
        alive = self.children.alive(3 * self.heartbeat_s)
        answers = await self._gather(
            {c.name: protocol.Benchmark(task=task, task_id=task_id, state=state) for c in alive},
            PROBE_TIMEOUT_S)
        rates = {n: (float(a["bandwidth"]), float(a["compute"])) for n, a in answers.items()
                 if isinstance(a, dict) and "bandwidth" in a and "compute" in a}
        if not rates:
            raise RuntimeError(f"no child of aggregator {self.name} answered benchmark")
        await asyncio.to_thread(self.children.set_shares, task_id,
                                {n: max(1, round(c * 1000)) for n, (_b, c) in rates.items()})
        return {"bandwidth": min(b for b, _ in rates.values()),
                "compute": sum(c for _, c in rates.values()), "state": state or "idle"}

    async def train(self, task: dict[str, Any], task_id: int, round: int, shards: list[int],
                    deadline_s: float, state: str | None = None) -> dict[str, Any]:
        """Deal ``shards`` to the children, train them all at once, keep every accepted update
        on disk and answer the subtree's FedAvg with its total samples as the weight."""
        from plexus.spec import load_spec
        from plexus.tensors import decode_state

        spec = load_spec(task)
        if not isinstance(shards, list) or not all(isinstance(s, int) for s in shards):
            raise ValueError("shards must be a list of shard numbers")
        if not isinstance(deadline_s, int | float) or not deadline_s > 0:
            raise ValueError("deadline_s must be a positive number of seconds")
        self._busy += 1
        try:
            # One upstream download of the round's model, served to every child.
            self._models[task_id] = await self._fetch(f"/v1/tasks/{task_id}/model")
            reference, _meta = decode_state(self._models[task_id])
            alive = self.children.alive(3 * self.heartbeat_s)
            known = self.children.shares.get(str(task_id), {})
            shares = {c.name: known.get(c.name, 1) if known else 1 for c in alive}
            deal = split_shards(shards, shares)
            answers = await self._gather(
                {n: protocol.Train(task=task, task_id=task_id, round=round, shards=ids,
                                   deadline_s=deadline_s, state=state)
                 for n, ids in deal.items() if ids}, self._wait_s(spec, deadline_s))
            per_shard = spec.partition.shard_size * spec.training.iterations
            updates = await asyncio.to_thread(self._accept, task_id, round, answers, deal,
                                              per_shard, reference)
        finally:
            self._busy -= 1
        part = await asyncio.to_thread(combine, updates)
        if part.state is None:
            return {"params": reference, "samples_trained": 0, "children": part.samples}
        await asyncio.to_thread(self._keep, task_id, round, None, part.state, part.weight)
        return {"params": part.state, "samples_trained": part.weight,
                "children": part.samples}

    def _wait_s(self, spec: Any, deadline_s: float) -> float:
        """How long to wait for the children: our own grace past the deadline, but never past
        the middle of the upstream's grace (D + grace is its cut-off), so the subtree's update
        still arrives in time."""
        wait = deadline_s + self.grace_s
        if spec.sync is not None:
            wait = min(wait, spec.sync.deadline_s + spec.sync.grace_s / 2)
        return max(wait, min(deadline_s, 1.0))

    def _accept(self, task_id: int, round: int, answers: dict[str, Any],
                deal: dict[str, list[int]], per_shard: int, reference: dict[str, Any]
                ) -> dict[str, tuple[Any, int]]:
        """The children's updates that pass the orchestrator's own checks (names, shapes,
        dtypes, finite values; samples within what the child was given), each kept on disk."""
        from plexus.errors import BadTensors
        from plexus.tensors import validate_state

        out: dict[str, tuple[Any, int]] = {}
        for name, ans in answers.items():
            try:
                params = ans["params"]
                n = int(ans["samples_trained"])
                if n < 0:
                    raise ValueError(f"samples_trained is {n}")
                validate_state(params, reference)
            except (BadTensors, KeyError, TypeError, ValueError) as exc:
                log.warning("child %s: bad answer: %s", name, exc)
                continue
            n = min(n, len(deal.get(name, [])) * per_shard)  # no claim beyond its allocation
            self._keep(task_id, round, name, params, n)
            out[name] = (params, n)
        return out

    def _keep(self, task_id: int, round: int, name: str | None, state: Any,
              samples: int) -> None:
        """Write a child's update (``name``) or, for None, the partial sent up, fsync'd."""
        from plexus.tensors import encode_state

        where = self.data_dir / "updates" / str(task_id)
        path = (where / str(round) / f"{name}.safetensors" if name is not None
                else where / f"{round}.partial.safetensors")  # no child name can clash
        write_atomic(path, encode_state(state, {"round": round, "samples": samples}))


def serve(edge: EdgeAggregator, host: str, port: int) -> None:
    """Serve ``edge.app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(edge.app, host=host, port=port, log_level="warning")

"""A stand-in for the orchestrator's agent-facing REST API, served by a real uvicorn server.

It implements the calls of docs/protocol.md an agent makes (enroll, heartbeat, shards, model)
over plexus.shards / plexus.tensors, so agent tests do not depend on the orchestrator package
being finished. Tests should move to the real orchestrator once it serves these routes.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import rpc
from plexus.datasets import load_dataset
from plexus.models import build_model
from plexus.shards import encode_shard, partition
from plexus.spec import TaskSpec, load_spec
from plexus.tensors import encode_state

JOIN_TOKEN = "join-secret"

TASK: dict[str, Any] = {
    "name": "agent-test",
    "model": "twonn",
    "seed": 0,
    "dataset": {"name": "synthetic", "samples": 750},
    "partition": {"kind": "iid", "shard_size": 100},
    "training": {"optimizer": "sgd", "lr": 0.1, "batch_size": 25, "iterations": 2},
    "mode": "sync",
    "sync": {"allocator": "dab", "deadline_s": 30.0, "benchmark_shards": 2},
}


@dataclass
class StandIn:
    """State of the stand-in orchestrator; tests read it and wait on its condition."""

    spec: TaskSpec
    shards: list[bytes]
    model: bytes
    learners: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> name
    enrolls: int = 0
    heartbeats: int = 0
    shard_gets: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""

    def wait_for(self, predicate: Any, timeout_s: float = 30.0) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout_s), "condition not met in time"

    def forget_learners(self) -> None:
        with self.changed:
            self.tokens.clear()

    def app(self) -> Starlette:
        def error(status: int, code: str, detail: str) -> JSONResponse:
            return JSONResponse({"error": code, "detail": detail}, status_code=status)

        def authed(request: Request) -> str | None:
            header = request.headers.get("authorization", "")
            return self.tokens.get(header.removeprefix("Bearer "))

        async def enroll(request: Request) -> Response:
            body = await request.json()
            if body.get("join_token") != JOIN_TOKEN:
                return error(401, "unauthorized", "join_token is wrong")
            name = body["name"]
            with self.changed:
                record = self.learners.setdefault(name, {"id": len(self.learners) + 1})
                record.update(facts=body["facts"], endpoint=body["endpoint"])
                token = secrets.token_hex(8)
                record["token"] = token
                self.tokens[token] = name
                self.enrolls += 1
                self.changed.notify_all()
            return JSONResponse(
                {
                    "learner_id": record["id"],
                    "name": name,
                    "token": token,
                    "relay_url": None,
                    "heartbeat_interval_s": 0.2,
                },
                status_code=201,
            )

        async def heartbeat(request: Request) -> Response:
            if authed(request) is None:
                return error(401, "unauthorized", "unknown learner token")
            with self.changed:
                self.heartbeats += 1
                self.changed.notify_all()
            return JSONResponse({"ok": True})

        async def shard(request: Request) -> Response:
            if authed(request) is None:
                return error(401, "unauthorized", "unknown learner token")
            n = int(request.path_params["n"])
            if not 0 <= n < len(self.shards):
                return error(404, "shard_not_found", f"shard {n} not found")
            with self.changed:
                self.shard_gets += 1
            return Response(self.shards[n], media_type="application/octet-stream")

        async def model(request: Request) -> Response:
            if authed(request) is None:
                return error(401, "unauthorized", "unknown learner token")
            return Response(self.model, media_type="application/octet-stream")

        return Starlette(
            routes=[
                Route("/v1/learners/enroll", enroll, methods=["POST"]),
                Route("/v1/learners/{lid:int}/heartbeat", heartbeat, methods=["POST"]),
                Route("/v1/tasks/{tid:int}/shards/{n:int}", shard, methods=["GET"]),
                Route("/v1/tasks/{tid:int}/model", model, methods=["GET"]),
            ]
        )


def make_standin(task: dict[str, Any] = TASK) -> StandIn:
    spec = load_spec(task)
    data = load_dataset(spec.dataset, seed=spec.seed)
    shards = [
        encode_shard(
            data.train_x[idx], data.train_y[idx], {"task_id": 1, "shard": i, "samples": len(idx)}
        )
        for i, idx in enumerate(partition(data.train_y, spec.partition, spec.seed))
    ]
    net = build_model(spec.model, data.input_shape, data.num_classes)
    return StandIn(spec=spec, shards=shards, model=encode_state(net.state_dict(), {"version": 5}))


@pytest.fixture
def standin() -> Iterator[StandIn]:
    state = make_standin()
    with rpc.ServerThread(state.app()).start() as server:
        state.url = server.url
        yield state

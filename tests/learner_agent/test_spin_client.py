"""SPIN's client against a real HTTP server with the async routes: PORT's stop, a task's end.

Also the argument checks of `join_async` (no server needed).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Header, HTTPException

from learner_agent.async_runs import AsyncRuns
from learner_agent.client import OrchestratorClient
from learner_agent.errors import BadTask
from learner_agent.spin_client import SpinClient
from orchestrator.aggregation import create_aggregator
from orchestrator.api.asynchronous import make_async_router
from orchestrator.runs.async_runner import AsyncTaskRunner
from plexus.datasets import load_dataset
from plexus.models import build_model
from plexus.spec import DatasetSpec
from plexus.tensors import decode_state, encode_state

TOKENS = {"tok-slow": "slow", "tok-fast1": "fast1", "tok-fast2": "fast2"}
TASK = 5


def _learner(authorization: str | None = Header(None)) -> str:
    token = (authorization or "").removeprefix("Bearer ").strip()
    if token not in TOKENS:
        raise HTTPException(401, "unknown learner token")
    return TOKENS[token]


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.01)


@pytest.fixture
def port_server() -> Iterator[dict[str, Any]]:
    """A PORT task (K = 2, staleness bound 1, draws every 0.5 s) behind a real server."""
    ds = load_dataset(DatasetSpec(name="synthetic", samples=200, test_fraction=0.5), seed=0)
    model = build_model("twonn", ds.input_shape, ds.num_classes)
    initial = {n: t.detach().clone() for n, t in model.state_dict().items()}
    core = create_aggregator("port", initial, k=2, staleness_bound=1, concurrency=5,
                             selection_interval_s=0.5)
    runner = AsyncTaskRunner(core)
    runner.start()
    app = FastAPI()
    app.include_router(make_async_router({TASK: runner}, _learner))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "server start")
    try:
        yield {"url": f"http://127.0.0.1:{sock.getsockname()[1]}", "runner": runner, "ds": ds}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        runner.close()
        sock.close()


def test_port_stop_request_cuts_training_short_and_the_update_is_pushed(
    port_server: dict[str, Any],
) -> None:
    url, runner, ds = port_server["url"], port_server["runner"], port_server["ds"]
    http = httpx.Client(base_url=url, timeout=30.0)
    # Ten samples that all arrive at once; 2000 epochs over them would take seconds.
    slow = SpinClient(http, TASK, build_model("twonn", ds.input_shape, ds.num_classes),
                      ds.train_x[:10], ds.train_y[:10], rate=1e4, pull_threshold=10,
                      epochs=2000, retry_s=0.02,
                      headers=lambda: {"Authorization": "Bearer tok-slow"})
    stop = threading.Event()
    worker = threading.Thread(target=slow.run, args=(stop,), daemon=True)
    worker.start()
    try:
        wait_for(lambda: slow.report.pulls > slow.report.not_picked, 20, "slow getting v0")
        # Two more learners pull at once, so the next draw (0.5 s on) picks both; their two
        # pushes fill K = 2 and aggregate, and slow, still training from version 0 of a server
        # now at 1, is told to stop.
        fast = [{"Authorization": f"Bearer tok-fast{i}"} for i in (1, 2)]
        models: dict[int, httpx.Response] = {}
        end = time.monotonic() + 20
        while len(models) < 2:
            for i, h in enumerate(fast):
                if i not in models:
                    r = http.post(f"/v1/tasks/{TASK}/pull", json={"n_samples": 10}, headers=h)
                    if r.status_code == 200:
                        models[i] = r
            assert time.monotonic() < end, "the other learners were never drawn"
            time.sleep(0.01)
        for i, h in enumerate(fast):
            state, meta = decode_state(models[i].content)
            pushed = http.post(f"/v1/tasks/{TASK}/updates", headers=h, content=encode_state(
                state, {"base_version": meta["version"], "n_samples": 10}))
            assert pushed.status_code == 200, pushed.text
        assert runner.status()["version"] == 1
        worker.join(timeout=20)
    finally:
        stop.set()
        worker.join(timeout=20)
    assert not worker.is_alive()
    assert slow.report.stopped_early == 1
    assert slow.report.pushes == 1 and slow.report.versions == [0]
    assert runner.status()["accepted"] == 3 and runner.status()["rejected"] == 0


def test_a_task_that_is_gone_ends_the_run_normally(port_server: dict[str, Any]) -> None:
    ds = port_server["ds"]
    http = httpx.Client(base_url=port_server["url"], timeout=30.0,
                        headers={"Authorization": "Bearer tok-slow"})
    client = SpinClient(http, TASK + 1, build_model("twonn", ds.input_shape, ds.num_classes),
                        ds.train_x[:10], ds.train_y[:10], rate=1e4, pull_threshold=5)
    report = client.run(threading.Event())
    assert report.pushes == 0 and report.ended is not None and "404" in report.ended


def test_join_async_checks_its_arguments() -> None:
    runs = AsyncRuns(OrchestratorClient("http://127.0.0.1:9"))
    spec = {"mode": "async", "dataset": {"name": "digits"}}
    with pytest.raises(BadTask, match="asynchronous"):
        runs.join({"mode": "sync"}, 1, 0)
    with pytest.raises(BadTask, match="client"):
        runs.join(spec, 1, -1)
    with pytest.raises(BadTask, match="task_id"):
        runs.join(spec, True, 0)
    with pytest.raises(BadTask):
        runs.join({"mode": "async", "async": {"k": 0}}, 1, 0)
    assert runs.progress() == [] and runs.leave(1) == {"left": False}


def test_a_storage_full_answer_is_retried_and_the_client_goes_on() -> None:
    # The orchestrator answers 507 storage_full to an update it could not store (its data
    # directory is full); the chaos matrix's disk_full cell showed clients that took it as
    # fatal, which left the async task running forever. Here a real server answers the first
    # two pushes 507; the client backs off, trains again and its third push is accepted.
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response

    ds = load_dataset(DatasetSpec(name="synthetic", samples=200, test_fraction=0.5), seed=0)
    model = build_model("twonn", ds.input_shape, ds.num_classes)
    initial = {n: t.detach().clone() for n, t in model.state_dict().items()}
    runner = AsyncTaskRunner(create_aggregator("spin", initial, k=1, pi_s=None))
    runner.start()
    app = FastAPI()
    full = {"left": 2}

    @app.middleware("http")
    async def disk_full(request: Request, call_next: Any) -> Response:
        if request.url.path.endswith("/updates") and full["left"] > 0:
            full["left"] -= 1
            return JSONResponse({"error": "storage_full", "detail": "no space"},
                                status_code=507)
        response: Response = await call_next(request)
        return response

    app.include_router(make_async_router({TASK: runner}, _learner))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 20, "server start")
        http = httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=30.0,
                            headers={"Authorization": "Bearer tok-slow"})
        client = SpinClient(http, TASK, build_model("twonn", ds.input_shape, ds.num_classes),
                            ds.train_x[:10], ds.train_y[:10], rate=1e4, pull_threshold=10,
                            retry_s=0.01)
        report = client.run(threading.Event(), max_rounds=1)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        runner.close()
        sock.close()
    assert full["left"] == 0
    assert report.unreachable == 2, report
    assert report.pushes == 1 and report.ended == "pushed 1 updates"
    assert runner.status()["accepted"] == 1

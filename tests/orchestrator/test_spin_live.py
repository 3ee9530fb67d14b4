"""Live SPIN: a real HTTP server with the async endpoints, three learners running alg. 1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI, Header, HTTPException

from learner_agent.spin_client import SpinClient
from orchestrator.aggregation import create_aggregator
from orchestrator.api.asynchronous import make_async_router
from orchestrator.runs.async_runner import AsyncTaskRunner
from plexus.datasets import load_dataset
from plexus.models import build_model
from plexus.spec import DatasetSpec
from plexus.tensors import encode_state
from plexus.training import evaluate, train

TOKENS = {"tok-a": "a", "tok-b": "b", "tok-c": "c"}


def _learner(authorization: str | None = Header(None)) -> str:
    token = (authorization or "").removeprefix("Bearer ").strip()
    if token not in TOKENS:
        raise HTTPException(401, "unknown learner token")
    return TOKENS[token]


@pytest.fixture
def live() -> Iterator[dict[str, Any]]:
    torch.manual_seed(0)
    ds = load_dataset(DatasetSpec(name="synthetic", samples=900, test_fraction=0.33), seed=0)
    model = build_model("twonn", ds.input_shape, ds.num_classes)
    # A weak deployed model: a few steps on 30 samples, so fine-tuning has room to help.
    train(
        model, ds.train_x[:30], ds.train_y[:30], passes=1, batch_size=30, optimizer="sgd", lr=0.05
    )
    tx, ty = torch.from_numpy(ds.test_x), torch.from_numpy(ds.test_y)
    scorer = build_model("twonn", ds.input_shape, ds.num_classes)

    def score(state: Any) -> tuple[float, float]:
        scorer.load_state_dict(state)
        return evaluate(scorer, tx, ty)

    initial = {n: t.detach().clone() for n, t in model.state_dict().items()}
    core = create_aggregator("spin", initial, k=3, pi_s=0.5)
    runner = AsyncTaskRunner(core, evaluate=score, max_updates=24)
    runner.start()
    app = FastAPI()
    app.include_router(make_async_router({7: runner}, _learner))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield {
            "url": f"http://127.0.0.1:{port}",
            "runner": runner,
            "ds": ds,
            "initial_accuracy": score(initial)[1],
        }
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        runner.close()
        sock.close()


def test_three_learners_raise_accuracy(live: dict[str, Any]) -> None:
    ds, runner = live["ds"], live["runner"]
    stop = threading.Event()
    clients = []
    for i, token in enumerate(TOKENS):
        http = httpx.Client(base_url=live["url"], headers={"authorization": f"Bearer {token}"})
        sl = slice(30 + i * 150, 30 + (i + 1) * 150)
        model = build_model("twonn", ds.input_shape, ds.num_classes)
        clients.append(
            SpinClient(
                http,
                7,
                model,
                ds.train_x[sl],
                ds.train_y[sl],
                rate=60.0,
                pull_threshold=8,
                epochs=3,
                lr=0.05,
                seed=i,
            )
        )
    threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    # The task ends at 24 updates, or the clients stop once every sample has arrived and been
    # trained on (a loaded machine trains more samples per round, so there are fewer rounds).
    end = time.monotonic() + 60
    while not runner.finished.wait(timeout=0.2) and any(t.is_alive() for t in threads):
        assert time.monotonic() < end, f"no end within 60 s: {runner.status()}"
    stop.set()
    for t in threads:
        t.join(timeout=20)
    ended = [c.report.ended for c in clients]
    assert runner.finished.is_set() or all(
        e == "every sample has arrived and been trained on" for e in ended), (
        ended, runner.status())
    status = runner.status()
    assert status["rejected"] == 0
    assert all(c.report.pushes >= 1 for c in clients)
    best = max(h["accuracy"] for h in status["history"])
    assert best > live["initial_accuracy"] + 0.1, (live["initial_accuracy"], status["history"])


def test_malformed_updates_are_rejected_and_counted(live: dict[str, Any]) -> None:
    runner = live["runner"]
    h = {"authorization": "Bearer tok-a"}
    with httpx.Client(base_url=live["url"], headers=h) as http:
        assert http.post("/v1/tasks/7/pull", json={"n_samples": 0}).status_code == 422
        assert (
            httpx.post(live["url"] + "/v1/tasks/7/pull", json={"n_samples": 5}).status_code == 401
        )
        assert http.post("/v1/tasks/99/pull", json={"n_samples": 5}).status_code == 404
        r = http.post("/v1/tasks/7/pull", json={"n_samples": 5})
        assert r.status_code == 200 and r.headers["x-model-version"] == "0"
        good = {n: t.clone() for n, t in runner.core.model.items()}
        name = next(iter(good))
        bad_bodies = {
            "garbage": b"not safetensors at all",
            "shape": encode_state(
                {**good, name: torch.zeros(3)}, {"base_version": 0, "n_samples": 5}
            ),
            "dtype": encode_state(
                {**good, name: good[name].double()}, {"base_version": 0, "n_samples": 5}
            ),
            "nan": encode_state(
                {**good, name: torch.full_like(good[name], float("nan"))},
                {"base_version": 0, "n_samples": 5},
            ),
            "meta": encode_state(good, {"n_samples": 5}),
        }
        for label, body in bad_bodies.items():
            ans = http.post("/v1/tasks/7/updates", content=body)
            assert ans.status_code == 422, label
            assert ans.json()["error"] == "bad_update"
        stale = http.post(
            "/v1/tasks/7/updates", content=encode_state(good, {"base_version": 42, "n_samples": 5})
        )
        # A base version this learner was never sent answers no pull: refused by admission.
        assert stale.status_code == 403 and stale.json()["error"] == "no_outstanding_pull"
        assert runner.status()["rejected"] == len(bad_bodies)
        assert runner.status()["refused"] == {"no_outstanding_pull": 1}
        assert runner.core.queue == [] and runner.core.version == 0
        ok = http.post(
            "/v1/tasks/7/updates", content=encode_state(good, {"base_version": 0, "n_samples": 5})
        )
        assert ok.status_code == 200 and ok.json()["accepted"] is True

"""The experiments-only adversary: parsing, each attack's transform, the hidden flag, and the
hook in the round trainer. Nothing a task spec holds can switch it on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from learner_agent import adversary
from learner_agent.adversary import Adversary, parse
from learner_agent.trainer import train_round
from plexus.cli import app
from plexus.errors import SpecError
from plexus.spec import parse_spec
from plexus.tensors import decode_state

from .conftest import make_task_data

BASE = {"w": torch.tensor([1.0, 1.0]), "steps": torch.tensor(3)}
TRAINED = {"w": torch.tensor([2.0, 0.0]), "steps": torch.tensor(4)}  # δ = (1, −1)


@pytest.fixture(autouse=True)
def no_adversary_left() -> Iterator[None]:
    yield
    adversary.configure(None)


def test_parse() -> None:
    a = parse("sign_flip:scale=2")
    assert a.attack == "sign_flip" and a.get("scale") == 2.0
    assert parse(" ipm ").get("eps") == 0.5
    with pytest.raises(ValueError, match="unknown attack 'bogus'"):
        parse("bogus")
    with pytest.raises(ValueError, match="key=number"):
        parse("gaussian:sigma")
    with pytest.raises(ValueError, match="unknown adversary setting"):
        parse("gaussian:size=3")


def test_transforms_by_hand() -> None:
    def w(a: Adversary) -> list[float]:
        return [float(v) for v in a.update(TRAINED, BASE)["w"]]

    assert w(parse("sign_flip")) == [0.0, 2.0]  # base − δ
    assert w(parse("sign_flip:scale=2")) == [-1.0, 3.0]
    assert w(parse("ipm:eps=0.5")) == [0.5, 1.5]  # base − ε δ
    assert w(parse("alie:z=1")) == [3.0, 1.0]  # base + δ + z|δ|
    assert parse("sign_flip").update(TRAINED, BASE)["steps"] == 3  # integers stay as the base
    g1, g2 = parse("gaussian:sigma=1"), parse("gaussian:sigma=1")
    assert torch.equal(g1.update(TRAINED, BASE)["w"], g2.update(TRAINED, BASE)["w"])
    assert w(parse("label_flip")) == [2.0, 0.0] and w(parse("inflate")) == [2.0, 0.0]
    replay = parse("stale_replay")
    assert w(replay) == [2.0, 0.0]
    later = {"w": torch.tensor([5.0, 5.0]), "steps": torch.tensor(9)}
    assert [float(v) for v in replay.update(later, TRAINED)["w"]] == [2.0, 0.0]
    y = np.array([0, 3, 9])
    assert parse("label_flip").labels(y, 10).tolist() == [9, 6, 0]
    assert parse("sign_flip").labels(y, 10) is y
    assert parse("inflate:factor=1000").samples(20) == 20000
    assert parse("alie").samples(20) == 20


def test_the_flag_is_hidden_and_checked_before_anything_starts() -> None:
    runner = CliRunner()
    assert "adversary" not in runner.invoke(app, ["agent", "run", "--help"]).output
    result = runner.invoke(app, ["agent", "run", "--orchestrator", "http://127.0.0.1:9",
                                 "--join-token", "t", "--adversary", "bogus"])
    assert result.exit_code == 2
    assert "unknown attack 'bogus'" in result.output
    assert adversary.active() is None


def test_a_task_spec_cannot_switch_it_on() -> None:
    with pytest.raises(SpecError, match="adversary: unknown key"):
        parse_spec({"mode": "sync", "adversary": "sign_flip"})
    with pytest.raises(SpecError, match="unknown key"):
        parse_spec({"mode": "sync", "training": {"adversary": "sign_flip"}})


def test_round_trainer_applies_the_configured_attack() -> None:
    data = make_task_data()
    honest = train_round(data.spec, data.model, data.shards[:2], deadline=None, seed=1)
    base, _ = decode_state(data.model)
    adversary.configure("sign_flip")
    flipped = train_round(data.spec, data.model, data.shards[:2], deadline=None, seed=1)
    for name, t in base.items():
        if t.is_floating_point():
            assert torch.allclose(flipped.params[name], 2 * t - honest.params[name], atol=1e-6)
    adversary.configure("inflate:factor=1000")
    inflated = train_round(data.spec, data.model, data.shards[:2], deadline=None, seed=1)
    assert inflated.samples_trained == 1000 * honest.samples_trained
    adversary.configure("label_flip")
    flipped_labels = train_round(data.spec, data.model, data.shards[:2], deadline=None, seed=1)
    assert flipped_labels.samples_trained == honest.samples_trained
    assert any(not torch.equal(flipped_labels.params[k], v) for k, v in honest.params.items())


def _push_once(attack: str | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                            Any]:
    """One SPIN client (K = 1) pulls, trains and pushes once to a real server; answers the
    initial model, the model after the push and the aggregation record."""
    import socket
    import threading

    import httpx
    import uvicorn
    from fastapi import FastAPI

    from learner_agent.spin_client import SpinClient
    from orchestrator.aggregation import create_aggregator
    from orchestrator.api.asynchronous import make_async_router
    from orchestrator.runs.async_runner import AsyncTaskRunner
    from plexus.datasets import load_dataset
    from plexus.models import build_model
    from plexus.spec import DatasetSpec

    from .test_spin_client import _learner, wait_for

    adversary.configure(attack)
    ds = load_dataset(DatasetSpec(name="synthetic", samples=200, test_fraction=0.5), seed=0)
    torch.manual_seed(0)
    initial = build_model("twonn", ds.input_shape, ds.num_classes).state_dict()
    runner = AsyncTaskRunner(create_aggregator("spin", initial, k=1, pi_s=None))
    runner.start()
    app = FastAPI()
    app.include_router(make_async_router({5: runner}, _learner))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 20, "server start")
        http = httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=30)
        client = SpinClient(http, 5, build_model("twonn", ds.input_shape, ds.num_classes),
                            ds.train_x[:10], ds.train_y[:10], rate=1e4, pull_threshold=10,
                            headers=lambda: {"Authorization": "Bearer tok-fast1"})
        report = client.run(threading.Event(), max_rounds=1)
        assert report.pushes == 1, report.ended
        core = runner.core
        return initial, dict(core.model), core.aggregations[-1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        runner.close()
        sock.close()


def test_spin_push_path_applies_the_configured_attack() -> None:
    initial, honest, rec = _push_once(None)
    assert rec.n_samples == (10,)
    _, flipped, rec = _push_once("sign_flip")
    for name, t in initial.items():
        assert torch.allclose(flipped[name], 2 * t - honest[name], atol=1e-5)
    # Sample-count inflation meets update admission (docs/security.md): the claim exceeds the
    # samples its pull declared, so the push is refused and never aggregated.
    from learner_agent.errors import OrchestratorRefused

    try:
        with pytest.raises(OrchestratorRefused, match="n_samples_too_large"):
            _push_once("inflate:factor=1000")
    finally:
        adversary.configure(None)

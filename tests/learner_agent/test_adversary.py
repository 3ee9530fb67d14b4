"""The experiments-only adversary: parsing, each attack's transform, the hidden flag, and the
hook in the round trainer. Nothing a task spec holds can switch it on."""

from __future__ import annotations

from collections.abc import Iterator

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

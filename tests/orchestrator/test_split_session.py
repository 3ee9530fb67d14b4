"""The server half's gatekeeper: only this round's learners, only the batches their data make,
and a refused batch leaves the server half as it was."""

from __future__ import annotations

import pytest
import torch

from orchestrator.errors import Forbidden
from orchestrator.runs.split import SplitSession, split_state
from plexus.layers import build_layers
from plexus.spec import ModelSpec, SplitSpec
from plexus.split.codec import BadSplitBatch
from plexus.split.model import build_halves
from plexus.split.steps import DeviceTrainer, ServerTrainer, optimiser

LAYERS = [{"type": "Linear", "out_features": 12}, "ReLU", {"type": "Linear"}]


@pytest.fixture
def pair() -> tuple[DeviceTrainer, SplitSession]:
    torch.manual_seed(0)
    net = build_layers(ModelSpec.model_validate({"layers": LAYERS}).layers or (), (6,), 3)
    split = SplitSpec(cut=2)
    dev, srv, lays = build_halves(net, split, (6,))
    device = DeviceTrainer(dev, lays, split, optimiser(dev, "sgd", 0.1), 0.2)
    return device, SplitSession(ServerTrainer(srv, lays, 3, 4, optimiser(srv, "sgd", 0.1)))


def _batch(device: DeviceTrainer) -> dict[str, object]:
    return device.send(torch.rand(4, 6), torch.tensor([0, 1, 2, 0]))


def test_only_the_rounds_learners_and_only_their_batches(
        pair: tuple[DeviceTrainer, SplitSession]) -> None:
    device, session = pair
    session.open_round(0, {7: 2})
    with pytest.raises(Forbidden) as other:
        session.step(8, _batch(device), 100)
    assert other.value.code == "not_participant"
    for _ in range(2):
        device.finish(session.step(7, _batch(device), 100)["grads"])
    with pytest.raises(Forbidden) as spent:
        session.step(7, _batch(device), 100)
    assert spent.value.code == "split_batches_spent"
    sent = session.close_round()
    assert sent[7].steps == 2 and sent[7].received_bytes == 200
    assert session.trainer.batches == 2
    with pytest.raises(Forbidden):
        session.step(7, _batch(device), 100)  # the round is closed


def test_a_bad_batch_changes_nothing(pair: tuple[DeviceTrainer, SplitSession]) -> None:
    device, session = pair
    session.open_round(0, {7: 5})
    before = {k: v.clone() for k, v in session.trainer.server.state_dict().items()}
    message = _batch(device)
    message["labels"] = message["labels"] + 5  # type: ignore[operator]
    with pytest.raises(BadSplitBatch):
        session.step(7, message, 100)
    after = session.trainer.server.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert session.trainer.batches == 0


def test_split_state_takes_one_half() -> None:
    state = {"device.body.0.weight": 1, "server.rest.0.bias": 2}
    assert split_state(state, "device") == {"body.0.weight": 1}
    assert split_state(state, "server") == {"rest.0.bias": 2}

"""The round trainer halts at the deadline mid-pass and reports the true sample count."""

from __future__ import annotations

import torch

from learner_agent.trainer import train_round
from plexus.tensors import decode_state

from .conftest import make_task_data


class BatchClock:
    """One second per trained batch; no sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self, samples: int) -> None:
        self.now += 1.0


def test_deadline_cuts_mid_pass() -> None:
    state = make_task_data()  # shards of 100, batch 25, μ = 2: 3 shards = 12 batches per pass
    clock = BatchClock()
    result = train_round(
        state.spec, state.model, state.shards[:3], deadline=17.5, clock=clock, on_batch=clock.tick
    )
    assert result.halted
    assert result.samples_trained == 18 * 25  # 12 batches of pass 1, 6 of pass 2
    assert result.samples_allocated == 600
    assert result.model_version == 5
    initial, _ = decode_state(state.model)
    assert any(not torch.equal(initial[k], v) for k, v in result.params.items())


def test_no_deadline_trains_every_pass() -> None:
    state = make_task_data()
    result = train_round(state.spec, state.model, state.shards[:2], deadline=None)
    assert not result.halted and result.samples_trained == 400
    wire = result.to_wire()
    assert set(wire) == {
        "params",
        "model_version",
        "samples_trained",
        "samples_allocated",
        "loss",
        "download_s",
        "train_s",
        "halted",
    }

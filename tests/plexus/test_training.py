"""Training halts at a deadline between batches and reports the true sample count."""

from __future__ import annotations

import numpy as np
import torch

from plexus.datasets import load_dataset
from plexus.models import build_model
from plexus.spec import DatasetSpec
from plexus.training import evaluate, train


class BatchClock:
    """A clock that advances one second per trained batch: no sleeps, exact cut points."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self, samples: int) -> None:
        self.now += 1.0


def _data() -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset(DatasetSpec(name="synthetic", samples=400), seed=0)
    return data.train_x, data.train_y  # 320 samples = 10 batches of 32


def test_deadline_cuts_mid_pass_and_counts_true_samples() -> None:
    x, y = _data()
    clock = BatchClock()
    model = build_model("twonn", (1, 28, 28), 10)
    result = train(
        model,
        x,
        y,
        passes=3,
        batch_size=32,
        optimizer="sgd",
        lr=0.1,
        deadline=15.5,
        clock=clock,
        on_batch=clock.tick,
    )
    # Batches start at t = 0..15; the 17th check sees t = 16 ≥ 15.5: 16 batches, the second
    # pass cut after 6 of its 10 batches.
    assert result.halted
    assert result.batches == 16 and result.samples_trained == 16 * 32
    assert result.seconds == 16.0


def test_no_deadline_runs_all_passes_with_last_partial_batch() -> None:
    x, y = _data()
    result = train(
        build_model("twonn", (1, 28, 28), 10),
        x[:100],
        y[:100],
        passes=2,
        batch_size=32,
        optimizer="adam",
        lr=1e-3,
    )
    assert not result.halted and result.samples_trained == 200 and result.batches == 8


def test_deadline_already_past_trains_nothing() -> None:
    x, y = _data()
    model = build_model("twonn", (1, 28, 28), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(
        model,
        x,
        y,
        passes=1,
        batch_size=32,
        optimizer="sgd",
        lr=0.1,
        deadline=0.0,
        clock=lambda: 1.0,
    )
    assert result.halted and result.samples_trained == 0 and np.isnan(result.loss)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_training_learns_synthetic_data() -> None:
    data = load_dataset(DatasetSpec(name="synthetic", samples=1000), seed=0)
    torch.manual_seed(0)
    model = build_model("twonn", data.input_shape, data.num_classes)
    _, acc_before = evaluate(model, data.test_x, data.test_y)
    train(model, data.train_x, data.train_y, passes=3, batch_size=32, optimizer="sgd", lr=0.1)
    loss, acc = evaluate(model, data.test_x, data.test_y)
    assert acc > 0.8 > acc_before and np.isfinite(loss)

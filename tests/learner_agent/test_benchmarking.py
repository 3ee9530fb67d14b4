"""Subset benchmarking: b_k and c_k from real shards; the dummy's parameters stay apart."""

from __future__ import annotations

import torch

from learner_agent.benchmarking import (
    build_dummy,
    flops_benchmark,
    flops_predict_train_s,
    sb_predict_download_s,
    sb_predict_train_s,
    subset_benchmark,
    training_flops_per_sample,
)
from plexus.models import build_model

from .conftest import make_task_data


class StepClock:
    """Advances 0.5 s per shard fetched and 1 ms per reading otherwise."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def test_sb_measures_bandwidth_and_compute_from_shards() -> None:
    state = make_task_data()
    clock = StepClock()

    def fetch(n: int) -> bytes:
        clock.now += 0.5
        return state.shards[n]

    result = subset_benchmark(state.spec, fetch, [0, 1, 2], clock=clock)
    payload = len(state.shards[0])
    assert result.shards == 3 and result.samples == 300 and result.shard_samples == 100
    assert result.shard_bytes == payload
    # each fetch is bracketed by two clock readings: 0.5 s + 1 ms per shard
    assert abs(result.bandwidth - payload / 0.501) / result.bandwidth < 1e-6
    assert len(result.shard_download_s) == 3 and len(result.batch_sample_s) == 12
    assert result.compute > 0 and result.train_s > 0
    assert sb_predict_download_s(result, 6) == 6 * payload / result.bandwidth
    assert sb_predict_train_s(result, 1000, passes=2) == 2000 / result.compute


def test_dummy_parameters_stay_apart_from_the_real_model() -> None:
    state = make_task_data()
    real = build_model("twonn", (1, 28, 28), 10)
    before = {k: v.clone() for k, v in real.state_dict().items()}
    subset_benchmark(state.spec, lambda n: state.shards[n], [0, 1], initial_state=real.state_dict())
    assert all(torch.equal(before[k], v) for k, v in real.state_dict().items())
    dummy = build_dummy(state.spec, real.state_dict())
    real_ptrs = {p.data_ptr() for p in real.parameters()}
    assert real_ptrs.isdisjoint(p.data_ptr() for p in dummy.parameters())
    assert all(
        torch.equal(a, b) for a, b in zip(real.parameters(), dummy.parameters(), strict=True)
    )


def test_flops_baseline() -> None:
    model = build_model("twonn", (1, 28, 28), 10)
    per_sample = training_flops_per_sample(model, (1, 28, 28))
    assert per_sample == 6 * (784 * 50 + 50 * 20 + 20 * 10)
    flops = flops_benchmark(size=64, repeats=3)
    assert flops > 0
    assert flops_predict_train_s(flops, per_sample, 500, passes=2) == 2 * 500 * per_sample / flops

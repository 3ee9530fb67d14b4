"""Subset benchmarking: b_k and c_k from real shards; the dummy's parameters stay apart."""

from __future__ import annotations

import torch

from learner_agent.benchmarking import (
    MAX_TIMED_PASSES,
    MIN_TIMED_S,
    SBResult,
    build_dummy,
    flops_benchmark,
    flops_predict_train_s,
    sb_predict_download_s,
    sb_predict_train_s,
    subset_benchmark,
    training_flops_per_sample,
)
from learner_agent.calibration import ObservedRates
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
    # 1 ms per clock reading: one timed pass of 12 batches lasts ~13 ms, so SB repeats passes
    # until they add up to MIN_TIMED_S and pools them.
    assert result.passes > 1 and result.train_s >= MIN_TIMED_S
    assert len(result.shard_download_s) == 3 and len(result.batch_sample_s) == 12 * result.passes
    assert abs(result.compute - result.passes * 300 / result.train_s) < 1e-9
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


def test_sb_times_one_pass_when_it_is_long_enough_and_caps_the_repeats() -> None:
    state = make_task_data()
    once = subset_benchmark(state.spec, lambda n: state.shards[n], [0], clock=StepClock())
    assert once.passes > 1
    class SlowClock(StepClock):
        def __call__(self) -> float:  # 1 s per reading: one pass is already long enough
            self.now += 1.0
            return self.now

    slow = subset_benchmark(state.spec, lambda n: state.shards[n], [0], clock=SlowClock())
    assert slow.passes == 1

    class FrozenClock(StepClock):
        def __call__(self) -> float:  # time never advances: the repeat cap ends the loop
            return 0.0

    frozen = subset_benchmark(state.spec, lambda n: state.shards[n], [0], clock=FrozenClock())
    assert frozen.passes == MAX_TIMED_PASSES


def _sb(compute: float) -> SBResult:
    return SBResult(bandwidth=1e6, compute=compute, shard_bytes=1e3, shard_samples=100,
                    download_s=1.0, train_s=1.0, samples=100, shards=1,
                    batch_sample_s=(1 / compute, 2 / compute))


def test_observed_rounds_replace_sbs_compute_rate_per_task_and_state() -> None:
    rates = ObservedRates()
    sb = _sb(1000.0)
    assert rates.calibrate(sb, 1, "idle") is sb  # nothing trained yet: SB's own estimate
    rates.record(1, "idle", 400, 1.0)
    rates.record(1, "idle", 200, 1.0)  # pooled: 600 samples in 2 s
    got = rates.calibrate(sb, 1, "idle")
    assert got.compute == 300.0 and got.bandwidth == sb.bandwidth
    # the per-batch spread keeps its shape around the new mean
    assert got.batch_sample_s == (1 / 300.0, 2 / 300.0)
    assert rates.calibrate(sb, 1, "computing") is sb and rates.calibrate(sb, 2, "idle") is sb
    for _ in range(5):
        rates.record(1, "idle", 1000, 1.0)  # the window forgets the older, slower rounds
    assert rates.rate(1, "idle") == 1000.0


def test_observed_rates_ignore_empty_or_instant_rounds_and_stay_bounded() -> None:
    rates = ObservedRates()
    rates.record(1, "idle", 0, 5.0)
    rates.record(1, "idle", 100, 0.001)
    rates.record(1, "idle", 100, float("nan"))
    assert rates.rate(1, "idle") is None
    for task in range(200):
        rates.record(task, "idle", 10, 1.0)
    assert rates.rate(0, "idle") is None and rates.rate(199, "idle") == 10.0


def test_sb_pools_the_models_download_with_the_shards_into_b_k() -> None:
    from learner_agent.benchmarking import measure

    state = make_task_data()
    payload = len(state.shards[0])
    # 2 shards at 0.05 s each (mostly per-request cost) and an 8 MB model in 0.1 s.
    sb = measure(state.spec, state.shards[:2], [0.05, 0.05], model_bytes=8_000_000,
                 model_download_s=0.1)
    assert sb.bandwidth == (8_000_000 + 2 * payload) / 0.2
    assert sb.shard_bytes == payload  # Ω_d stays the shards' own mean payload
    assert sb.model_bytes == 8_000_000 and sb.model_download_s == 0.1
    assert sb.download_s == 0.2 and sb.shard_download_s == (0.05, 0.05)
    # Without the model, the thesis's shards-only rate.
    alone = measure(state.spec, state.shards[:2], [0.05, 0.05])
    assert alone.bandwidth == 2 * payload / 0.1 and alone.model_bytes == 0

"""The learner's DAB bound from SB scores (thesis eq. 3.5), with and without a safety margin."""

from __future__ import annotations

from learner_agent.benchmarking import SBResult
from learner_agent.dab import plan_shards
from plexus.cost import eta


def sb(**over: object) -> SBResult:
    base: dict[str, object] = dict(
        bandwidth=1e6,
        compute=1000.0,
        shard_bytes=2e6,
        shard_samples=500.0,
        download_s=4.0,
        train_s=1.0,
        samples=1000,
        shards=2,
    )
    base.update(over)
    return SBResult(**base)  # type: ignore[arg-type]


def test_bound_matches_hand_worked_eq_3_5() -> None:
    # η(a) = (Ω_m + Ω_d a)/b + μ a s/c + Ω_m/b = 2 + 3a s with Ω_m = 1 MB, μ = 2.
    assert plan_shards(sb(), deadline_s=14.5, model_bytes=1e6, iterations=2) == 4
    assert plan_shards(sb(), deadline_s=14.0, model_bytes=1e6, iterations=2) == 3


def test_sits_out_when_nothing_fits() -> None:
    assert plan_shards(sb(), deadline_s=4.9, model_bytes=1e6, iterations=2) == 0
    assert plan_shards(sb(), deadline_s=1.0, model_bytes=1e6, iterations=2) == 0


def test_safety_quantile_asks_for_less_when_speeds_wobble() -> None:
    # Two shards downloaded in 1 s and 3 s (mean 2 s = 1 MB/s); batches from 0.5 to 2 ms/sample.
    wobbly = sb(shard_download_s=(1.0, 3.0), batch_sample_s=(0.0005, 0.001, 0.002))
    plain = plan_shards(wobbly, deadline_s=60.0, model_bytes=1e6, iterations=2)
    safe = plan_shards(wobbly, deadline_s=60.0, model_bytes=1e6, iterations=2, safety_quantile=0.9)
    assert plain == 19  # (60 − 2)/3 = 19.3
    bw, compute = wobbly.quantile_rates(0.9)
    assert bw < 1e6 and compute < 1000.0
    assert safe < plain
    kwargs = dict(model_bytes=1e6, shard_bytes=2e6, iterations=2, shard_samples=500)
    assert eta(safe, bandwidth=bw, compute=compute, **kwargs) < 60.0
    assert eta(safe + 1, bandwidth=bw, compute=compute, **kwargs) >= 60.0

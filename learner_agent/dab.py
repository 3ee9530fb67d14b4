"""The learner's side of DAB: its whole-shard bound a_k from its own SB scores (thesis eq. 3.5)."""

from __future__ import annotations

from learner_agent.benchmarking import SBResult
from plexus.cost import dab_bound


def plan_shards(
    sb: SBResult,
    *,
    deadline_s: float,
    model_bytes: float,
    iterations: int,
    safety_quantile: float | None = None,
    max_shards: int | None = None,
) -> int:
    """a_k: the most whole shards this learner can fetch, train μ times and return within D.

    `deadline_s` D in seconds, `model_bytes` Ω_m in bytes, `iterations` μ. Without a safety
    quantile the SB means are used, exactly as alg. 10 line 17 does. With `safety_quantile` q
    the rates come from the q-quantile of per-shard download times and per-batch training
    times, so a learner whose speed wobbles (a shared CPU, WiFi) asks for fewer shards and
    misses D less often. 0 means sit the round out.
    """
    bandwidth, compute = sb.bandwidth, sb.compute
    if safety_quantile is not None:
        bandwidth, compute = sb.quantile_rates(safety_quantile)
    return dab_bound(
        deadline=deadline_s,
        model_bytes=model_bytes,
        shard_bytes=sb.shard_bytes,
        bandwidth=bandwidth,
        iterations=iterations,
        shard_samples=round(sb.shard_samples),
        compute=compute,
        max_shards=max_shards,
    )

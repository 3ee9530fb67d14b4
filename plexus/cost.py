"""The DAB cost model: a learner's round time η(a) (thesis eq. 3.4) and its shard bound (eq. 3.5).

Symbols (thesis 3.3): Ω_m model size in bytes, Ω_d shard size in bytes, b download bandwidth in
bytes/s, μ passes over the data, s samples per shard, c compute rate in samples/s, D deadline
in seconds. The thesis writes c in shards/s (alg. 10 line 16); here c is in samples/s, so the
training term of eq. 3.2 reads μ·a·s/c. Latency is not modelled, as in the thesis.
"""

from __future__ import annotations

import math


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def eta(
    a: float,
    *,
    model_bytes: float,
    shard_bytes: float,
    bandwidth: float,
    iterations: int,
    shard_samples: int,
    compute: float,
) -> float:
    """Seconds a learner needs for one round with `a` shards (thesis eq. 3.4).

    η(a) = (Ω_m + Ω_d·a)/b  +  μ·a·s/c  +  Ω_m/b
           download (3.1)      train (3.2)  upload (3.3)

    `model_bytes` Ω_m and `shard_bytes` Ω_d in bytes, `bandwidth` b in bytes/s, `iterations`
    μ (passes), `shard_samples` s in samples per shard, `compute` c in samples/s.
    """
    _check_positive(bandwidth=bandwidth, compute=compute)
    download = (model_bytes + shard_bytes * a) / bandwidth
    train = iterations * a * shard_samples / compute
    upload = model_bytes / bandwidth
    return download + train + upload


def dab_bound(
    *,
    deadline: float,
    model_bytes: float,
    shard_bytes: float,
    bandwidth: float,
    iterations: int,
    shard_samples: int,
    compute: float,
    max_shards: int | None = None,
) -> int:
    """Largest whole number of shards a with η(a) < D (thesis eq. 3.5); 0 means sit out.

    a < (D − 2Ω_m/b) / (μ·s/c + Ω_d/b). `deadline` D in seconds; other arguments as in
    `eta`. A result of 0 means even the model's round trip does not fit in D, so the learner
    sits the round out (alg. 10 lines 18–19). `max_shards` caps the answer (a task has only so
    many shards).
    """
    _check_positive(deadline=deadline, bandwidth=bandwidth, compute=compute)

    def cost(a: int) -> float:
        return eta(
            a,
            model_bytes=model_bytes,
            shard_bytes=shard_bytes,
            bandwidth=bandwidth,
            iterations=iterations,
            shard_samples=shard_samples,
            compute=compute,
        )

    per_shard = iterations * shard_samples / compute + shard_bytes / bandwidth
    bound = (deadline - 2.0 * model_bytes / bandwidth) / per_shard
    if bound <= 0:
        return 0
    # Largest integer strictly below the bound (eq. 3.5 is strict), then nudge by the exact
    # η so rounding in the division never lets η(a) reach D.
    a = math.ceil(bound) - 1
    while a > 0 and cost(a) >= deadline:
        a -= 1
    while cost(a + 1) < deadline:
        a += 1
    if max_shards is not None:
        a = min(a, max_shards)
    return max(a, 0)

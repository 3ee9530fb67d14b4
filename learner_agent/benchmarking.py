"""Subset Benchmarking (thesis 3.2, alg. 10 lines 9–16) and the FLOPS baseline (thesis 3.4.1).

SB downloads n shards and times it (→ b_k, bytes/s), then trains a separate dummy copy of the
task's model on them and times it (→ c_k, samples/s). It times the very code path it predicts,
which is why it beats a FLOPS score: a matmul rate knows nothing of the model's memory traffic,
Python overhead or optimizer (thesis 3.4.2.1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from plexus.shards import decode_shard

if TYPE_CHECKING:
    import torch

    from plexus.spec import TaskSpec


@dataclass(frozen=True)
class SBResult:
    """What subset benchmarking measured.

    `bandwidth` b_k in bytes/s, `compute` c_k in samples/s, `shard_bytes` Ω_d (mean payload
    bytes per shard), `shard_samples` samples per shard, `download_s` / `train_s` seconds
    (`train_s` over all `passes` timed passes of the dummy over the `samples`).
    `shard_download_s` holds each shard's download time and `batch_sample_s` each batch's
    seconds per sample: the spread the DAB safety margin draws its quantile from.
    `model_bytes` / `model_download_s`: the global model's download, when SB timed it too
    (the agent's `benchmark` does): b_k is then pooled over the model and the shards.
    """

    bandwidth: float
    compute: float
    shard_bytes: float
    shard_samples: float
    download_s: float
    train_s: float
    samples: int
    shards: int
    shard_download_s: tuple[float, ...] = field(default=())
    batch_sample_s: tuple[float, ...] = field(default=())
    passes: int = 1
    model_bytes: int = 0
    model_download_s: float = 0.0

    def quantile_rates(self, q: float) -> tuple[float, float]:
        """Pessimistic `(bandwidth, compute)` from the q-quantile of per-unit times.

        A shard that took the q-quantile of download time gives the bandwidth; a batch at the
        q-quantile of seconds per sample gives the compute rate. q = 0.5 is roughly the mean,
        q → 1 the slowest unit seen.
        """
        bw = self.bandwidth
        if self.shard_download_s:
            slow = float(np.quantile(self.shard_download_s, q))
            bw = min(bw, self.shard_bytes / slow) if slow > 0 else bw
        compute = self.compute
        if self.batch_sample_s:
            slow = float(np.quantile(self.batch_sample_s, q))
            compute = min(compute, 1.0 / slow) if slow > 0 else compute
        return bw, compute


def download_shards(
    fetch: Callable[[int], bytes],
    shard_ids: Sequence[int],
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[bytes], list[float]]:
    """Fetch each shard with `fetch(id)`; return the payloads and per-shard seconds."""
    payloads: list[bytes] = []
    seconds: list[float] = []
    for sid in shard_ids:
        t0 = clock()
        payloads.append(fetch(sid))
        seconds.append(clock() - t0)
    return payloads, seconds


def subset_benchmark(
    spec: TaskSpec,
    fetch: Callable[[int], bytes],
    shard_ids: Sequence[int],
    *,
    initial_state: Mapping[str, torch.Tensor] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> SBResult:
    """Run SB for `spec` on shards `shard_ids` fetched with `fetch(id) -> bytes`.

    Lines 9–12 of alg. 10: time the downloads → b_k = bytes / seconds. Lines 13–16: train a
    freshly built dummy model one pass over the downloaded samples → c_k = samples / seconds.
    `initial_state` (e.g. the global parameters) is copied into the dummy, never shared with it.
    """
    if not shard_ids:
        raise ValueError("subset benchmarking needs at least one shard")
    payloads, seconds = download_shards(fetch, shard_ids, clock)
    return measure(spec, payloads, seconds, initial_state=initial_state, clock=clock)


# A timed pass shorter than this is repeated: SB's first estimate on a small model and a few
# shards would otherwise rest on a few tens of milliseconds, where one scheduler tick, a
# frequency step or (in the local emulation) the phase of a 10 ms CPU duty cycle moves c_k by
# tens of percent. See docs/agent.md, "How SB times training".
MIN_TIMED_S = 0.25
MAX_TIMED_PASSES = 32


def measure(
    spec: TaskSpec,
    payloads: Sequence[bytes],
    download_seconds: Sequence[float],
    *,
    initial_state: Mapping[str, torch.Tensor] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    min_seconds: float = MIN_TIMED_S,
    model_bytes: int = 0,
    model_download_s: float = 0.0,
) -> SBResult:
    """SB's scores from shards already downloaded in `download_seconds` (one entry per shard):
    b_k from bytes and seconds, c_k from timed passes of a dummy model over the samples,
    repeated until they add up to `min_seconds` (at most MAX_TIMED_PASSES passes).

    With `model_bytes` downloaded in `model_download_s` (the global model, fetched as every
    round fetches it), b_k is the pooled rate of the model and the shards: Σ bytes / Σ
    seconds over what a round actually transfers. Small shards alone measure mostly the
    per-request cost, not the link: 2 Fashion-MNIST shards of 50 samples (157 kB each) over
    loopback gave 3–18 MB/s while the task's 8.3 MB model came at ~80 MB/s, so eq. 4.3's
    2Ω/b predicted ~2 s of transfer for ~0.2 s (docs/results.md, "Live agents")."""
    if not payloads:
        raise ValueError("subset benchmarking needs at least one shard")
    if model_bytes < 0 or not model_download_s >= 0:
        raise ValueError("model_bytes and model_download_s must be ≥ 0")
    shard_bytes = sum(len(p) for p in payloads)
    total_bytes = shard_bytes + model_bytes
    download_s = float(sum(download_seconds)) + float(model_download_s)
    xs, ys = [], []
    for p in payloads:
        x, y, _ = decode_shard(p)
        xs.append(x)
        ys.append(y)
    x_all = np.concatenate(xs)
    y_all = np.concatenate(ys)
    dummy = build_dummy(spec, initial_state)
    train_s, batch_sample_s, passes = _timed_passes(dummy, x_all, y_all, spec, clock, min_seconds)
    return SBResult(
        bandwidth=total_bytes / download_s if download_s > 0 else float("inf"),
        compute=passes * len(y_all) / train_s if train_s > 0 else float("inf"),
        shard_bytes=shard_bytes / len(payloads),
        shard_samples=len(y_all) / len(payloads),
        download_s=download_s,
        train_s=train_s,
        samples=len(y_all),
        shards=len(payloads),
        shard_download_s=tuple(download_seconds),
        batch_sample_s=tuple(batch_sample_s),
        passes=passes,
        model_bytes=model_bytes,
        model_download_s=float(model_download_s),
    )


def build_dummy(
    spec: TaskSpec, initial_state: Mapping[str, torch.Tensor] | None = None
) -> torch.nn.Module:
    """A fresh model of the task's architecture, with its own parameter storage (thesis 3.2)."""
    from plexus.models import build_for_task

    dummy = build_for_task(spec)  # the spec carries the data's shape and classes
    if initial_state is not None:
        # load_state_dict copies values into the dummy's own tensors; nothing is aliased.
        dummy.load_state_dict(dict(initial_state))
    return dummy


def _timed_passes(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    spec: TaskSpec,
    clock: Callable[[], float],
    min_seconds: float,
) -> tuple[float, list[float], int]:
    from plexus.training import train

    per_sample: list[float] = []
    last = [clock()]

    def mark(samples: int) -> None:
        now = clock()
        per_sample.append((now - last[0]) / samples)
        last[0] = now

    # One untimed batch first: the first step pays one-off costs (lazy kernels, allocator
    # growth, autograd graph set-up) that no later batch pays, and on a small benchmark it
    # would dominate c_k. The dummy is thrown away, so the extra step touches nothing real.
    train(
        model,
        x[: spec.training.batch_size],
        y[: spec.training.batch_size],
        passes=1,
        batch_size=spec.training.batch_size,
        optimizer=spec.training.optimizer,
        lr=spec.training.lr,
        seed=spec.seed,
    )
    # Then whole passes until they add up to min_seconds: c_k is the pooled rate of all of
    # them (samples over seconds), so a slow or fast spell of a few milliseconds weighs as
    # little as it will in a round of training that lasts seconds.
    total, passes = 0.0, 0
    while passes < MAX_TIMED_PASSES and (passes == 0 or total < min_seconds):
        t0 = clock()
        last[0] = t0
        train(
            model,
            x,
            y,
            passes=1,
            batch_size=spec.training.batch_size,
            optimizer=spec.training.optimizer,
            lr=spec.training.lr,
            seed=spec.seed + passes,
            on_batch=mark,
        )
        total += clock() - t0
        passes += 1
    return total, per_sample, passes


def flops_benchmark(
    size: int = 512, repeats: int = 100, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Floating-point operations per second from `repeats` size×size float32 matmuls.

    The FLOPS baseline of thesis 3.4.1 (512×512, 100 times); each product costs 2·size³ FLOPs.
    Uses torch, as training does, so both see the same BLAS.
    """
    import torch

    a = torch.rand(size, size)
    b = torch.rand(size, size)
    torch.mm(a, b)  # warm the BLAS thread pool before timing
    t0 = clock()
    for _ in range(repeats):
        torch.mm(a, b)
    seconds = clock() - t0
    return repeats * 2.0 * size**3 / seconds


def training_flops_per_sample(model: torch.nn.Module, input_shape: tuple[int, ...]) -> float:
    """FLOPs to train `model` on one sample: forward multiply-adds ×2, backward ≈ 2× forward.

    Counts Linear and Conv2d layers (the bulk of every model in the zoo) with forward hooks on
    one dummy input; this is the workload model a FLOPS predictor divides by the FLOPS score.
    """
    import torch

    macs = [0]

    def hook(module: Any, inputs: Any, output: Any) -> None:
        if isinstance(module, torch.nn.Linear):
            macs[0] += module.in_features * module.out_features
        elif isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            per_out = module.in_channels // module.groups * kh * kw
            macs[0] += int(output[0].numel()) * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return 3 * 2.0 * macs[0]


def flops_predict_train_s(
    flops: float, flops_per_sample: float, samples: int, passes: int = 1
) -> float:
    """Seconds the FLOPS baseline predicts for `passes` passes over `samples` samples."""
    return passes * samples * flops_per_sample / flops


def sb_predict_train_s(result: SBResult, samples: int, passes: int = 1) -> float:
    """Seconds SB predicts for `passes` passes over `samples` samples (eq. 3.2)."""
    return passes * samples / result.compute


def sb_predict_download_s(result: SBResult, shards: int) -> float:
    """Seconds SB predicts to download `shards` shards (data term of eq. 3.1)."""
    return shards * result.shard_bytes / result.bandwidth

"""Thesis-shaped MED instances (thesis 4.3.1): table 4.1 tasks, three stressor states,
heated-softmax state distributions; scaled up for benchmarks."""

from __future__ import annotations

import math

import numpy as np

from orchestrator.allocation.med.model import MedInstance, MedLearner, MedTask

# ---------------------------------------------------------------- thesis-shaped instances

STATE_NAMES = ("idle", "training", "downloading")
# Capability multipliers per stressor state (thesis 4.3.1): training contends for compute
# (900x900 matmuls), downloading for bandwidth (a 900x900 download). Assumed values, not
# measurements: the thesis gives no per-state numbers.
_STATE_COMPUTE = (1.0, 0.45, 0.9)
_STATE_BANDWIDTH = (1.0, 0.9, 0.35)
_SHARD_SAMPLES = 500  # thesis 3.4.1: shards of 500 MNIST samples
_SHARD_BYTES = 500 * 784 * 4  # float32 28x28 images
# Table 4.1 (shards, deadline s, iterations) with parameter counts of appendix A (float32
# bytes) and an assumed Jetson-Nano-class idle training rate (samples/s).
_THESIS_TASKS = (
    ("MNIST_FFN", 60, 55.0, 2, 573_910 * 4, 1500.0),
    ("MNIST_CNN", 60, 40.0, 1, 102_250 * 4, 900.0),
    ("Fashion", 20, 40.0, 1, 2_079_310 * 4, 250.0),
)


def heated_softmax(one_hot: np.ndarray, heat: float) -> np.ndarray:
    """softmax(v / heat): low heat skews to the hot state, high heat flattens (thesis 4.3.1)."""
    z = np.asarray(one_hot, dtype=float) / heat
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def thesis_instance(
    *,
    seed: int = 0,
    n_learners: int = 10,
    n_tasks: int = 3,
    budget: float = 300.0,
    min_shards: int = 1,
    heat: float = 0.5,
    deadline_extra_s: float = 0.0,
    shards_scale: float = 1.0,
) -> MedInstance:
    """A MED instance shaped like thesis 4.3.1: table 4.1 tasks, 3 stressor states, prices ~
    N(1, 0.5) clipped to [0.1, 1.5], state distributions by heated softmax (heat 0.5).

    Tasks past the third repeat the table cyclically (thesis 4.3.1.2 duplicates Fashion);
    `shards_scale` multiplies every D_i (for scaled-up benchmarks). Learner speeds vary by a
    factor U(0.6, 1.4) (compute) and U(0.5, 1.5) (bandwidth, idle 8 MB/s); assumed, see above.
    """
    rng = np.random.default_rng(seed)
    h = len(STATE_NAMES)
    tasks = []
    for i in range(n_tasks):
        name, shards, deadline, mu, omega, _ = _THESIS_TASKS[i % 3]
        suffix = "" if i < 3 else f"_{i // 3 + 1}"
        tasks.append(MedTask(name=name + suffix, shards=max(1, round(shards * shards_scale)),
                              deadline_s=deadline + deadline_extra_s, model_bytes=omega,
                              shard_bytes=_SHARD_BYTES, shard_samples=_SHARD_SAMPLES,
                              iterations=mu))
    hot = rng.integers(0, h, size=n_learners)
    probs = heated_softmax(np.eye(h)[hot], heat)
    prices = np.clip(rng.normal(1.0, math.sqrt(0.5), size=n_learners), 0.1, 1.5)
    cfac = rng.uniform(0.6, 1.4, size=n_learners)
    bfac = rng.uniform(0.5, 1.5, size=n_learners)
    learners = []
    for j in range(n_learners):
        bench = int(rng.choice(h, p=probs[j]))
        compute = {
            t.name: [_THESIS_TASKS[i % 3][5] * cfac[j] * s for s in _STATE_COMPUTE]
            for i, t in enumerate(tasks)
        }
        learners.append(MedLearner(
            name=f"learner-{j:04d}", price=round(float(prices[j]), 4),
            state_probs=[float(p) for p in probs[j]],
            bandwidth=[8e6 * bfac[j] * s for s in _STATE_BANDWIDTH],
            compute=compute, benchmarked_state=bench))
    return MedInstance(states=list(STATE_NAMES), budget=budget, min_shards=min_shards,
                       tasks=tasks, learners=learners)


def scaled_instance(n_learners: int, n_tasks: int, *, seed: int = 0) -> MedInstance:
    """A thesis-shaped instance grown to `n_learners` x `n_tasks` with the thesis's load per
    learner (140 shards for 10 learners) and budget ratio (300 for 140 shards)."""
    base_total = sum(t[1] for t in _THESIS_TASKS[:3]) / 3 * n_tasks  # shards at scale 1
    scale = 14.0 * n_learners / base_total
    total = base_total * scale
    return thesis_instance(seed=seed, n_learners=n_learners, n_tasks=n_tasks,
                           budget=round(total * 300.0 / 140.0, 2), shards_scale=scale)

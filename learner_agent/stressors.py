"""Stressor states for experiments (thesis 4.3.1): idle, training, downloading.

`training` runs a background loop of 900×900 matmuls while the learner trains; `downloading`
runs a concurrent download of a 900×900 random float32 matrix (3.24 MB) while the learner
downloads its model and shards. A learner's per-round state is drawn from a distribution made
by feeding a random one-hot vector through a softmax with heat τ (thesis: τ = 0.5).
Stressors are off unless a state is asked for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

STATES: tuple[str, ...] = ("idle", "training", "downloading")
MATRIX_SIZE = 900
MATRIX_BYTES = MATRIX_SIZE * MATRIX_SIZE * 4  # one 900×900 float32 matrix, bytes
THESIS_HEAT = 0.5


def heated_softmax(logits: np.ndarray, heat: float) -> np.ndarray:
    """softmax(logits / heat): high heat → near uniform, low heat → near one-hot."""
    if heat <= 0:
        raise ValueError(f"heat must be positive, got {heat}")
    z = np.asarray(logits, dtype=np.float64) / heat
    z -= z.max()
    e = np.exp(z)
    return np.asarray(e / e.sum())


def state_distribution(
    rng: np.random.Generator, heat: float = THESIS_HEAT, states: Sequence[str] = STATES
) -> dict[str, float]:
    """A learner's state distribution: a uniformly drawn one-hot vector through a heated softmax.

    With the thesis's heat 0.5 and three states the favoured state gets e²/(e²+2) ≈ 0.79.
    """
    one_hot = np.zeros(len(states))
    one_hot[rng.integers(len(states))] = 1.0
    probs = heated_softmax(one_hot, heat)
    return {s: float(p) for s, p in zip(states, probs, strict=True)}


def sample_state(distribution: dict[str, float], rng: np.random.Generator) -> str:
    """Draw this round's state from `distribution`."""
    names = list(distribution)
    probs = np.array([distribution[n] for n in names])
    return str(names[rng.choice(len(names), p=probs / probs.sum())])


def check_state(state: str | None) -> str:
    """Validate a state name (None means idle)."""
    if state is None:
        return "idle"
    if state not in STATES:
        raise ValueError(f"unknown stressor state {state!r}; choose one of {', '.join(STATES)}")
    return state


class _Background:
    def __init__(self, target: Callable[[threading.Event], None]) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=target, args=(self.stop,), daemon=True)

    def __enter__(self) -> _Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _matmul_loop(counter: list[int]) -> Callable[[threading.Event], None]:
    def run(stop: threading.Event) -> None:
        rng = np.random.default_rng(0)
        a = rng.random((MATRIX_SIZE, MATRIX_SIZE), dtype=np.float32)
        b = rng.random((MATRIX_SIZE, MATRIX_SIZE), dtype=np.float32)
        while not stop.is_set():
            np.matmul(a, b)  # BLAS releases the GIL, so this contends for cores
            counter[0] += 1

    return run


@contextmanager
def training_stress(state: str | None) -> Iterator[list[int]]:
    """While inside, run 900×900 matmuls in the background if `state` is `training`.

    Yields a one-element list counting the matmuls done (0 when not stressed).
    """
    counter = [0]
    if check_state(state) != "training":
        yield counter
        return
    with _Background(_matmul_loop(counter)):
        yield counter


@contextmanager
def download_stress(state: str | None, fetch: Callable[[], bytes]) -> Iterator[list[int]]:
    """While inside, if `state` is `downloading`, download one 900×900 float32 matrix's worth
    of bytes with `fetch()` (repeated until MATRIX_BYTES arrived or the block ends).

    Yields a one-element list counting the bytes fetched by the stressor.
    """
    counter = [0]
    if check_state(state) != "downloading":
        yield counter
        return

    started = threading.Event()

    def run(stop: threading.Event) -> None:
        while not stop.is_set() and counter[0] < MATRIX_BYTES:
            started.set()
            try:
                counter[0] += len(fetch())
            except Exception:  # a failing stressor must never fail the real download
                return
        started.set()

    with _Background(run):
        # Hold the real download back until the competing one is under way, so a short
        # download cannot finish before the contention starts.
        started.wait(5.0)
        yield counter

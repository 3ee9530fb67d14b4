"""SPIN's client (SPIN paper, algorithm 1) against a live orchestrator's async task.

Samples of the learner's partition "arrive" one at a time by a Poisson process of rate λ
(emulating a person labelling data). Once the learner holds at least D samples it pulls the
current model (`POST /v1/tasks/{id}/pull`), trains E epochs over everything it holds, and
pushes the result (`POST /v1/tasks/{id}/updates`, safetensors with metadata `base_version`,
`n_samples`). A sample that arrived meanwhile triggers the next pull at once. A `204` answer
to a pull (FedBuff / PORT: not picked this round) means: ask again after `retry_s`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from plexus.tensors import decode_state, encode_state


@dataclass
class SpinClientReport:
    """What the client did: rounds pushed, versions it trained from, server answers."""

    pulls: int = 0
    pushes: int = 0
    not_picked: int = 0
    versions: list[int] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)


class SpinClient:
    """Run SPIN alg. 1 for one learner.

    ``model`` is a torch module of the task's architecture (its weights are replaced by every
    pulled model); ``x``, ``y`` the learner's partition in arrival order. ``rate`` is λ in
    samples/s, ``pull_threshold`` is D, ``epochs`` E, ``lr`` η and ``batch_size`` B.
    ``http`` is an ``httpx.Client`` whose base URL is the orchestrator and whose headers carry
    the learner token.
    """

    def __init__(
        self,
        http: Any,
        task_id: int,
        model: Any,
        x: np.ndarray,
        y: np.ndarray,
        *,
        rate: float,
        pull_threshold: int,
        epochs: int = 1,
        lr: float = 0.05,
        batch_size: int = 16,
        seed: int = 0,
        retry_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"arrival rate must be positive samples/s, got {rate}")
        if pull_threshold < 1:
            raise ValueError(f"pull_threshold must be at least 1 sample, got {pull_threshold}")
        self.http = http
        self.task_id = task_id
        self.model = model
        self.x = x
        self.y = y
        self.rate = rate
        self.pull_threshold = pull_threshold
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.retry_s = retry_s
        self.clock = clock
        rng = np.random.default_rng(seed)
        self._gaps = np.cumsum(rng.exponential(1.0 / rate, len(y)))
        self.report = SpinClientReport()

    def run(self, stop: threading.Event, max_rounds: int | None = None) -> SpinClientReport:
        """Loop until ``stop`` is set, ``max_rounds`` pushes are done or the data runs out."""
        start = self.clock()
        trained_upto = 0
        while not stop.is_set():
            elapsed = self.clock() - start
            held = int(np.searchsorted(self._gaps, elapsed, side="right"))
            if held >= self.pull_threshold and held > trained_upto:
                if self._round(held):
                    trained_upto = held
                    if max_rounds is not None and self.report.pushes >= max_rounds:
                        break
                else:
                    stop.wait(self.retry_s)
                continue
            if held >= len(self.y):
                break  # every sample has arrived and been trained on
            # Wait for the next arrival (or for stop).
            stop.wait(max(0.0, float(self._gaps[held]) - elapsed))
        return self.report

    def _round(self, held: int) -> bool:
        from plexus.training import train

        self.report.pulls += 1
        r = self.http.post(f"/v1/tasks/{self.task_id}/pull", json={"n_samples": held})
        if r.status_code == 204:
            self.report.not_picked += 1
            return False
        r.raise_for_status()
        state, meta = decode_state(r.content)
        version = int(meta["version"])
        self.model.load_state_dict(state)
        train(
            self.model,
            self.x[:held],
            self.y[:held],
            passes=self.epochs,
            batch_size=self.batch_size,
            optimizer="sgd",
            lr=self.lr,
            seed=self.seed + self.report.pushes,
        )
        body = encode_state(self.model.state_dict(), {"base_version": version, "n_samples": held})
        answer = self.http.post(
            f"/v1/tasks/{self.task_id}/updates",
            content=body,
            headers={"content-type": "application/octet-stream"},
        )
        answer.raise_for_status()
        self.report.pushes += 1
        self.report.versions.append(version)
        self.report.answers.append(answer.json())
        return True

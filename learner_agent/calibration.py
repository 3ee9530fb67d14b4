"""Online re-estimation of c_k from the rounds this learner really trained (issue 17, §1).

SB predicts a round's training time from a short pass of a dummy model (thesis 3.2). After a
round the agent knows the truth for the very code path, data size and device state SB stood in
for: how many samples it trained and in how many seconds. `ObservedRates` keeps the last few
such observations per (task, stressor state) and, once there is one, the agent's answer to the
next `plan` / `benchmark` uses their pooled rate (Σ samples / Σ seconds) as c_k instead of the
dummy's, and b_k from the SB run remembered for that task and state. The first round of a task,
or a state never trained in, runs SB itself, so the thesis's method is unchanged where nothing
better is known. The orchestrator asks again every round when the task says
`sync.replan: each_round` (the default); `once` keeps alg. 10's single plan per task.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from learner_agent.benchmarking import SBResult

# Rounds pooled per key: enough to smooth one noisy round, few enough to follow a device that
# got slower (thermal throttling, a new background job) within a couple of rounds.
WINDOW = 3
# Shorter trainings say more about the timer than the device; they are not recorded.
MIN_SECONDS = 0.05
MAX_KEYS = 64  # (task, state) pairs remembered; the oldest is forgotten first


class ObservedRates:
    """The last WINDOW (samples, seconds) of real training per (task id, stressor state), and
    the SB result each key was first benchmarked with."""

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[int, str], deque[tuple[int, float]]] = OrderedDict()
        self._sb: OrderedDict[tuple[int, str], SBResult] = OrderedDict()
        self._lock = threading.Lock()

    def benchmark(self, task_id: int, state: str, run: Callable[[], SBResult]) -> SBResult:
        """SB for (task, state), calibrated: `run()` the first time and whenever no round has
        been trained there yet; once one has, the remembered b_k with the observed c_k (no
        downloads, no dummy training: a re-plan then costs next to nothing)."""
        key = (task_id, state)
        with self._lock:
            known = self._sb.get(key) if key in self._seen else None
        if known is None:
            known = run()
            with self._lock:
                self._sb.pop(key, None)
                self._sb[key] = known
                while len(self._sb) > MAX_KEYS:
                    self._sb.popitem(last=False)
        return self.calibrate(known, task_id, state)

    def record(self, task_id: int, state: str, samples: int, seconds: float) -> None:
        """Remember one round: `samples` trained in `seconds` of training (not downloading)."""
        if samples <= 0 or not seconds >= MIN_SECONDS:
            return
        key = (task_id, state)
        with self._lock:
            window = self._seen.pop(key, None) or deque(maxlen=WINDOW)
            window.append((int(samples), float(seconds)))
            self._seen[key] = window
            while len(self._seen) > MAX_KEYS:
                self._seen.popitem(last=False)

    def rate(self, task_id: int, state: str) -> float | None:
        """Pooled samples/s of the remembered rounds, or None before the first."""
        with self._lock:
            window = self._seen.get((task_id, state))
            if not window:
                return None
            samples = sum(n for n, _ in window)
            seconds = sum(s for _, s in window)
        return samples / seconds

    def calibrate(self, sb: SBResult, task_id: int, state: str) -> SBResult:
        """`sb` with c_k replaced by the observed rate when there is one.

        SB's per-batch spread (for DAB's safety quantile) is rescaled by the same factor, so a
        quantile still reads "this much slower than the typical batch" around the better mean.
        """
        observed = self.rate(task_id, state)
        if observed is None or not sb.compute > 0:
            return sb
        scale = sb.compute / observed
        return replace(sb, compute=observed,
                       batch_sample_s=tuple(t * scale for t in sb.batch_sample_s))

"""Prometheus metrics of one orchestrator instance (its own registry, so apps do not collide).

Counters and histograms count what happened since the process started. The per-task and
per-learner gauges are read from the store at each scrape (`TaskCollector`): only active
(pending or running) tasks have series, so a finished task drops out and the label sets stay
bounded by the tasks running at once and the learners enrolled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from orchestrator.store import RoundRow, Store


class Metrics:
    """Counters and gauges served at `GET /metrics` in the Prometheus text format."""

    def __init__(self, learners_alive: Callable[[], int], *, store: Store | None = None,
                 alive_after_s: float = 20.0,
                 async_status: Callable[[], Mapping[int, Any]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.rounds = Counter("plexus_rounds", "Global update cycles completed",
                              ["allocator"], registry=self.registry)
        self.round_time = Histogram(
            "plexus_round_time_seconds", "Global update cycle time (seconds)",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=self.registry)
        self.left_out = Counter("plexus_learners_left_out",
                                "Learners left out of a round (no answer by D + grace, error)",
                                registry=self.registry)
        self.bytes_served = Counter("plexus_bytes_served", "Bytes of models and shards served",
                                    ["kind"], registry=self.registry)
        self.updates = Counter("plexus_updates_received", "Parameter updates received",
                               registry=self.registry)
        # Every refused learner request (an update, a pull, a download), by its error code.
        self.refused = Counter("plexus_updates_refused",
                               "Learner requests refused by update admission or token scope",
                               ["reason"], registry=self.registry)
        alive = Gauge("plexus_learners_alive", "Learners heard from recently",
                      registry=self.registry)
        alive.set_function(lambda: float(learners_alive()))
        if store is not None:
            self.registry.register(TaskCollector(store, alive_after_s,
                                                 async_status or (lambda: {})))

    def render(self) -> bytes:
        """The current values in the Prometheus text exposition format."""
        return generate_latest(self.registry)


def prediction_error(times: Mapping[str, Any] | None) -> float | None:
    """SB's prediction error of a round: the mean of |actual - predicted| / predicted over the
    learners whose time thesis eq. 3.4 predicted (None when there are none)."""
    errors = [abs(t["actual_s"] - t["predicted_s"]) / t["predicted_s"]
              for t in (times or {}).values()
              if isinstance(t, dict) and t.get("predicted_s") and t.get("actual_s") is not None]
    return sum(errors) / len(errors) if errors else None


def _last_round(store: Store, task_id: int) -> RoundRow | None:
    from sqlalchemy import select

    from orchestrator.store import RoundRow

    with store.session() as s:
        return s.scalar(select(RoundRow).where(RoundRow.task_id == task_id)
                        .order_by(RoundRow.index.desc()).limit(1))


class TaskCollector(Collector):
    """Per active task and per learner gauges, read from the store at each scrape."""

    def __init__(self, store: Store, alive_after_s: float,
                 async_status: Callable[[], Mapping[int, Any]]) -> None:
        self.store = store
        self.alive_after_s = alive_after_s
        self.async_status = async_status

    def describe(self) -> list[Any]:
        return []  # read at scrape time only: nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from orchestrator.store import ACTIVE_STATES

        def family(name: str, doc: str, labels: tuple[str, ...] = ("task",)
                   ) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        fams = {
            "accuracy": family("plexus_task_accuracy", "Accuracy of the task's latest model"),
            "loss": family("plexus_task_loss", "Loss of the task's latest model"),
            "rounds": family("plexus_task_rounds", "Rounds (async: aggregations) done"),
            "truancy": family("plexus_task_truancy_ratio",
                              "Truancy of the last round: (GUC time - D) / D (thesis 3.4)"),
            "sb_error": family("plexus_task_sb_prediction_error_ratio",
                               "Mean |actual - predicted| / predicted learner time of the "
                               "last round (eq. 3.4; learners that reported b_k, c_k)"),
            "version": family("plexus_task_model_version", "Latest model version"),
            "refused": family("plexus_task_refused_updates",
                              "Learner requests of the task refused, by error code",
                              ("task", "reason")),
            "staleness": family("plexus_task_staleness",
                                "Async: mean staleness of the updates in the last aggregation"),
            "buffer": family("plexus_task_buffer_updates",
                             "Async: updates waiting in the buffer"),
        }
        runners = self.async_status()
        for task in self.store.tasks(ACTIVE_STATES):
            self._task(fams, task.id, task.rounds_done, task.model_version, runners)
        online = GaugeMetricFamily("plexus_learner_online",
                                   "1 while the learner's last heartbeat is recent, else 0",
                                   labels=["learner"])
        horizon = time.time() - self.alive_after_s
        for lr in self.store.learners():
            online.add_metric([lr.name], 1.0 if lr.last_seen >= horizon else 0.0)
        yield from fams.values()
        yield online

    def _task(self, fams: dict[str, GaugeMetricFamily], task_id: int, rounds: int,
              version: int, runners: Mapping[int, Any]) -> None:
        key = [str(task_id)]
        fams["rounds"].add_metric(key, rounds)
        fams["version"].add_metric(key, version)
        last = _last_round(self.store, task_id)
        if last is not None:
            if last.accuracy is not None:
                fams["accuracy"].add_metric(key, last.accuracy)
            if last.loss is not None:
                fams["loss"].add_metric(key, last.loss)
            fams["truancy"].add_metric(key, last.truancy)
            error = prediction_error(last.times)
            if error is not None:
                fams["sb_error"].add_metric(key, error)
        for reason, count in sorted(self.store.refusals(task_id).items()):
            fams["refused"].add_metric([str(task_id), reason], count)
        runner = runners.get(task_id)
        if runner is not None:
            status = runner.status()
            fams["buffer"].add_metric(key, status["queued"])
            history = status["history"]
            stale = history[-1].get("staleness") if history else None
            if stale:
                fams["staleness"].add_metric(key, sum(stale) / len(stale))

"""Prometheus metrics of one orchestrator instance (its own registry, so apps do not collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """Counters and gauges served at `GET /metrics` in the Prometheus text format."""

    def __init__(self, learners_alive: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.rounds = Counter("plexus_rounds", "Global update cycles completed",
                              ["allocator"], registry=self.registry)
        self.round_time = Histogram(
            "plexus_round_time_seconds", "Global update cycle time (seconds)",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=self.registry)
        self.truancy = Gauge("plexus_round_truancy_ratio",
                             "Truancy of the last round: (GUC time - D) / D (thesis 3.4)",
                             ["task"], registry=self.registry)
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

    def render(self) -> bytes:
        """The current values in the Prometheus text exposition format."""
        return generate_latest(self.registry)

"""Prometheus metrics: the queue and the workers, read from the database at scrape time, so
every API process reports the same figures (an autoscaler may scrape any of them)."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agentmill.store.queries import QueueStats
from agentmill.store.repositories.workers import WorkerRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot(Collector):
    def __init__(
        self, stats: QueueStats, workers: list[WorkerRecord], lease_seconds: float
    ) -> None:
        self.stats = stats
        self.workers = workers
        self.lease_seconds = lease_seconds

    def collect(self):  # type: ignore[no-untyped-def]  # prometheus-client's own signature
        stats = self.stats
        yield GaugeMetricFamily(
            "agentmill_queue_ready_steps", "Steps ready to start now.", value=stats.ready
        )
        yield GaugeMetricFamily(
            "agentmill_queue_scheduled_steps",
            "Steps that become ready later (retries after their backoff).",
            value=stats.scheduled,
        )
        yield GaugeMetricFamily(
            "agentmill_queue_in_flight_steps",
            "Steps held by a worker's lease.",
            value=stats.running,
        )
        yield GaugeMetricFamily(
            "agentmill_queue_lag_seconds",
            "How long the oldest ready step has waited for a worker (0 when none waits).",
            value=stats.oldest_ready_age_s,
        )
        now = datetime.now(UTC)
        alive = [w for w in self.workers if w.state(now, self.lease_seconds) == "alive"]
        yield GaugeMetricFamily(
            "agentmill_workers_alive", "Worker processes that reported recently.", value=len(alive)
        )
        in_flight = GaugeMetricFamily(
            "agentmill_worker_in_flight_steps",
            "Steps each live worker is running.",
            labels=["worker"],
        )
        capacity = GaugeMetricFamily(
            "agentmill_worker_concurrency",
            "Steps each live worker may run at once.",
            labels=["worker"],
        )
        for worker in alive:
            in_flight.add_metric([worker.id], worker.in_flight)
            capacity.add_metric([worker.id], worker.concurrency)
        yield in_flight
        yield capacity


def render(stats: QueueStats, workers: list[WorkerRecord], lease_seconds: float) -> bytes:
    """The metrics in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(stats, workers, lease_seconds))
    return generate_latest(registry)

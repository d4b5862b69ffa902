"""Prometheus metrics: counters kept in each process, gauges read from Redis at scrape time.

With several processes on one host, set PROMETHEUS_MULTIPROC_DIR (an empty directory shared
by them) and every web process's /metrics adds up all of them; a lone `receiver worker` can
serve its own with RECEIVER_METRICS_PORT.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from receiver.store import Store

CALLBACKS = Counter(
    "receiver_callbacks_total",
    "Provider callbacks, by provider and outcome (accepted, duplicate, or why rejected).",
    ["provider", "outcome"],
)
FETCHES = Counter(
    "receiver_fetches_total", "Results fetches, by provider and outcome.", ["provider", "outcome"]
)
FETCH_SECONDS = Histogram(
    "receiver_fetch_seconds",
    "Seconds one results fetch took, by provider.",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
POLLS = Counter("receiver_polls_total", "Polls, by provider and outcome.", ["provider", "outcome"])
DURABILITY = Gauge(
    "receiver_durability",
    "1 for the durability level a 202 waits for (fsync, replica or none).",
    ["level"],
    multiprocess_mode="max",
)

STREAMS_OPEN = Gauge(
    "receiver_event_streams",
    "Event streams (SSE) open.",
    multiprocess_mode="livesum",
)
STREAMS_REFUSED = Counter(
    "receiver_event_streams_refused_total",
    "Event streams refused (429) because RECEIVER_MAX_STREAMS were open.",
)
CONNECTIONS_CUT = Counter(
    "receiver_http_connections_cut_total",
    "HTTP connections answered and closed by the server's limits, by reason "
    "(header_too_large, header_timeout, body_timeout, too_many_connections).",
    ["reason"],
)


class RedisGauges(Collector):
    """Values read from Redis just before a scrape: queues, jobs by status, events."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def refresh(self, store: Store) -> None:
        figures = await store.figures()
        self.values = {
            "used_memory": figures.memory.used,
            "maxmemory": figures.memory.limit,
            "work": figures.work,
            "events": figures.events,
            "pending": figures.pending,
            "oldest": figures.oldest,
            "jobs": figures.jobs,
        }

    def collect(self) -> list[Metric]:
        if not self.values:
            return []
        metrics: list[Metric] = [
            GaugeMetricFamily(
                "receiver_work_stream_length",
                "Entries in the work stream.",
                value=self.values["work"],
            ),
            GaugeMetricFamily(
                "receiver_work_pending",
                "Work read by a worker, not yet done.",
                value=self.values["pending"],
            ),
            GaugeMetricFamily(
                "receiver_work_oldest_pending_seconds",
                "Age of the oldest unfinished piece of work.",
                value=self.values["oldest"],
            ),
            GaugeMetricFamily(
                "receiver_event_stream_length",
                "Events kept in the stream.",
                value=self.values["events"],
            ),
        ]
        metrics += [
            GaugeMetricFamily(
                "receiver_redis_used_memory_bytes",
                "Memory Redis uses.",
                value=self.values["used_memory"],
            ),
            GaugeMetricFamily(
                "receiver_redis_maxmemory_bytes",
                "Redis's maxmemory (0: no limit); writes fail once used memory reaches it.",
                value=self.values["maxmemory"],
            ),
        ]
        jobs = GaugeMetricFamily("receiver_jobs", "Jobs by status.", labels=["status"])
        for status, count in sorted(self.values["jobs"].items()):
            jobs.add_metric([status], count)
        metrics.append(jobs)
        return metrics


def exposition(gauges: RedisGauges) -> bytes:
    """The text of /metrics: this process's (or every process's) counters, and the gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        counters = generate_latest(registry)
    else:
        counters = generate_latest(REGISTRY)
    extra = CollectorRegistry()
    extra.register(gauges)
    return counters + generate_latest(extra)

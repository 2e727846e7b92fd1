"""Prometheus metrics of a serving frontend.

``ServingMetrics`` owns a private ``CollectorRegistry`` (never the process-wide
default, so several frontends or test apps in one process do not collide) with:

- ``learncc_queries_<outcome>_total`` counters, read from
  ``Frontend.statistics()`` at scrape time: ``accepted``, ``answered``,
  ``reconstructed``, ``timed_out``, ``refused``, ``defaulted``, ``failed``,
  ``late_discarded``, ``redispatched``;
- ``learncc_queries_pending`` and ``learncc_coding_groups_open`` gauges, also
  read at scrape time;
- ``learncc_instance_queue_depth{role, index}`` (queries sent to the instance
  and not yet returned) and ``learncc_instance_up{role, index}`` (1 while the
  instance is alive), read from the backend at scrape time;
- ``learncc_query_latency_seconds{outcome}``, a histogram of the time from
  ``submit`` to the answer, ``outcome`` being ``original``, ``reconstructed`` or
  ``default``, observed by whoever submits (the HTTP layer);
- ``learncc_http_requests_total{route, status}``, counted by the HTTP layer.

Shortcoming: latency is observed only for queries submitted through a caller
that reports it (the HTTP app does); queries submitted straight to the
frontend by other code appear in the counters but not in the histogram. A
hook in the frontend called on every answer would close that gap.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from learncc.serving.frontend import Answer, Frontend

logger = logging.getLogger(__name__)

# The 0.0.4 text format is the one every Prometheus version scrapes.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# From 0.5 ms (a fast local answer) to 10 s (the default query timeout).
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)

OUTCOMES = ("original", "reconstructed", "default")

_COUNTERS = {
    "accepted": "Queries the frontend accepted.",
    "answered": "Queries answered (originals, reconstructions and defaults).",
    "reconstructed": "Queries answered with a decoded (reconstructed) output.",
    "timed_out": "Queries that failed with QueryTimeoutError.",
    "refused": "Queries refused at submission because max_pending was reached.",
    "defaulted": "Queries given the default answer at their deadline.",
    "failed": "Accepted queries that ended in an error (timeouts included).",
    "late_discarded": "Outputs that arrived after their query was answered.",
    "redispatched": "Queries sent again after their instance died.",
}


def outcome_of(answer: Answer) -> str:
    """The latency label of an answer: original, reconstructed or default."""
    if answer.default:
        return "default"
    return "reconstructed" if answer.reconstructed else "original"


class _FrontendCollector(Collector):
    """Reads the frontend's counters and the backend's depths at scrape time."""

    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend

    def describe(self) -> list[Metric]:
        # An empty description keeps the registry from calling collect() at
        # registration time, before the backend has started.
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self.frontend.statistics()
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(
                f"learncc_queries_{name}", doc, value=getattr(stats, name)
            )
        yield GaugeMetricFamily(
            "learncc_queries_pending",
            "Accepted queries not yet answered.",
            value=stats.pending,
        )
        yield GaugeMetricFamily(
            "learncc_coding_groups_open",
            "Coding groups with members still waiting.",
            value=stats.groups_open,
        )
        backend = self.frontend.backend
        depth = GaugeMetricFamily(
            "learncc_instance_queue_depth",
            "Queries sent to the instance and not yet returned.",
            labels=["role", "index"],
        )
        up = GaugeMetricFamily(
            "learncc_instance_up",
            "1 while the instance is alive, else 0.",
            labels=["role", "index"],
        )
        for role, n in backend.counts.items():
            for i in range(n):
                depth.add_metric([role, str(i)], backend.depth(role, i))
                up.add_metric([role, str(i)], 1.0 if backend.alive(role, i) else 0.0)
        yield depth
        yield up


class ServingMetrics:
    """The Prometheus view of one frontend and the HTTP app in front of it.

    Args:
        frontend: whose statistics and backend are read at scrape time.
        buckets_s: upper bounds of the latency histogram's buckets, seconds.
    """

    def __init__(
        self, frontend: Frontend, *, buckets_s: tuple[float, ...] = LATENCY_BUCKETS_S
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_FrontendCollector(frontend))
        latency = Histogram(
            "learncc_query_latency_seconds",
            "Time from submission to the answer, by how it was answered.",
            ["outcome"],
            buckets=buckets_s,
            registry=self.registry,
        )
        # resolved once: labels() takes a lock and a dict lookup per call
        self._latency = {outcome: latency.labels(outcome) for outcome in OUTCOMES}
        self._request_counts: dict[tuple[str, int], Any] = {}
        self._requests = Counter(
            "learncc_http_requests",
            "HTTP requests by route template and status code.",
            ["route", "status"],
            registry=self.registry,
        )

    def observe_answer(self, answer: Answer, latency_s: float) -> None:
        """Record how long ``answer`` took, under its outcome."""
        self._latency[outcome_of(answer)].observe(latency_s)

    def observe_request(self, route: str, status: int) -> None:
        """Count one HTTP request; ``route`` must be a template, not a raw path,
        so that the label set stays bounded."""
        child = self._request_counts.get((route, status))
        if child is None:
            child = self._request_counts[route, status] = self._requests.labels(
                route, str(status)
            )
        child.inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus text format 0.0.4 (see ``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

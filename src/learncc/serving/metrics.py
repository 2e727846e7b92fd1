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

The latency histogram and the request counter are plain counts rendered at
scrape time, not ``prometheus_client`` metric objects: those take a lock and
scan the buckets on every observation, a cost paid per HTTP request (issue
3). So a ``ServingMetrics`` must be written from one thread, the event loop
that serves the app.

Shortcoming: latency is observed only for queries submitted through a caller
that reports it (the HTTP app does); queries submitted straight to the
frontend by other code appear in the counters but not in the histogram. A
hook in the frontend called on every answer would close that gap.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


class _Counted:
    """One histogram series or counter: counts kept by ``ServingMetrics``."""

    __slots__ = ("counts", "sum", "created")

    def __init__(self, n: int) -> None:
        self.counts = [0] * n  # per bucket, the last one beyond every bound
        self.sum = 0.0
        self.created = time.time()


class _HttpCollector(Collector):
    """Renders the counts ``ServingMetrics`` keeps at scrape time, as
    ``prometheus_client``'s Histogram and Counter would."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        # the same switch prometheus_client's own metrics obey
        created = getattr(prometheus_metrics, "_use_created", True)
        metrics = self.metrics
        les = [floatToGoString(b) for b in (*metrics.buckets_s, math.inf)]
        latency = HistogramMetricFamily(
            "learncc_query_latency_seconds",
            "Time from submission to the answer, by how it was answered.",
            labels=["outcome"],
        )
        for outcome, series in metrics.latency.items():
            cumulative = itertools.accumulate(series.counts)
            latency.add_metric(
                [outcome], list(zip(les, cumulative, strict=True)), series.sum
            )
            if created:
                latency.add_sample(
                    f"{latency.name}_created", {"outcome": outcome}, series.created
                )
        yield latency
        requests = CounterMetricFamily(
            "learncc_http_requests",
            "HTTP requests by route template and status code.",
            labels=["route", "status"],
        )
        for (route, status), counted in metrics.requests.items():
            requests.add_metric(
                [route, str(status)],
                counted.counts[0],
                created=counted.created if created else None,
            )
        yield requests


class ServingMetrics:
    """The Prometheus view of one frontend and the HTTP app in front of it.

    Not thread-safe: observe from the event loop that serves the app (see
    the module docstring).

    Args:
        frontend: whose statistics and backend are read at scrape time.
        buckets_s: upper bounds of the latency histogram's buckets, seconds,
            increasing (+Inf is implied).

    Raises:
        ValueError: the bounds are not increasing.
    """

    def __init__(
        self, frontend: Frontend, *, buckets_s: tuple[float, ...] = LATENCY_BUCKETS_S
    ) -> None:
        bounds = tuple(float(b) for b in buckets_s if b != math.inf)
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"buckets_s must be increasing, got {buckets_s}")
        self.buckets_s = bounds
        self.latency = {outcome: _Counted(len(bounds) + 1) for outcome in OUTCOMES}
        self.requests: dict[tuple[str, int], _Counted] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_FrontendCollector(frontend))
        self.registry.register(_HttpCollector(self))

    def observe_answer(self, answer: Answer, latency_s: float) -> None:
        """Record how long ``answer`` took, under its outcome."""
        series = self.latency[outcome_of(answer)]
        # the first bound >= latency_s: Prometheus buckets are "le"
        series.counts[bisect.bisect_left(self.buckets_s, latency_s)] += 1
        series.sum += latency_s

    def observe_request(self, route: str, status: int) -> None:
        """Count one HTTP request; ``route`` must be a template, not a raw path,
        so that the label set stays bounded."""
        counted = self.requests.get((route, status))
        if counted is None:
            counted = self.requests[route, status] = _Counted(1)
        counted.counts[0] += 1

    def exposition(self) -> bytes:
        """The registry in Prometheus text format 0.0.4 (see ``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

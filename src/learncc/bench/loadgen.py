"""Open-loop Poisson load.

Arrival times are fixed before the run (seeded), and each query's latency is
measured from its scheduled arrival, not from when it was actually sent, so
a frontend that falls behind cannot hide its queueing (no coordinated
omission). Queries arriving during the warm-up are served but not counted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram
from tqdm.auto import tqdm

from learncc.errors import ConfigError, LearnccError
from learncc.serving.frontend import Answer, Frontend


@dataclass(frozen=True)
class Trace:
    arrivals_s: np.ndarray  # (n,) seconds after the start, increasing
    inputs: np.ndarray  # (n,) index of each query's input in the input pool


def poisson_trace(*, rate_qps: float, duration_s: float, pool: int, seed: int) -> Trace:
    """Poisson arrivals at ``rate_qps`` for ``duration_s``; inputs drawn from a pool."""
    if not (0 < rate_qps < float("inf") and 0 < duration_s < float("inf")):
        raise ConfigError(
            f"rate_qps and duration_s must be > 0, got {rate_qps}, {duration_s}"
        )
    rng = np.random.default_rng(seed)
    n = int(rate_qps * duration_s * 1.2) + 10
    arrivals = np.cumsum(rng.exponential(1 / rate_qps, n))
    arrivals = arrivals[arrivals < duration_s]
    return Trace(arrivals, rng.integers(0, pool, len(arrivals)))


@dataclass(frozen=True)
class ModeResult:
    p50: float
    p99: float
    p999: float
    mean: float
    max: float
    n: int
    reconstructed: int
    errors: int
    top1: float | None  # accuracy of the answers clients got, where labels exist
    achieved_qps: float
    # this process's CPU (frontend and load generator) per offered query
    frontend_cpu_us_per_query: float
    latencies_ms: np.ndarray  # every counted latency, for CDF plots
    # per instance ("role/index"), measured per-batch service times in ms
    service_ms: dict[str, list[float]] = field(default_factory=dict)
    # the frontend's own delays, for the simulator (learncc.bench.run.OverheadProbe)
    overheads_ms: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in ("latencies_ms", "service_ms", "overheads_ms")
        }


async def drive(
    frontend: Frontend,
    trace: Trace,
    pool: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    warmup_s: float = 0.0,
    start_at: float | None = None,
    progress: str | None = None,
) -> ModeResult:
    """Offer ``trace`` to ``frontend`` and wait for every answer.

    Args:
        pool: inputs, ``(P, *in)``; query i sends ``pool[trace.inputs[i]]``.
        labels: true labels of ``pool`` for the served accuracy.
        start_at: loop time of arrival 0 (default: now).
        progress: a tqdm description, or None for no bar.
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time() if start_at is None else start_at
    n = len(trace.arrivals_s)
    done_at = np.full(n, np.nan)
    outcome: list[Answer | BaseException | None] = [None] * n

    def record(i: int, fut: asyncio.Future[Answer]) -> None:
        done_at[i] = loop.time()
        outcome[i] = fut.exception() or fut.result()

    futures: list[asyncio.Future[Answer]] = []
    cpu_start = time.process_time()
    bar = tqdm(
        total=n, desc=progress, unit="q", disable=progress is None, mininterval=0.5
    )
    for i in range(n):
        delay = t0 + trace.arrivals_s[i] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        fut = frontend.submit(pool[trace.inputs[i]])
        fut.add_done_callback(lambda f, i=i: record(i, f))
        futures.append(fut)
        bar.update(1)
    await asyncio.gather(*futures, return_exceptions=True)
    cpu_s = time.process_time() - cpu_start
    bar.close()

    counted = trace.arrivals_s >= warmup_s
    latency_ms = (done_at - (t0 + trace.arrivals_s)) * 1000
    hist = HdrHistogram(1, 600_000_000, 3)  # microseconds, up to 10 minutes
    reconstructed = errors = hits = 0
    for i in np.flatnonzero(counted):
        got = outcome[i]
        if isinstance(got, Answer):
            hist.record_value(max(1, int(latency_ms[i] * 1000)))
            reconstructed += got.reconstructed
            if labels is not None:
                hits += int(np.argmax(got.output) == labels[trace.inputs[i]])
        elif isinstance(got, LearnccError):
            errors += 1
        else:
            raise RuntimeError(f"query {i} ended with an unexpected {got!r}")
    answered = int(counted.sum()) - errors
    span = float(np.ptp(trace.arrivals_s[counted])) if answered > 1 else 0.0
    ok = np.array([isinstance(outcome[i], Answer) for i in range(n)]) & counted
    return ModeResult(
        p50=hist.get_value_at_percentile(50) / 1000,
        p99=hist.get_value_at_percentile(99) / 1000,
        p999=hist.get_value_at_percentile(99.9) / 1000,
        mean=hist.get_mean_value() / 1000,
        max=hist.get_max_value() / 1000,
        n=answered,
        reconstructed=reconstructed,
        errors=errors,
        top1=None if labels is None or answered == 0 else hits / answered,
        achieved_qps=answered / span if span > 0 else 0.0,
        frontend_cpu_us_per_query=1e6 * cpu_s / max(1, n),
        latencies_ms=latency_ms[ok],
    )

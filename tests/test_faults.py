"""Faults with real instance processes: kills, hangs, overload (issue 5)."""

from __future__ import annotations

import asyncio
import os
import random
import resource
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from learncc.bundle import load_bundle
from learncc.data import load_dataset
from learncc.errors import LearnccError, OverloadedError, QueryTimeoutError
from learncc.serving import DATA, PARITY, deployment
from learncc.serving.slowdown import SlowdownConfig, instance_schedule

pytestmark = pytest.mark.slow


async def test_accounting_10k_queries_with_instances_killed_at_random(
    digits_bundle: Path,
) -> None:
    xs = load_dataset("digits").test.x
    with torch.no_grad():
        expected = load_bundle(digits_bundle).base(torch.from_numpy(xs)).numpy()
    frontend, _ = deployment(
        digits_bundle, "coded", m=3, service_ms=1.0, query_timeout_s=5.0
    )
    answers: dict[int, int] = {}
    outcomes: list[object] = [None] * 10_000
    rng = random.Random(5)

    def record(i: int, fut: asyncio.Future) -> None:
        answers[i] = answers.get(i, 0) + 1
        outcomes[i] = fut.exception() or fut.result()

    async with frontend:
        futures = []
        kills = 0
        for i in range(10_000):
            fut = frontend.submit(xs[i % len(xs)])
            fut.add_done_callback(lambda f, i=i: record(i, f))
            futures.append(fut)
            if i % 500 == 499:  # kill a random live instance; the backend restarts it
                live = [
                    (r, j)
                    for r, n in ((DATA, 3), (PARITY, 2))
                    for j in range(n)
                    if frontend.backend.alive(r, j)
                ]
                if len(live) >= 4:  # restarts take seconds on a loaded machine
                    role, index = rng.choice(live)
                    os.kill(frontend.backend.pid(role, index), signal.SIGKILL)
                    kills += 1
            if i % 20 == 0:
                await asyncio.sleep(0.01)  # about 2,000 queries/s
        await asyncio.gather(*futures, return_exceptions=True)
        stats = frontend.statistics()

    # restarts take seconds on a loaded machine, so how many kills fit varies
    assert kills >= 1
    assert len(answers) == 10_000 and set(answers.values()) == {1}  # each exactly once
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(e, LearnccError) for e in errors)  # explicit errors only
    assert stats.accepted == 10_000 and stats.pending == 0
    assert stats.answered + stats.failed == 10_000
    # an original answer always belongs to its own query
    for i, outcome in enumerate(outcomes):
        if not isinstance(outcome, BaseException) and not outcome.reconstructed:
            np.testing.assert_allclose(
                outcome.output, expected[i % len(xs)], rtol=1e-4, atol=1e-4
            )
    assert stats.reconstructed > 0 or stats.redispatched > 0


async def test_two_failures_in_one_group_are_errors_never_guesses(
    digits_bundle: Path,
) -> None:
    frontend, _ = deployment(digits_bundle, "coded", m=2, query_timeout_s=1.0)
    hang = instance_schedule(
        SlowdownConfig(fail_instances=(0,), fail_at_s=0.0), 0, 10, 0
    )
    xs = load_dataset("digits").test.x[:4]
    async with frontend:
        for index in (0, 1):  # both data instances hang: no group can decode
            await frontend.backend.configure(DATA, index, {"schedule": hang, "t0": 0.0})
        results = await asyncio.gather(
            *(frontend.submit(x) for x in xs), return_exceptions=True
        )
        stats = frontend.statistics()
    assert all(isinstance(r, QueryTimeoutError) for r in results)
    assert stats.reconstructed == 0 and stats.timed_out == 4


async def test_twice_the_capacity_is_refused_not_queued(digits_bundle: Path) -> None:
    # 2 instances x 5 ms = 400 queries/s; offer 800/s for 6 s
    frontend, _ = deployment(digits_bundle, "none", m=2, service_ms=5.0, max_pending=40)
    xs = load_dataset("digits").test.x
    loop = asyncio.get_running_loop()
    latencies, refused = [], 0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    async with frontend:
        futures = []
        start = loop.time()
        for i in range(4800):
            await asyncio.sleep(max(0.0, start + i / 800 - loop.time()))
            try:
                fut = frontend.submit(xs[i % len(xs)])
            except OverloadedError:
                refused += 1
                continue
            born = loop.time()
            fut.add_done_callback(
                lambda f, born=born: latencies.append(loop.time() - born)
            )
            futures.append(fut)
        await asyncio.gather(*futures)
    rss_growth_mb = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    ) / 1024
    assert refused > 1000  # about half the offered load
    # a queue of at most 40 at 400/s: accepted queries wait about 0.1 s, not seconds
    assert np.percentile(latencies, 99) < 0.5
    assert rss_growth_mb < 100

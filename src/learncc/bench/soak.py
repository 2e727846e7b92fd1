"""Soak: a long run under kills and slowdowns that must lose nothing.

Offers Poisson load at a fraction of the deployment's measured capacity for
``duration_s``, SIGKILLs a random live instance every ``kill_every_s``
(the backend restarts it), with the ``episodes`` slowdown schedule, and
reports queries served, reconstructed, errors, lost (accepted but never
answered: must be 0), latency percentiles and peak memory of the frontend
process and its instances.

Run: ``python -m learncc.bench.soak BUNDLE --duration 600 --out DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import time
from pathlib import Path
from typing import Any

import torch
from hdrh.histogram import HdrHistogram
from tqdm.auto import tqdm

from learncc.bench.loadgen import poisson_trace
from learncc.bench.run import _test_inputs, apply_slowdowns, numbered_instances
from learncc.bundle import load_bundle
from learncc.errors import LearnccError
from learncc.serving.deploy import deployment
from learncc.serving.slowdown import preset


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def soak(
    bundle_path: Path,
    *,
    duration_s: float,
    load: float,
    kill_every_s: float,
    m: int,
    service_ms: float,
    seed: int,
) -> dict[str, Any]:
    bundle = load_bundle(bundle_path)
    pool, labels = _test_inputs(bundle)
    capacity_qps = m * 1000 / service_ms  # data instances at the service floor
    rate = load * capacity_qps
    frontend, shape = deployment(bundle_path, "coded", m=m, service_ms=service_ms)
    trace = poisson_trace(
        rate_qps=rate, duration_s=duration_s, pool=len(pool), seed=seed
    )
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    hist = HdrHistogram(1, 600_000_000, 3)
    counts = {"answered": 0, "reconstructed": 0, "errors": 0, "kills": 0}
    peak = {"frontend_mb": 0.0, "instances_mb": 0.0}
    seen: set[int] = set()

    async with frontend:
        start = loop.time() + 0.2
        await apply_slowdowns(
            frontend, shape, preset("episodes"), start, duration_s, seed
        )
        roles = numbered_instances(shape)
        next_kill = start + kill_every_s
        futures = []
        bar = tqdm(total=len(trace.arrivals_s), desc="soak", unit="q", mininterval=2)

        def done(i: int, arrival: float, fut: asyncio.Future[Any]) -> None:
            if i in seen:
                raise RuntimeError(f"query {i} answered twice")
            seen.add(i)
            if fut.exception() is not None:
                if not isinstance(fut.exception(), LearnccError):
                    raise RuntimeError(f"query {i}: unexpected {fut.exception()!r}")
                counts["errors"] += 1
                return
            counts["answered"] += 1
            counts["reconstructed"] += fut.result().reconstructed
            hist.record_value(max(1, int((loop.time() - arrival) * 1e6)))

        for i, t in enumerate(trace.arrivals_s):
            arrival = start + t
            await asyncio.sleep(max(0.0, arrival - loop.time()))
            if loop.time() >= next_kill:
                next_kill += kill_every_s
                live = [(r, j) for r, j in roles if frontend.backend.alive(r, j)]
                if live:
                    role, j = rng.choice(live)
                    os.kill(frontend.backend.pid(role, j), 9)
                    counts["kills"] += 1
                peak["frontend_mb"] = max(peak["frontend_mb"], _rss_mb(os.getpid()))
                peak["instances_mb"] = max(
                    peak["instances_mb"],
                    sum(_rss_mb(frontend.backend.pid(r, j) or 0) for r, j in roles),
                )
            fut = frontend.submit(pool[trace.inputs[i]])
            fut.add_done_callback(lambda f, i=i, a=arrival: done(i, a, f))
            futures.append(fut)
            bar.update(1)
        await asyncio.gather(*futures, return_exceptions=True)
        bar.close()
        stats = frontend.statistics()
        restarts = frontend.backend.restarts

    offered = len(trace.arrivals_s)
    return {
        "duration_s": duration_s,
        "rate_qps": rate,
        "load_of_capacity": load,
        "offered": offered,
        "accepted": stats.accepted,
        "served": counts["answered"],
        "reconstructed": counts["reconstructed"],
        "errors": counts["errors"],
        "lost": stats.accepted - counts["answered"] - counts["errors"],
        "kills": counts["kills"],
        "restarts": restarts,
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "p999_ms": hist.get_value_at_percentile(99.9) / 1000,
        "peak_frontend_rss_mb": max(
            peak["frontend_mb"],
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        ),
        "peak_instances_rss_mb": peak["instances_mb"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--load", type=float, default=0.7, help="fraction of capacity")
    parser.add_argument("--kill-every", type=float, default=30.0)
    parser.add_argument("--m", type=int, default=4)
    parser.add_argument("--service-ms", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    result = asyncio.run(
        soak(
            args.bundle,
            duration_s=args.duration,
            load=args.load,
            kill_every_s=args.kill_every,
            m=args.m,
            service_ms=args.service_ms,
            seed=args.seed,
        )
    )
    result["wall_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if result["lost"] != 0:
        raise SystemExit(f"lost {result['lost']} accepted queries")


if __name__ == "__main__":
    main()

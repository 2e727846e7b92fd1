"""Serving-path overhead and throughput: the Ray backend against the local one.

Instances are no-ops (they answer zeros of the output shape without running
the model), so what is measured is the frontend, the transport and the
batching, not F. For each backend and mode it reports:

- ``overhead_ms``: latency percentiles of one query at a time (closed loop,
  a single query outstanding): the fixed cost a query pays for the trip;
- ``throughput_qps``: answers per second with ``window`` queries kept
  outstanding (closed loop; each answer submits the next query);
- on Ray, ``queries_per_write`` (queries one stream write carried) and
  ``queries_per_batch`` (queries an actor served at once).

Then, unless ``--tail-duration 0``, the tail latency of ``coded`` against
``equal`` resources on each backend under the same Poisson trace and
slowdown schedule as ``learncc bench`` (``learncc.bench.run``), with real
models and the emulated service floor.

Run as ``python -m learncc.bench.ray_bench BUNDLE [--address ADDR]``; it
prints one JSON object. Without an address it starts a local Ray cluster
with ``--ray-cpus`` CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learncc.bench.run import BenchConfig, run_comparison, summary
from learncc.bundle import load_bundle
from learncc.serving.backend import Backend, LocalBackend
from learncc.serving.deploy import coding_from_bundle, plan
from learncc.serving.frontend import Frontend
from learncc.serving.ray_backend import RayBackend


def make_backend(
    name: str, bundle: Path, *, data: int, parity: int, max_batch: int
) -> Backend:
    """A no-op backend ``name`` ("local" or "ray") with the given instances."""
    if name == "ray":
        return RayBackend(
            bundle,
            data_instances=data,
            parity_instances=parity,
            max_batch=max_batch,
            noop=True,
        )
    return LocalBackend(
        bundle,
        data_instances=data,
        parity_instances=parity,
        max_batch=max_batch,
        noop=True,
    )


async def overhead_ms(frontend: Frontend, pool: np.ndarray, n: int) -> dict[str, float]:
    """Latency percentiles (ms) of ``n`` queries sent one at a time."""
    latencies = []
    for i in range(n):
        start = time.perf_counter()
        await frontend.infer(pool[i % len(pool)])
        latencies.append((time.perf_counter() - start) * 1000)
    lat = np.array(latencies[n // 10 :])  # the first tenth warms the path up
    return {
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "mean": float(lat.mean()),
    }


async def throughput_qps(
    frontend: Frontend, pool: np.ndarray, *, window: int, duration_s: float
) -> float:
    """Answers per second over ``duration_s`` with ``window`` queries outstanding."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    counted = 0
    start, end = 0.0, float("inf")  # set after the warm-up
    submitted = 0

    def submit() -> None:
        nonlocal submitted
        fut = frontend.submit(pool[submitted % len(pool)])
        submitted += 1
        fut.add_done_callback(on_answer)

    def on_answer(fut: asyncio.Future[Any]) -> None:
        nonlocal counted
        fut.result()  # an error here is a benchmark failure, not a data point
        now = loop.time()
        if start <= now < end:
            counted += 1
        if now < end:
            submit()
        elif not done.done() and frontend.statistics().pending == 0:
            done.set_result(None)

    for _ in range(window):
        submit()
    await asyncio.sleep(0.5)  # warm up: batches reach their steady size
    start = loop.time()
    end = start + duration_s
    await done
    return counted / duration_s


async def run_one(
    backend_name: str,
    bundle_path: Path,
    mode: str,
    *,
    m: int,
    max_batch: int,
    window: int,
    duration_s: float,
    overhead_n: int,
) -> dict[str, Any]:
    bundle = load_bundle(bundle_path)
    shape = plan(mode, m=m, k=bundle.code.k, r=bundle.code.r)
    backend = make_backend(
        backend_name,
        bundle_path,
        data=shape.data_instances,
        parity=shape.parity_instances,
        max_batch=max_batch,
    )
    coding = coding_from_bundle(bundle) if mode == "coded" else None
    frontend = Frontend(backend, input_shape=bundle.input_shape, coding=coding)
    pool = np.random.default_rng(0).random((256, *bundle.input_shape), dtype=np.float32)
    async with frontend:
        over = await overhead_ms(frontend, pool, overhead_n)
        qps = await throughput_qps(frontend, pool, window=window, duration_s=duration_s)
        stats = frontend.statistics()
        reports = await backend.reports() if isinstance(backend, RayBackend) else {}
    result: dict[str, Any] = {
        "overhead_ms": over,
        "throughput_qps": qps,
        "instances": shape.instances,
        "failed": stats.failed + stats.timed_out,
    }
    if isinstance(backend, RayBackend):
        batches = [n for r in reports.values() for n in r["batch_sizes"]]
        result["queries_per_write"] = backend.queries_sent / max(1, backend.writes)
        result["queries_per_batch"] = sum(batches) / max(1, len(batches))
    return result


def tail(
    bundle_path: Path, backend: str, *, duration_s: float, rate_qps: float, m: int
) -> dict[str, dict[str, Any]]:
    """``coded`` and ``equal`` on ``backend`` under the ``episodes`` slowdown,
    as ``learncc bench`` runs them (same trace and schedules for both)."""
    cfg = BenchConfig(
        modes=("coded", "equal"),
        rate_qps=rate_qps,
        duration_s=duration_s,
        slowdown="episodes",
        m=m,
        backend=backend,
    )
    return summary(run_comparison(bundle_path, cfg, progress=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--address", default=None, help="Ray cluster; default: local")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--backends", default="local,ray")
    parser.add_argument("--modes", default="none,coded")
    parser.add_argument("--m", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--window", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--overhead-n", type=int, default=300)
    parser.add_argument(
        "--tail-duration", type=float, default=20.0, help="s per mode; 0 skips"
    )
    parser.add_argument("--tail-rate", type=float, default=300.0)
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    # the frontend's encoder and decoder run on tiny tensors: extra torch
    # threads only spin against Ray's threads and the instances for the cores
    torch.set_num_threads(1)
    if "ray" in backends:
        import ray

        if args.address:
            ray.init(address=args.address, log_to_driver=False)
        else:
            ray.init(num_cpus=args.ray_cpus, log_to_driver=False)
    results: dict[str, Any] = {"config": vars(args) | {"bundle": str(args.bundle)}}
    for name in backends:
        for mode in (m for m in args.modes.split(",") if m):
            results[f"{name}/{mode}"] = asyncio.run(
                run_one(
                    name,
                    args.bundle,
                    mode,
                    m=args.m,
                    max_batch=args.max_batch,
                    window=args.window,
                    duration_s=args.duration,
                    overhead_n=args.overhead_n,
                )
            )
    if args.tail_duration > 0:
        for name in backends:
            results[f"tail/{name}"] = tail(
                args.bundle,
                name,
                duration_s=args.tail_duration,
                rate_qps=args.tail_rate,
                m=args.m,
            )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

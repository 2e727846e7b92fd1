"""Frontend throughput with no-op models: the serving path's own cost.

Closed loop: ``concurrency`` queries are kept in flight for ``duration_s``;
each answer submits the next. With ``--backend noop`` the instances live in
the frontend's process and answer zeros at once, so the rate measures the
frontend alone (one core: this process); with ``--backend local`` they are
worker processes with ``noop`` models, adding the socket transport.

Run: ``python -m learncc.bench.throughput BUNDLE [--backend noop|local]``.
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

from learncc.bundle import load_bundle
from learncc.serving.backend import NoopBackend
from learncc.serving.deploy import coding_from_bundle, deployment, plan
from learncc.serving.frontend import Frontend


async def closed_loop(
    frontend: Frontend, x: np.ndarray, *, concurrency: int, duration_s: float
) -> dict[str, Any]:
    """Keep ``concurrency`` queries in flight; return rate and CPU per query."""
    loop = asyncio.get_running_loop()
    done = 0
    reconstructed = 0
    stop_at = loop.time() + duration_s
    finished = loop.create_future()
    in_flight = 0

    def submit() -> None:
        nonlocal in_flight
        in_flight += 1
        frontend.submit(x).add_done_callback(on_done)

    def on_done(fut: asyncio.Future[Any]) -> None:
        nonlocal done, reconstructed, in_flight
        in_flight -= 1
        done += 1
        reconstructed += fut.result().reconstructed
        if loop.time() < stop_at:
            submit()
        elif in_flight == 0 and not finished.done():
            finished.set_result(None)

    cpu0, wall0 = time.process_time(), loop.time()
    for _ in range(concurrency):
        submit()
    await finished
    cpu, wall = time.process_time() - cpu0, loop.time() - wall0
    return {
        "qps": done / wall,
        "frontend_cpu_us_per_query": 1e6 * cpu / done,
        "queries": done,
        "reconstructed": reconstructed,
    }


async def measure(
    bundle_path: Path,
    mode: str,
    *,
    backend: str,
    m: int,
    concurrency: int,
    duration_s: float,
    fail_every: int,
) -> dict[str, Any]:
    bundle = load_bundle(bundle_path)
    x = bundle.fill_input.numpy()
    if backend == "noop":
        shape = plan(mode, m=m, k=bundle.code.k, r=bundle.code.r)
        instances = NoopBackend(
            data_instances=shape.data_instances,
            parity_instances=shape.parity_instances,
            output_shape=tuple(bundle.fill_output.shape),
            fail_every=fail_every if mode == "coded" else 0,
        )
        frontend = Frontend(
            instances,
            input_shape=bundle.input_shape,
            coding=coding_from_bundle(bundle) if mode == "coded" else None,
        )
    else:
        frontend, _ = deployment(bundle_path, mode, m=m, noop=True)
    async with frontend:
        await closed_loop(
            frontend, x, concurrency=concurrency, duration_s=0.5
        )  # warm up
        return await closed_loop(
            frontend, x, concurrency=concurrency, duration_s=duration_s
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--backend", choices=("noop", "local"), default="noop")
    parser.add_argument("--modes", default="equal,coded")
    parser.add_argument("--m", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument(
        "--fail-every",
        type=int,
        default=0,
        help="noop backend: drop every n-th data query so groups decode",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in serving: small tensors, one core
    results = {}
    for mode in args.modes.split(","):
        results[mode] = asyncio.run(
            measure(
                args.bundle,
                mode,
                backend=args.backend,
                m=args.m,
                concurrency=args.concurrency,
                duration_s=args.duration,
                fail_every=args.fail_every,
            )
        )
        print(mode, json.dumps(results[mode]))
    if "equal" in results and "coded" in results:
        ratio = (
            results["coded"]["frontend_cpu_us_per_query"]
            / results["equal"]["frontend_cpu_us_per_query"]
        )
        print(f"coded/equal frontend CPU per query: {ratio:.2f}")


if __name__ == "__main__":
    main()

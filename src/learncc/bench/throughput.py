"""Frontend throughput with no-op models: the serving path's own cost.

Closed loop: ``concurrency`` queries are kept in flight for ``duration_s``;
each answer submits the next. With ``--backend noop`` the instances live in
the frontend's process and answer zeros at once, so the rate measures the
frontend alone (one core: this process); with ``--backend local`` they are
worker processes with ``noop`` models, adding the socket transport.

Run: ``python -m learncc.bench.throughput BUNDLE [--backend noop|local]``.

``--codes`` instead times what the frontend runs per coding group, the
bundle's ``encode_numpy`` on one group and ``decode_missing`` for one lost
output, against F on one query as an instance runs it (issue 4).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
import timeit
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learncc.bundle import load_bundle
from learncc.errors import ConfigError, LearnccError
from learncc.serving.backend import NoopBackend
from learncc.serving.deploy import MODES, coding_from_bundle, deployment, plan
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
    if not 1 <= concurrency <= 100_000:
        # 0 in flight never finishes; beyond max_pending every submit is refused
        raise ConfigError(f"concurrency must be in 1..100000, got {concurrency}")
    if not 0 < duration_s < math.inf:
        raise ConfigError(f"duration must be a finite number > 0, got {duration_s}")
    if fail_every < 0 or fail_every == 1:
        raise ConfigError(
            f"fail_every must be 0 (off) or >= 2 (every n-th data query fails), "
            f"got {fail_every}"
        )
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


def time_serving_codes(
    bundle_path: Path, *, number: int = 500, repeat: int = 15
) -> dict[str, float]:
    """Per coding group: the frontend's encode and decode against F at batch 1.

    The three are timed in turn, ``repeat`` times, keeping each one's best
    (CPU time, so that other processes on a busy machine count less), so the
    ratio compares like with like. F runs as in an instance (torch, one
    thread, inference mode). Decoding rebuilds data slot 0 from the others
    and the parity outputs, F's real outputs standing in for the parity
    model's.

    Returns:
        ``f_us``, ``encode_us``, ``decode_us`` and ``overhead_pct`` =
        100 (encode + decode) / F.
    """
    bundle = load_bundle(bundle_path)
    k, r = bundle.code.k, bundle.code.r
    x = np.stack([bundle.fill_input.numpy()] * k)[None]  # (1, k, *in)
    one = torch.from_numpy(x[:, 0].copy())  # (1, *in)
    with torch.inference_mode():
        outputs = [o.numpy() for o in bundle.base(torch.from_numpy(x[0]))]
    data: list[np.ndarray | None] = [None, *outputs[1:]]
    parity: list[np.ndarray | None] = list(outputs[:r])
    if not bundle.decoder.can_decode([o is not None for o in data] + [True] * r):
        raise ConfigError("the bundle's decoder cannot rebuild one lost output")

    def f() -> None:
        with torch.inference_mode():
            bundle.base(one).numpy()

    timed = {
        "f_us": f,
        "encode_us": lambda: bundle.encoder.encode_numpy(x),
        "decode_us": lambda: bundle.decoder.decode_missing(data, parity),
    }
    best = dict.fromkeys(timed, float("inf"))
    for _ in range(repeat):
        for name, fn in timed.items():
            t = timeit.timeit(fn, number=number, timer=time.process_time)
            best[name] = min(best[name], t / number * 1e6)
    best["overhead_pct"] = 100 * (best["encode_us"] + best["decode_us"]) / best["f_us"]
    return best


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
    parser.add_argument(
        "--codes",
        action="store_true",
        help="time the frontend's encode + decode per group against F instead",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in serving: small tensors, one core
    if args.codes:
        print(json.dumps(time_serving_codes(args.bundle)))
        return
    results = {}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    try:
        if not modes:
            raise ConfigError(f"--modes names no mode; choose from {', '.join(MODES)}")
        code = load_bundle(args.bundle).code
        for mode in modes:  # every mode's plan checked before the first runs
            plan(mode, m=args.m, k=code.k, r=code.r)
        for mode in modes:
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
    except LearnccError as e:
        parser.exit(2, f"error: {e}\n")
    if "equal" in results and "coded" in results:
        ratio = (
            results["coded"]["frontend_cpu_us_per_query"]
            / results["equal"]["frontend_cpu_us_per_query"]
        )
        print(f"coded/equal frontend CPU per query: {ratio:.2f}")


if __name__ == "__main__":
    main()

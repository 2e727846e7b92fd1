"""HTTP path throughput: learncc's /infer and /v2 infer against a bare aiohttp
echo server, all on this machine in the same run.

Usage::

    python -m learncc.bench.http_bench                 # 32 clients, 5 s per target
    python -m learncc.bench.http_bench --coded --client aiohttp --duration-s 3

Each server runs in its own process (so it has a core to itself on a small
machine) and is loaded by one load generator with ``--clients`` concurrent
connections, each sending its next request as soon as the last one is
answered (closed loop). The load generator is ``wrk`` when it is installed
(``--client auto``), else an aiohttp client in this process.

The learncc server's backend is ``InstantBackend``: F is the identity and
every instance answers on the next event loop iteration, so the numbers
measure the HTTP layer and the frontend, not a model. With ``--coded`` the
queries also go through coding groups (addition code, k=2, r=1), which adds
the encoder's work per group.

Shortcoming: with two cores the load generator and the server compete with
whatever else runs; compare the ratio, which both servers share, rather than
the absolute rates across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from learncc.serving.backend import NoopBackend


class InstantBackend(NoopBackend):
    """In-process instances that answer F(x) = x on the next loop iteration.

    A zero-delay timer rather than ``call_soon``, as in ``NoopBackend``: the
    answer must come after the frontend's end-of-iteration parity encoding, or
    coded groups would be answered before they are sealed and skip that work.
    """

    def send(self, role: str, index: int, tag: int, x: np.ndarray) -> None:
        self.loop.call_later(
            0, self.handler.on_result, role, index, tag, x.reshape(-1), None
        )


@dataclass(frozen=True)
class Result:
    target: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    # CPU time the server process spent per request: unlike the rate, it hardly
    # depends on what else the machine runs
    server_cpu_us: float = float("nan")


# -- the servers (run in child processes) -------------------------------------


async def _serve_learncc(port: int, input_size: int, coded: bool) -> None:
    from learncc.serving.frontend import Coding, Frontend
    from learncc.serving.http import serve_http

    coding = None
    if coded:
        from learncc.codes import CodeConfig, make_code

        enc, dec = make_code(CodeConfig(k=2, r=1, encoder="addition"), (input_size,))
        fill = np.zeros(input_size, np.float32)
        coding = Coding(enc, dec, fill, fill)
    backend = InstantBackend(data_instances=4, parity_instances=2 if coded else 0)
    frontend = Frontend(backend, input_shape=(input_size,), coding=coding)
    await serve_http(
        frontend, port=port, model_name="bench", output_shape=(input_size,)
    )


async def _serve_echo(port: int) -> None:
    import orjson
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        doc = orjson.loads(await request.read())
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def live(_: web.Request) -> web.Response:
        return web.Response(body=b'{"live": true}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/v2/health/live", live)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


# -- the load generators ------------------------------------------------------


async def _aiohttp_load(
    url: str, body: bytes, clients: int, duration_s: float
) -> Result:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession, stop_at: float) -> None:
        nonlocal errors
        while (start := time.perf_counter()) < stop_at:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        # warm the connections up before measuring
        await asyncio.gather(
            *(worker(session, time.perf_counter() + 0.3) for _ in range(clients))
        )
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(
            *(worker(session, start + duration_s) for _ in range(clients))
        )
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return Result(
        url,
        len(latencies) / elapsed,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        errors,
    )


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("LEARNCC_BENCH_BODY"), "rb"):read()
done = function(summary, latency, requests)
  io.write(string.format("LEARNCC %d %d %f %f\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def _wrk_load(url: str, body: bytes, clients: int, duration_s: float) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        script, body_path = Path(tmp, "post.lua"), Path(tmp, "body.json")
        script.write_text(_WRK_SCRIPT)
        body_path.write_bytes(body)
        env = {**os.environ, "LEARNCC_BENCH_BODY": str(body_path)}
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{clients}",
                f"-d{duration_s:g}s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
    rate_match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    summary = re.search(r"LEARNCC (\S+) (\S+) (\S+) (\S+)", out)
    if rate_match is None or summary is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    rate = float(rate_match.group(1))
    _, errors, p50, p99 = summary.groups()
    return Result(url, rate, float(p50), float(p99), int(errors))


# -- orchestration ------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(kind: str, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "learncc.bench.http_bench",
        "--serve",
        kind,
        "--port",
        str(port),
        "--input-size",
        str(args.input_size),
    ]
    if args.coded:
        cmd.append("--coded")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=1)
            return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the {kind} server did not start")


def run(args: argparse.Namespace) -> list[Result]:
    """Measure the echo server, learncc /infer and learncc /v2 infer."""
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "aiohttp"
    x = np.linspace(0, 1, args.input_size).round(4).tolist()
    bodies = {
        "echo": json.dumps({"input": x}).encode(),
        "infer": json.dumps({"input": x}).encode(),
        "v2": json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, args.input_size],
                        "datatype": "FP32",
                        "data": x,
                    }
                ]
            }
        ).encode(),
    }
    results = []
    for kind, paths in (("echo", ["echo"]), ("learncc", ["infer", "v2"])):
        proc, port = _start(kind, args)
        try:
            for path in paths:
                route = {
                    "echo": "/echo",
                    "infer": "/infer",
                    "v2": "/v2/models/bench/infer",
                }[path]
                url = f"http://127.0.0.1:{port}{route}"
                cpu_before_s = _cpu_s(proc.pid)
                if client == "wrk":
                    result = _wrk_load(url, bodies[path], args.clients, args.duration_s)
                else:
                    result = asyncio.run(
                        _aiohttp_load(url, bodies[path], args.clients, args.duration_s)
                    )
                # the aiohttp client warms up for 0.3 s inside the measured CPU time
                served = result.requests_per_s * (
                    args.duration_s + 0.3 * (client != "wrk")
                )
                cpu_us = (_cpu_s(proc.pid) - cpu_before_s) / served * 1e6
                results.append(
                    Result(
                        f"{kind} {route}",
                        result.requests_per_s,
                        result.p50_ms,
                        result.p99_ms,
                        result.errors,
                        cpu_us,
                    )
                )
        finally:
            proc.terminate()
            proc.wait(60)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--input-size", type=int, default=4, help="floats per query")
    parser.add_argument("--coded", action="store_true", help="serve k=2, r=1 coded")
    parser.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--serve", choices=["learncc", "echo"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve == "learncc":
        asyncio.run(_serve_learncc(args.port, args.input_size, args.coded))
        return
    if args.serve == "echo":
        asyncio.run(_serve_echo(args.port))
        return
    results = run(args)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return
    echo, cpu = results[0].requests_per_s, results[0].server_cpu_us
    for r in results:
        print(
            f"{r.target:32s} {r.requests_per_s:9.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
            f"p99 {r.p99_ms:6.2f} ms  errors {r.errors}  server CPU "
            f"{r.server_cpu_us:5.0f} us/req  echo/this {echo / r.requests_per_s:4.2f}x "
            f"(rate), {r.server_cpu_us / cpu:4.2f}x (CPU)"
        )


if __name__ == "__main__":
    main()

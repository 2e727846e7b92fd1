"""The HTTP app over a fake backend (no processes): the plain JSON API, status
codes, the bearer token, limits, deadlines, metrics and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import math
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from fakes import FakeBackend
from learncc.codes import CodeConfig, make_code
from learncc.errors import ConfigError
from learncc.serving import Coding, Frontend
from learncc.serving.frontend import Answer
from learncc.serving.http import HttpServer, make_app, serve_http
from learncc.serving.http.app import SERVICE
from learncc.serving.metrics import ServingMetrics
from learncc.serving.worker import NON_FINITE_OUTPUT

W = np.eye(4, dtype=np.float32)[:3]  # F(x) = x[:3]
TOKEN = "s3cret-token"


def frontend_of(backend: FakeBackend | None = None, **kw: Any) -> Frontend:
    backend = backend or FakeBackend(W, data_instances=2)
    kw.setdefault("query_timeout_s", 0.5)
    return Frontend(backend, input_shape=(1, 2, 2), **kw)


@contextlib.asynccontextmanager
async def serving(frontend: Frontend, **options: Any) -> AsyncIterator[TestClient]:
    options.setdefault("max_body_bytes", 4096)
    options.setdefault("output_shape", (3,))
    await frontend.start()
    try:
        async with TestClient(TestServer(make_app(frontend, **options))) as c:
            yield c
    finally:
        await frontend.close()
    assert frontend.statistics().pending == 0


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    async with serving(frontend_of()) as c:
        yield c


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_infer_returns_the_output_and_top1(client: TestClient) -> None:
    resp = await client.post("/infer", json={"input": [[[0.0, 5.0], [1.0, 2.0]]]})
    assert resp.status == 200
    assert await resp.json() == {
        "output": [0.0, 5.0, 1.0],
        "top1": 1,
        "reconstructed": False,
        "default": False,
    }
    resp = await client.post("/infer", json={"inputs": [[1, 0, 0, 0], [0, 0, 3, 0]]})
    assert [a["top1"] for a in (await resp.json())["answers"]] == [0, 2]


async def test_model_and_health_describe_the_server(client: TestClient) -> None:
    model = await (await client.get("/model")).json()
    assert model == {"name": "model", "input_shape": [1, 2, 2], "output_shape": [3]}
    await client.post("/infer", json={"input": [1, 2, 3, 4]})
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok"
    assert (health["accepted"], health["answered"], health["pending"]) == (1, 1, 0)


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        (b"{oops", 400, "malformed JSON"),
        (b"", 400, "empty body"),
        (b"[1, 2]", 400, "exactly one of 'input' or 'inputs'"),
        (
            b'{"input": [1, 2, 3]}',
            400,
            r"shape \(3,\) does not match the model's input \(1, 2, 2\)",
        ),
        (
            b'{"input": [[1, 2], [3]]}',
            400,
            r"rectangular nested list: input\[1\] has 1 elements where input\[0\]",
        ),
        (b'{"input": [[1, 2], 3]}', 400, r"input\[1\] is 3 where its siblings"),
        (b'{"input": "abcd"}', 400, "must be a nested list of numbers, got str"),
        (b'{"input": true}', 400, "must be a nested list of numbers, got bool"),
        (b'{"input": null}', 400, "must be a nested list of numbers, got null"),
        # fresh-user finding: these were converted and answered 200
        (b'{"input": ["1.5", 2, 3, 4]}', 400, r'got "1.5" at input\[0\]'),
        (b'{"input": [1, null, 3, 4]}', 400, r"or null\); got null at input\[1\]"),
        (b'{"input": [[1, 2], [true, 4]]}', 400, r"got true at input\[1\]\[0\]"),
        (
            b'{"inputs": [[1, 2, 3, 4], [0, false, 0, 0]]}',
            400,
            r"got false at inputs\[1\]\[1\]",
        ),
        # beyond int64: NumPy makes an object array of it, once called a string
        (
            b'{"input": [1, 2, 3, 100000000000000000000000000000]}',
            400,
            r"'input' holds 1e\+29 at \[3\], beyond \+-1e\+06",
        ),
        (
            b'{"inputs": [[1, 2, 3, 4], [1, 2, 3]]}',
            400,
            r"'inputs\[1\]': query shape \(3,\)",
        ),
        (
            b'{"input": [1, 2, 3, 4], "timeout_ms": 5}',
            400,
            r"unknown field\(s\) \['timeout_ms'\].*query string",
        ),
        (b'{"input": [1, 2, 3, 1e999]}', 400, "infinity"),
        # finite but huge: F's outputs would overflow (fresh-user test)
        (
            b'{"input": [1, 2, 3, 3e38]}',
            400,
            r"'input' holds 3e\+38 at \[3\], beyond \+-1e\+06 \(the server's max_abs",
        ),
        (b'{"inputs": [[1, 2, 3, 4], [0, 0, 0, -2e6]]}', 400, "beyond"),
        (b'{"input": [1, 2, 3, NaN]}', 400, "malformed JSON.*has no NaN or Infinity"),
        (b'{"inputs": []}', 400, "non-empty list"),
        (
            b'{"inputs": [' + b"[0,0,0,0]," * 400 + b"[0,0,0,0]]}",
            400,
            "at most 8 inputs",
        ),
        (b'{"input": [' + b"0," * 3000 + b"0]}", 413, "exceeds the 4096-byte limit"),
    ],
)
async def test_bad_requests_get_4xx_naming_the_problem(
    body: bytes, status: int, match: str
) -> None:
    async with serving(
        frontend_of(), max_body_bytes=8192 if status == 400 else 4096, max_batch=8
    ) as client:
        resp = await client.post(
            "/infer", data=body, headers={"Content-Type": "application/json"}
        )
        assert resp.status == status
        assert re.search(match, (await resp.json())["error"])
        # and the server keeps serving
        ok = await client.post("/infer", json={"input": [1, 2, 3, 4]})
        assert ok.status == 200


async def test_a_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"input": ['
        for _ in range(100):
            yield b"0," * 50
        yield b"0]}"

    resp = await client.post(
        "/infer", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413 and "4096-byte limit" in (await resp.json())["error"]


async def test_a_compressed_body_is_limited_by_its_inflated_size(
    client: TestClient,
) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    small = gzip.compress(b'{"input": [1, 2, 3, 4]}')
    resp = await client.post("/infer", data=small, headers=headers)
    assert resp.status == 200 and (await resp.json())["output"] == [1, 2, 3]
    # within the limit on the wire, past it once inflated
    bomb = gzip.compress(b'{"input": [' + b"0," * 3000 + b"0]}")
    assert len(bomb) < 4096
    resp = await client.post("/infer", data=bomb, headers=headers)
    assert resp.status == 413 and "4096-byte limit" in (await resp.json())["error"]


async def test_wrong_content_type_is_415(client: TestClient) -> None:
    resp = await client.post("/infer", data="x", headers={"Content-Type": "text/plain"})
    assert resp.status == 415 and "send JSON" in (await resp.json())["error"]


async def test_unknown_routes_and_methods_get_json_errors(client: TestClient) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404 and "no route '/nope'" in (await resp.json())["error"]
    resp = await client.put("/infer", json={})
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    assert "PUT is not allowed on '/infer'" in (await resp.json())["error"]


async def test_unanswerable_query_is_504_and_counted(client: TestClient) -> None:
    client.app[SERVICE].frontend.backend.delay_s = lambda role, i, tag: None
    resp = await client.post("/infer", json={"input": [1, 2, 3, 4]})
    assert resp.status == 504
    assert "got no answer within 0.5 s" in (await resp.json())["error"]
    health = await (await client.get("/health")).json()
    assert health["timed_out"] == 1 and health["pending"] == 0


async def test_timeout_ms_is_the_deadline_and_gives_the_default_answer() -> None:
    never = FakeBackend(W, data_instances=2, delay_s=lambda role, i, tag: None)
    frontend = frontend_of(never, default_output=np.array([9.0, 8.0, 7.0], np.float32))
    async with serving(frontend) as client:
        start = time.perf_counter()
        resp = await client.post("/infer?timeout_ms=50", json={"input": [1, 2, 3, 4]})
        assert time.perf_counter() - start < 0.4  # the deadline, not query_timeout_s
        assert await resp.json() == {
            "output": [9.0, 8.0, 7.0],
            "top1": 0,
            "reconstructed": False,
            "default": True,
        }
        resp = await client.post("/infer?timeout_ms=-3", json={"input": [1, 2, 3, 4]})
        assert resp.status == 400
        assert (
            "timeout_ms must be a finite number > 0, got '-3'"
            in (await resp.json())["error"]
        )
        resp = await client.post("/infer?timeout_ms=soon", json={"input": [1, 2, 3, 4]})
        assert resp.status == 400
        # named as sent (fresh-user test: it said "got nan")
        assert "got 'soon'" in (await resp.json())["error"]
        # fresh-user test: these were answered 200, one deadline chosen silently
        for query, match in (
            ("timeout_ms=5&timeout_ms=6", "give timeout_ms once, got ['5', '6']"),
            ("foo=1", "unknown query parameter(s) ['foo']; /infer takes timeout_ms"),
        ):
            resp = await client.post(f"/infer?{query}", json={"input": [1, 2, 3, 4]})
            assert resp.status == 400 and match in (await resp.json())["error"]


async def test_default_deadline_applies_when_the_request_names_none() -> None:
    never = FakeBackend(W, data_instances=2, delay_s=lambda role, i, tag: None)
    async with serving(frontend_of(never), default_deadline_s=0.05) as client:
        resp = await client.post("/infer", json={"input": [1, 2, 3, 4]})
        assert resp.status == 504
        assert "within 0.05 s" in (await resp.json())["error"]


async def test_overload_is_503_with_retry_after() -> None:
    never = FakeBackend(W, data_instances=2, delay_s=lambda role, i, tag: None)
    async with serving(frontend_of(never, max_pending=1), retry_after_s=2) as client:
        first = asyncio.ensure_future(
            client.post("/infer", json={"input": [1, 2, 3, 4]})
        )
        while client.app[SERVICE].frontend.statistics().pending == 0:
            await asyncio.sleep(0.005)
        resp = await client.post("/infer", json={"input": [1, 2, 3, 4]})
        assert resp.status == 503 and resp.headers["Retry-After"] == "2"
        assert "1 queries pending, limit 1" in (await resp.json())["error"]
        # refused by submit itself, so counted as the frontend counts refusals
        assert client.app[SERVICE].frontend.statistics().refused == 1
        assert (await first).status == 504
        # a batch larger than the limit is refused whole, before acceptance
        accepted = client.app[SERVICE].frontend.statistics().accepted
        resp = await client.post("/infer", json={"inputs": [[1, 2, 3, 4]] * 3})
        assert resp.status == 413
        assert client.app[SERVICE].frontend.statistics().accepted == accepted


async def test_no_live_instance_is_503(client: TestClient) -> None:
    backend = client.app[SERVICE].frontend.backend
    backend.dead |= {("data", 0), ("data", 1)}
    resp = await client.post("/infer", json={"input": [1, 2, 3, 4]})
    assert (
        resp.status == 503 and "no live data instance" in (await resp.json())["error"]
    )


async def test_bearer_token_guards_all_but_liveness() -> None:
    async with serving(frontend_of(), token=TOKEN) as client:
        resp = await client.post("/infer", json={"input": [1, 2, 3, 4]})
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="learncc"'
        assert "missing bearer token" in (await resp.json())["error"]
        for header in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer", "Bearer é"):
            resp = await client.get("/metrics", headers={"Authorization": header})
            assert resp.status == 401, header
            assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        assert (await client.get("/v2/health/live")).status == 200
        assert (await client.get("/v2/health/ready")).status == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        resp = await client.post("/infer", json={"input": [1, 2, 3, 4]}, headers=auth)
        assert resp.status == 200


def test_bad_options_are_refused_naming_the_option() -> None:
    frontend = frontend_of()
    with pytest.raises(ConfigError, match="max_body_bytes must be >= 1024, got 10"):
        make_app(frontend, max_body_bytes=10)
    with pytest.raises(ConfigError, match="token must be None"):
        make_app(frontend, token="")
    with pytest.raises(ConfigError, match="default_deadline_s must be > 0"):
        make_app(frontend, default_deadline_s=0)
    with pytest.raises(ConfigError, match="model_name must be a non-empty name"):
        make_app(frontend, model_name="a/b")
    with pytest.raises(ConfigError, match=r"max_abs_input must be > 0 \(or inf\)"):
        make_app(frontend, max_abs_input=0)
    with pytest.raises(ConfigError, match="body_timeout_s must be > 0"):
        make_app(frontend, body_timeout_s=-1)
    with pytest.raises(ConfigError, match="port must be an integer in 0..65535"):
        HttpServer(frontend, port=70000)
    with pytest.raises(ConfigError, match="drain_timeout_s must be a finite number"):
        HttpServer(frontend, drain_timeout_s=math.nan)


async def test_the_input_bound_is_configurable() -> None:
    async with serving(frontend_of(), max_abs_input=10) as client:
        resp = await client.post("/infer", json={"input": [1, 2, 3, 11]})
        assert resp.status == 400
        assert (
            "beyond +-10 (the server's max_abs_input)" in (await resp.json())["error"]
        )
    async with serving(frontend_of(), max_abs_input=math.inf) as client:
        resp = await client.post("/infer", json={"input": [1e30, 2, 3, 4]})
        assert resp.status == 200
        assert (await resp.json())["output"][0] == float(np.float32(1e30))


class RefusingBackend(FakeBackend):
    """Instances that refuse non-finite outputs, as the worker process does."""

    def send(self, role: str, index: int, tag: int, x: np.ndarray) -> None:
        with np.errstate(over="ignore"):  # the overflow is the point
            super().send(role, index, tag, x)

    def _deliver(self, role: str, index: int, tag: int, output: np.ndarray) -> None:
        if np.isfinite(output).all():
            super()._deliver(role, index, tag, output)
            return
        self.depths[(role, index)] -= 1
        self.handler.on_result(role, index, tag, None, f"{NON_FINITE_OUTPUT}: ...")


class OverflowingBackend(FakeBackend):
    """Instances that answer inf (a backend that does not check outputs)."""

    def _deliver(self, role: str, index: int, tag: int, output: np.ndarray) -> None:
        super()._deliver(role, index, tag, np.full_like(output, np.inf))


async def test_a_non_finite_output_is_an_explicit_error_not_null() -> None:
    # F(x) = 1e38 x[:3] overflows for inputs well inside the bound
    huge = W * np.float32(1e38)
    async with serving(frontend_of(RefusingBackend(huge, data_instances=2))) as c:
        resp = await c.post("/infer", json={"input": [4, 0, 0, 0]})
        assert resp.status == 422
        assert re.search(
            rf"instance data/\d failed the query: {NON_FINITE_OUTPUT}",
            (await resp.json())["error"],
        )
        ok = await c.post("/infer", json={"input": [1e-38, 0, 0, 0]})
        assert ok.status == 200
    async with serving(frontend_of(OverflowingBackend(W, data_instances=2))) as c:
        resp = await c.post("/infer", json={"inputs": [[1, 2, 3, 4]]})
        assert resp.status == 422
        assert re.match(
            "the model's output for input 0 holds NaN or infinity",
            (await resp.json())["error"],
        )


async def _send_partial_body(
    port: int,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"input": ['
    )
    await writer.drain()
    return reader, writer


async def test_a_stalled_body_gets_408_after_body_timeout_s() -> None:
    async with serving(frontend_of(), body_timeout_s=0.2) as client:
        reader, writer = await _send_partial_body(client.server.port)
        start = time.perf_counter()
        answer = await asyncio.wait_for(reader.readuntil(b"}"), 5)
        assert 0.15 < time.perf_counter() - start < 3
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"did not arrive within 0.2 s (body_timeout_s)" in answer
        await _close(writer)
        # a body that arrives slowly but in time is served
        reader, writer = await _send_partial_body(client.server.port)
        await asyncio.sleep(0.05)
        writer.write(b"1, 2, 3, 4]}" + b" " * 77)
        answer = await asyncio.wait_for(reader.readuntil(b"}"), 5)
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"top1":2' in answer
        await _close(writer)


async def test_a_client_gone_mid_body_is_not_an_error_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="learncc")
    # HttpServer, not TestServer: the test server cancels the handler instead
    server = HttpServer(frontend_of(), port=0)
    await server.start()
    try:
        _, writer = await _send_partial_body(server.port)
        await asyncio.sleep(0.05)
        await _close(writer)
        for _ in range(200):
            if any("mid-body" in r.message for r in caplog.records):
                break
            await asyncio.sleep(0.01)
        levels = [r.levelname for r in caplog.records if "mid-body" in r.message]
        assert levels == ["DEBUG"]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"{server.url}/infer", json={"input": [1] * 4})
            assert resp.status == 200
    finally:
        await server.shutdown()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_shutdown_does_not_wait_for_a_stalled_body() -> None:
    frontend = frontend_of()
    server = HttpServer(frontend, port=0, drain_timeout_s=5.0, body_timeout_s=30.0)
    await server.start()
    reader, writer = await _send_partial_body(server.port)
    await asyncio.sleep(0.1)
    start = time.perf_counter()
    await server.shutdown()
    # was the drain timeout (and more) before: the stalled client held it
    assert time.perf_counter() - start < 2.0
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"shutting down" in answer
    await _close(writer)


async def test_a_malformed_request_is_a_400_and_one_warning_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = HttpServer(frontend_of(), port=0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: abc\r\n\r\n{}"
        )
        with caplog.at_level(logging.WARNING, logger="aiohttp.server"):
            answer = await asyncio.wait_for(reader.read(), 5)
        await _close(writer)
    finally:
        await server.shutdown()
    assert answer.startswith(b"HTTP/1.0 400 ") and b"Content-Length" in answer
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(records) == 1 and records[0].levelname == "WARNING"
    assert records[0].exc_info is None
    assert "refused a malformed request: Invalid character in Content-Length" in (
        records[0].getMessage()
    )


async def test_metrics_count_outcomes_and_latency() -> None:
    # addition code, k=2; data instance 1 never answers, so its query is rebuilt
    enc, dec = make_code(CodeConfig(k=2, r=1, encoder="addition"), (4,))
    fill = np.full(4, 0.5, np.float32)
    backend = FakeBackend(
        W,
        data_instances=2,
        parity_instances=1,
        delay_s=lambda role, i, tag: None if (role, i) == ("data", 1) else 0.001,
    )
    frontend = Frontend(
        backend,
        input_shape=(4,),
        coding=Coding(enc, dec, fill, W @ fill),
        query_timeout_s=0.5,
    )
    async with serving(frontend) as client:
        resp = await client.post(
            "/infer", json={"inputs": [[1, 2, 3, 4], [5, 6, 7, 8]]}
        )
        answers = (await resp.json())["answers"]
        assert [a["reconstructed"] for a in answers] == [False, True]
        np.testing.assert_allclose(answers[1]["output"], [5, 6, 7], rtol=1e-6)
        await client.post("/infer", json={"input": [1]})  # a 400
        text = await (await client.get("/metrics")).text()
    samples = metric_samples(text)
    assert samples[("learncc_queries_accepted_total", ())] == 2
    assert samples[("learncc_queries_answered_total", ())] == 2
    assert samples[("learncc_queries_reconstructed_total", ())] == 1
    assert samples[("learncc_queries_timed_out_total", ())] == 0
    assert samples[("learncc_queries_pending", ())] == 0
    for outcome in ("original", "reconstructed"):
        key = ("learncc_query_latency_seconds_count", (("outcome", outcome),))
        assert samples[key] == 1
    assert (
        samples[("learncc_query_latency_seconds_count", (("outcome", "default"),))] == 0
    )
    # data/1 still holds the query it never answered: alone there, it is the
    # one being computed, so its reconstruction did not try to withdraw it
    for role, index, depth in (("data", "0", 0), ("data", "1", 1), ("parity", "0", 0)):
        labels = (("index", index), ("role", role))
        assert samples[("learncc_instance_queue_depth", labels)] == depth
        assert samples[("learncc_instance_up", labels)] == 1
    route = (("route", "/infer"), ("status", "400"))
    assert samples[("learncc_http_requests_total", route)] == 1


async def test_latency_buckets_count_each_answer_up_to_its_bound() -> None:
    metrics = ServingMetrics(frontend_of(), buckets_s=(0.001, 0.01))
    for latency_s in (0.0005, 0.001, 0.002, 0.5):
        metrics.observe_answer(Answer(np.zeros(3), False, False), latency_s)
    metrics.observe_answer(Answer(np.zeros(3), True, False), 0.01)
    samples = metric_samples(metrics.exposition().decode())

    def buckets(outcome: str) -> list[float]:
        return [
            samples[
                ("learncc_query_latency_seconds_bucket", (("le", le), ("outcome", o)))
            ]
            for le, o in (("0.001", outcome), ("0.01", outcome), ("+Inf", outcome))
        ]

    # "le" buckets: a latency equal to a bound falls in that bound's bucket
    assert buckets("original") == [2, 3, 4]
    assert buckets("reconstructed") == [0, 1, 1]
    assert buckets("default") == [0, 0, 0]
    sums = {
        o: samples[("learncc_query_latency_seconds_sum", (("outcome", o),))]
        for o in ("original", "reconstructed")
    }
    assert sums == {"original": pytest.approx(0.5035), "reconstructed": 0.01}
    for o in ("original", "reconstructed", "default"):
        key = ("learncc_query_latency_seconds_created", (("outcome", o),))
        assert samples[key] == pytest.approx(time.time(), abs=60)
    with pytest.raises(ValueError, match="buckets_s must be increasing"):
        ServingMetrics(frontend_of(), buckets_s=(0.1, 0.01))


async def test_draining_refuses_new_queries_and_reports_not_ready(
    client: TestClient,
) -> None:
    client.app[SERVICE].draining = True
    resp = await client.post("/infer", json={"input": [1, 2, 3, 4]})
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert "shutting down" in (await resp.json())["error"]
    assert (await client.get("/v2/health/ready")).status == 503
    assert (await client.get("/v2/health/live")).status == 200


async def test_shutdown_drains_requests_in_flight() -> None:
    slow = FakeBackend(W, data_instances=2, delay_s=lambda role, i, tag: 0.3)
    frontend = frontend_of(slow, query_timeout_s=5.0)
    server = HttpServer(frontend, port=0, drain_timeout_s=5.0)
    await server.start()
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(
            session.post(f"{server.url}/infer", json={"input": [1, 2, 3, 4]})
        )
        while frontend.statistics().pending == 0:
            await asyncio.sleep(0.005)
        await server.shutdown()
        resp = await request
        assert resp.status == 200 and (await resp.json())["output"] == [1, 2, 3]
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{server.url}/v2/health/live")
    assert slow.closed and frontend.statistics().pending == 0


async def test_shutdown_gives_up_after_the_drain_timeout() -> None:
    never = FakeBackend(W, data_instances=2, delay_s=lambda role, i, tag: None)
    frontend = frontend_of(never, query_timeout_s=30.0)
    server = HttpServer(frontend, port=0, drain_timeout_s=0.2)
    await server.start()
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(
            session.post(f"{server.url}/infer", json={"input": [1, 2, 3, 4]})
        )
        while frontend.statistics().pending == 0:
            await asyncio.sleep(0.005)
        start = time.perf_counter()
        await server.shutdown()
        assert time.perf_counter() - start < 1.5
        with pytest.raises(aiohttp.ClientError):
            await request
    assert frontend.statistics().pending == 0 and never.closed


async def test_serve_http_stops_on_sigterm() -> None:
    ready = asyncio.Event()
    frontend = frontend_of()
    task = asyncio.ensure_future(serve_http(frontend, port=0, ready=ready))
    await asyncio.wait_for(ready.wait(), 5)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, 5)
    assert frontend.backend.closed
    # the handler is removed again: the loop no longer owns SIGTERM
    assert not asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(["input", "inputs", "x"]), inner, max_size=3)
    ),
    max_leaves=20,
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    body=st.one_of(
        st.binary(max_size=200), JSON_VALUES.map(lambda v: json.dumps(v).encode())
    ),
    query=st.dictionaries(
        st.sampled_from(["timeout_ms", "x"]), st.text(max_size=6), max_size=2
    ),
    content_type=st.sampled_from(["application/json", "text/plain", ""]),
)
async def test_fuzzed_requests_never_crash_the_server(
    client: TestClient, body: bytes, query: dict[str, str], content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    resp = await client.post("/infer", data=body, params=query, headers=headers)
    assert resp.status in (200, 400, 413, 415)
    assert resp.content_type == "application/json"
    assert resp.status == 200 or "error" in await resp.json()
    assert (await client.post("/infer", json={"input": [1, 2, 3, 4]})).status == 200


async def test_batch_is_admitted_whole_or_not_at_all() -> None:
    frontend = Frontend(FakeBackend(W, data_instances=2), input_shape=(1, 2, 2),
                        max_pending=3)  # fmt: skip
    await frontend.start()
    async with TestClient(TestServer(make_app(frontend))) as c:
        too_big = await c.post("/infer", json={"inputs": [[1, 2, 3, 4]] * 4})
        assert too_big.status == 413
        assert (
            "exceeds the server's limit of 3 pending" in (await too_big.json())["error"]
        )
        ok = await c.post("/infer", json={"inputs": [[1, 2, 3, 4]] * 3})
        assert ok.status == 200
    assert frontend.statistics().accepted == 3  # nothing of the big batch
    await frontend.close()

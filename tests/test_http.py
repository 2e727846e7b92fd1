"""The JSON HTTP endpoint, over a fake backend (no processes)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes import FakeBackend
from learncc.serving import Frontend
from learncc.serving.http import make_app

W = np.eye(4, dtype=np.float32)[:3]  # F(x) = x[:3]


@pytest.fixture
async def client():
    frontend = Frontend(FakeBackend(W, data_instances=2), input_shape=(1, 2, 2),
                        query_timeout_s=0.5)  # fmt: skip
    await frontend.start()
    async with TestClient(TestServer(make_app(frontend, max_body_bytes=4096))) as c:
        c.frontend = frontend
        yield c
    await frontend.close()


async def test_infer_returns_the_output_and_top1(client) -> None:
    resp = await client.post("/infer", json={"input": [[[0.0, 5.0], [1.0, 2.0]]]})
    assert resp.status == 200
    assert await resp.json() == {"output": [0.0, 5.0, 1.0], "top1": 1, "reconstructed": False}
    resp = await client.post("/infer", json={"inputs": [[1, 0, 0, 0], [0, 0, 3, 0]]})
    assert [a["top1"] for a in (await resp.json())["answers"]] == [0, 2]


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        (b"{oops", 400, "malformed JSON"),
        (b"[1, 2]", 400, "exactly one of 'input' or 'inputs'"),
        (b'{"input": [1, 2, 3]}', 400, r"shape \(3,\) does not match the model's input \(1, 2, 2\)"),
        (b'{"input": [[1, 2], [3]]}', 400, "rectangular nested list"),
        (b'{"input": "abcd"}', 400, "must be a nested list of numbers"),
        (b'{"input": [1, 2, 3, 1e999]}', 400, "infinity"),
        (b'{"inputs": []}', 400, "non-empty list"),
        (b'{"input": [' + b"0," * 3000 + b"0]}", 413, "exceeds the 4096-byte limit"),
    ],
)
async def test_bad_requests_get_4xx_naming_the_problem(client, body: bytes, status: int, match: str) -> None:
    resp = await client.post("/infer", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == status
    assert re.search(match, (await resp.json())["error"])
    # and the server keeps serving
    ok = await client.post("/infer", json={"input": [1, 2, 3, 4]})
    assert ok.status == 200


async def test_wrong_content_type_is_415(client) -> None:
    resp = await client.post("/infer", data="x", headers={"Content-Type": "text/plain"})
    assert resp.status == 415 and "send JSON" in (await resp.json())["error"]


async def test_unanswerable_query_is_504_and_counted(client) -> None:
    client.frontend.backend.delay_s = lambda role, i, tag: None
    resp = await client.post("/infer", json={"input": [1, 2, 3, 4]})
    assert resp.status == 504 and "got no answer within 0.5 s" in (await resp.json())["error"]
    health = await (await client.get("/health")).json()
    assert health["timed_out"] == 1 and health["pending"] == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(["input", "inputs", "x"]), inner, max_size=3),
    max_leaves=20,
).map(lambda v: json.dumps(v).encode())))  # fmt: skip
async def test_fuzzed_bodies_never_crash_the_server(client, body: bytes) -> None:
    resp = await client.post("/infer", data=body, headers={"Content-Type": "application/json"})
    assert resp.status in (200, 400, 413)
    assert resp.status == 200 or "error" in await resp.json()

"""The Open Inference Protocol v2 routes: exact answers over a fake backend,
the binary tensor extension, the real ``tritonclient.http`` client, and
fuzzing (hypothesis, and schemathesis against /openapi.json)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes import FakeBackend
from learncc.serving import Frontend
from learncc.serving.http import HttpServer, make_app
from learncc.serving.http.app import SERVICE

W = np.eye(4, dtype=np.float32)[:3]  # F(x) = x[:3]
NAME = "digits"
INFER = f"/v2/models/{NAME}/infer"
TOKEN = "tok-123"


def frontend_of(**kw: Any) -> Frontend:
    backend = kw.pop("backend", None) or FakeBackend(W, data_instances=2)
    return Frontend(backend, input_shape=(1, 2, 2), query_timeout_s=0.5, **kw)


@contextlib.asynccontextmanager
async def serving(frontend: Frontend, **options: Any) -> AsyncIterator[TestClient]:
    options = {
        "model_name": NAME,
        "output_shape": (3,),
        "max_body_bytes": 4096,
        **options,
    }
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


def tensor(x: np.ndarray, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    return {
        "name": "input",
        "shape": list(x.shape),
        "datatype": datatype,
        "data": x.ravel().tolist(),
        **extra,
    }


def binary_body(doc: dict[str, Any], *raw: bytes) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps(doc)
    return header + b"".join(raw), {"Inference-Header-Content-Length": str(len(header))}


X = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)  # a batch of two


async def test_health_and_metadata(client: TestClient) -> None:
    assert await (await client.get("/v2/health/live")).json() == {"live": True}
    assert await (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get(f"/v2/models/{NAME}/ready")).status == 200
    assert (await client.get(f"/v2/models/{NAME}/versions/1/ready")).status == 200
    server = await (await client.get("/v2")).json()
    assert server["name"] == "learncc" and "binary_tensor_data" in server["extensions"]
    meta = await (await client.get(f"/v2/models/{NAME}")).json()
    assert meta == {
        "name": NAME,
        "versions": ["1"],
        "platform": "learncc",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 2, 2]}],
        "outputs": [
            {"name": "output", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "reconstructed", "datatype": "BOOL", "shape": [-1]},
            {"name": "default", "datatype": "BOOL", "shape": [-1]},
        ],
    }


async def test_json_infer_answers_each_batch_item(client: TestClient) -> None:
    resp = await client.post(INFER, json={"id": "q1", "inputs": [tensor(X)]})
    assert resp.status == 200
    assert await resp.json() == {
        "model_name": NAME,
        "model_version": "1",
        "id": "q1",
        "parameters": {"reconstructed_count": 0, "default_count": 0},
        "outputs": [
            {
                "name": "output",
                "datatype": "FP32",
                "shape": [2, 3],
                "data": [0, 1, 2, 4, 5, 6],
            },
            {
                "name": "reconstructed",
                "datatype": "BOOL",
                "shape": [2],
                "data": [False, False],
            },
            {
                "name": "default",
                "datatype": "BOOL",
                "shape": [2],
                "data": [False, False],
            },
        ],
    }
    assert client.app[SERVICE].frontend.statistics().accepted == 2


async def test_nested_json_data_and_integer_datatypes_are_accepted(
    client: TestClient,
) -> None:
    for datatype, data in (
        ("INT64", X.astype(np.int64)),
        ("FP64", X.astype(np.float64)),
        ("UINT8", X.astype(np.uint8)),
        ("FP16", X.astype(np.float16)),
    ):
        doc = {
            "inputs": [{**tensor(data, datatype), "data": data.tolist()}],
            "outputs": [{"name": "output"}],
        }
        out = (await (await client.post(INFER, json=doc)).json())["outputs"]
        assert out == [
            {
                "name": "output",
                "datatype": "FP32",
                "shape": [2, 3],
                "data": [0, 1, 2, 4, 5, 6],
            }
        ], datatype


async def test_binary_inputs_and_outputs(client: TestClient) -> None:
    doc = {
        "inputs": [
            {
                "name": "input",
                "shape": [2, 1, 2, 2],
                "datatype": "FP64",
                "parameters": {"binary_data_size": X.size * 8},
            }
        ],
        "outputs": [
            {"name": "output", "parameters": {"binary_data": True}},
            {"name": "reconstructed"},
        ],
    }
    body, headers = binary_body(doc, X.astype("<f8").tobytes())
    resp = await client.post(INFER, data=body, headers=headers)
    assert resp.status == 200
    raw = await resp.read()
    n = int(resp.headers["Inference-Header-Content-Length"])
    header = orjson.loads(raw[:n])
    assert header["outputs"][0] == {
        "name": "output",
        "datatype": "FP32",
        "shape": [2, 3],
        "parameters": {"binary_data_size": 24},
    }
    assert header["outputs"][1]["data"] == [False, False]
    np.testing.assert_array_equal(
        np.frombuffer(raw[n:], "<f4").reshape(2, 3), [[0, 1, 2], [4, 5, 6]]
    )


async def test_binary_data_output_makes_every_output_binary(client: TestClient) -> None:
    doc = {"inputs": [tensor(X)], "parameters": {"binary_data_output": True}}
    raw = await (await client.post(INFER, json=doc)).read()
    header_len = len(orjson.dumps(orjson.loads(raw[: raw.index(b"}]}") + 3])))
    header = orjson.loads(raw[:header_len])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [24, 2, 2] and len(raw) == header_len + 28


@pytest.mark.parametrize(
    ("doc", "headers", "status", "match"),
    [
        (
            {"inputs": [tensor(X)]},
            {},
            404,
            "unknown model 'nope'; this server serves 'digits'",
        ),
        ({"inputs": []}, {}, 400, "exactly one input, 'input'; got 0"),
        ({"inputs": [tensor(X), tensor(X)]}, {}, 400, "exactly one input"),
        ({"inputs": [{**tensor(X), "name": "x"}]}, {}, 400, "unknown input 'x'"),
        ({"inputs": [tensor(X, "BYTES")]}, {}, 400, "datatype 'BYTES' is not accepted"),
        ({"inputs": [tensor(X, "BOOL")]}, {}, 400, "datatype 'BOOL' is not accepted"),
        (
            {"inputs": [{**tensor(X), "shape": [2, 4]}]},
            {},
            400,
            r"shape \[2, 4\] does not match the model's \[batch, \*\[1, 2, 2\]\]",
        ),
        (
            {"inputs": [{**tensor(X), "shape": [0, 1, 2, 2]}]},
            {},
            400,
            "batch dimension",
        ),
        (
            {"inputs": [{**tensor(X), "shape": [3, 1, 2, 2]}]},
            {},
            400,
            "holds 8 elements but shape",
        ),
        ({"inputs": [{**tensor(X), "data": [1.5] * 8}]} | {}, {}, 200, ""),
        (
            {"inputs": [tensor(X.astype(np.int64) + 2**24 + 1, "INT64")]},
            {},
            400,
            r"INT64 input holds 16777217 at \[0\]\[0\]\[0\]\[0\], beyond \+-1e\+06",
        ),
        (
            {"inputs": [{**tensor(X, "INT32"), "data": [0.5] * 8}]},
            {},
            400,
            "datatype INT32 must hold integers only",
        ),
        (
            {"inputs": [{**tensor(X), "data": ["a"] * 8}]},
            {},
            400,
            "must hold numbers only",
        ),
        (
            {"inputs": [{**tensor(X, "FP64"), "data": [1e300] * 8}]},
            {},
            400,
            r"FP64 input holds 1e\+300 at \[0\]\[0\]\[0\]\[0\], beyond \+-1e\+06",
        ),
        # finite but huge: F's outputs would overflow (fresh-user test)
        (
            {"inputs": [{**tensor(X), "data": [3e38] * 8}]},
            {},
            400,
            r"FP32 input holds 3e\+38 at \[0\]\[0\]\[0\]\[0\], beyond \+-1e\+06 "
            r"\(the server's max_abs_input\)",
        ),
        (
            {"inputs": [{**tensor(X, "INT64"), "data": [0] * 7 + [-2_000_000]}]},
            {},
            400,
            r"INT64 input holds -2000000 at \[1\]\[0\]\[1\]\[1\], beyond \+-1e\+06",
        ),
        (
            {"inputs": [tensor(X)], "outputs": [{"name": "logits"}]},
            {},
            400,
            "unknown output 'logits'",
        ),
        (
            {
                "inputs": [tensor(X)],
                "outputs": [{"name": "output", "parameters": {"class_count": 3}}],
            },
            {},
            400,
            "classification extension",
        ),
        (
            {"inputs": [tensor(X)], "parameters": {"timeout_ms": 0}},
            {},
            400,
            "timeout_ms must be a finite number > 0",
        ),
        # JSON parameters are numbers; only a query string holds text
        (
            {"inputs": [tensor(X)], "parameters": {"timeout_ms": "5"}},
            {},
            400,
            "parameter timeout_ms must be a number > 0, got '5'",
        ),
        (
            {"inputs": [tensor(X)], "parameters": {"timeout": True}},
            {},
            400,
            r"timeout \(microseconds\) must be a whole number > 0",
        ),
        (
            {"inputs": [tensor(X)]},
            {"Content-Type": "text/plain"},
            415,
            "application/json",
        ),
        (
            {"inputs": [tensor(X)]},
            {"Inference-Header-Content-Length": "999"},
            400,
            "Inference-Header-Content-Length must be an integer in 1..",
        ),
    ],
)
async def test_bad_requests_get_the_protocol_error_form(
    client: TestClient,
    doc: dict[str, Any],
    headers: dict[str, str],
    status: int,
    match: str,
) -> None:
    path = INFER.replace(NAME, "nope") if status == 404 else INFER
    resp = await client.post(path, data=orjson.dumps(doc), headers=headers)
    assert resp.status == status
    if status != 200:
        body = await resp.json()
        assert list(body) == ["error"]
        assert re.search(match, body["error"]), body["error"]
    assert (await client.post(INFER, json={"inputs": [tensor(X)]})).status == 200


async def test_binary_sizes_must_add_up(client: TestClient) -> None:
    doc = {
        "inputs": [
            {
                "name": "input",
                "shape": [2, 1, 2, 2],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 32},
            }
        ]
    }
    for raw, match in (
        (X.tobytes()[:16], "binary_data_size 32 must be an integer in 0..16"),
        (
            X.tobytes() + b"xx",
            "holds 34 binary bytes after the JSON header but the inputs declare 32",
        ),
    ):
        body, headers = binary_body(doc, raw)
        resp = await client.post(INFER, data=body, headers=headers)
        assert resp.status == 400 and match in (await resp.json())["error"]
    nan = np.full_like(X, np.nan)
    body, headers = binary_body(doc, nan.tobytes())
    resp = await client.post(INFER, data=body, headers=headers)
    assert resp.status == 400
    assert (await resp.json())["error"] == (
        "FP32 input holds NaN or infinity (nan at [0][0][0][0])"
    )
    body, headers = binary_body(doc, np.full_like(X, -3e38).tobytes())
    resp = await client.post(INFER, data=body, headers=headers)
    assert resp.status == 400
    assert (
        "FP32 input holds -3e+38 at [0][0][0][0], beyond +-1e+06"
        in (await resp.json())["error"]
    )


# -- data that does not fit its declared datatype ------------------------------

# (datatype, data for shape [2, 1, 2, 2], part of the message): each is refused,
# never wrapped, rounded or cast (INT8 300 is not 44, UINT8 -1 not 255)
MISFITS = [
    (
        "INT8",
        [1] * 5 + [300, 0, 0],
        "datatype INT8 must hold integers in -128..127; got 300 at data[5]",
    ),
    (
        "INT8",
        [-129] + [0] * 7,
        "INT8 must hold integers in -128..127; got -129 at data[0]",
    ),
    (
        "UINT8",
        [0, -1] + [0] * 6,
        "UINT8 must hold integers in 0..255; got -1 at data[1]",
    ),
    ("UINT8", [256] * 8, "UINT8 must hold integers in 0..255; got 256 at data[0]"),
    (
        "INT16",
        [0] * 7 + [40_000],
        "INT16 must hold integers in -32768..32767; got 40000 at data[7]",
    ),
    ("UINT16", [70_000] + [0] * 7, "UINT16 must hold integers in 0..65535; got 70000"),
    (
        "INT32",
        [2**31] + [0] * 7,
        "INT32 must hold integers in -2147483648..2147483647; "
        "got 2147483648 at data[0]",
    ),
    (
        "INT32",
        [0, -(2**31) - 1] + [0] * 6,
        "INT32 must hold integers in -2147483648..2147483647; "
        "got -2147483649 at data[1]",
    ),
    (
        "UINT32",
        [0] * 7 + [-5],
        "UINT32 must hold integers in 0..4294967295; got -5 at data[7]",
    ),
    (
        "INT64",
        [-1, 2**63] + [0] * 6,
        "INT64 must hold integers in -9223372036854775808..9223372036854775807; "
        "got 9223372036854775808 at data[1]",
    ),
    (
        "UINT64",
        [3, -1] + [0] * 6,
        "UINT64 must hold integers in 0..18446744073709551615; got -1",
    ),
    ("INT32", [1, 1.5] + [0] * 6, "INT32 must hold integers only; got 1.5 at data[1]"),
    ("UINT8", [2.0] * 8, "UINT8 must hold integers only; got 2.0 at data[0]"),
    ("INT64", [True] + [1] * 7, "INT64 must hold integers only; got true at data[0]"),
    ("FP32", [0.5] * 7 + [True], "FP32 must hold numbers only; got true at data[7]"),
    (
        "FP64",
        [False, 1.5] + [0.0] * 6,
        "FP64 must hold numbers only; got false at data[0]",
    ),
    (
        "FP32",
        [1.0, None] + [0.0] * 6,
        "FP32 must hold numbers only; got null at data[1]",
    ),
    (
        "FP16",
        [0.0] * 3 + [70000.0] + [0.0] * 4,
        "FP16 must hold numbers within +-65504; got 70000.0 at data[3]",
    ),
    (
        "FP16",
        [-65520] + [0] * 7,
        "FP16 must hold numbers within +-65504; got -65520 at data[0]",
    ),
    (
        "FP32",
        [1e39] + [0.0] * 7,
        "FP32 must hold numbers within +-3.40282e+38; got 1e+39 at data[0]",
    ),
    # nested data: the place is given as the client wrote it
    (
        "UINT8",
        [[[[0, 1], [2, 3]]], [[[4, 5], [6, 256]]]],
        "got 256 at data[1][0][1][1]",
    ),
    (
        "INT8",
        [[[[0, 1], [2, 3]]], [[[4, True], [6, 7]]]],
        "INT8 must hold integers only; got true at data[1][0][0][1]",
    ),
]


@pytest.mark.parametrize(("datatype", "data", "match"), MISFITS)
async def test_json_data_that_does_not_fit_its_datatype_is_refused(
    client: TestClient, datatype: str, data: list[Any], match: str
) -> None:
    doc = {
        "inputs": [
            {"name": "input", "shape": [2, 1, 2, 2], "datatype": datatype, "data": data}
        ]
    }
    resp = await client.post(INFER, data=orjson.dumps(doc))
    body = await resp.json()
    assert resp.status == 400 and list(body) == ["error"], body
    assert re.search(f"^input 'input' of datatype {datatype} ", body["error"]), body
    assert match in body["error"], body["error"]
    assert client.app[SERVICE].frontend.statistics().accepted == 0


async def test_a_bool_among_many_numbers_is_found() -> None:
    # past the size scanned outright, the body's text decides whether to scan
    backend = FakeBackend(np.eye(100, dtype=np.float32)[:3], data_instances=2)
    frontend = Frontend(backend, input_shape=(100,), query_timeout_s=0.5)
    async with serving(frontend) as client:
        data: list[Any] = [0.25] * 100
        spec = {"name": "input", "shape": [1, 100], "datatype": "FP32", "data": data}
        assert (await client.post(INFER, json={"inputs": [spec]})).status == 200
        data[70] = True
        body = await (await client.post(INFER, json={"inputs": [spec]})).json()
        assert body == {
            "error": "input 'input' of datatype FP32 must hold numbers only; "
            "got true at data[70]"
        }


async def test_bool_is_refused_as_a_datatype_whatever_its_values(
    client: TestClient,
) -> None:
    for data in ([2] * 8, [True] * 8):
        doc = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 1, 2, 2],
                    "datatype": "BOOL",
                    "data": data,
                }
            ]
        }
        resp = await client.post(INFER, json=doc)
        assert resp.status == 400
        assert "input datatype 'BOOL' is not accepted" in (await resp.json())["error"]


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("INT8", [-128, 127, 0, 5, -1, 2, 3, 4]),
        ("UINT8", [0, 255, 1, 5, 254, 2, 3, 4]),
        ("INT16", [-32768, 32767, 0, 5, 1, 2, 3, 4]),
        ("UINT64", [0, 1_000_000, 1, 5, 3, 2, 3, 4]),  # max_abs_input
        ("FP16", [65504.0, -65504, 0.5, 5, 1, 2, 3, 4]),
        ("FP32", [1, 2.5, -3, 5, 1, 2, 3, 4]),  # JSON integers are numbers
    ],
)
async def test_json_data_at_the_edges_of_its_datatype_is_exact(
    client: TestClient, datatype: str, data: list[Any]
) -> None:
    doc = {
        "inputs": [
            {"name": "input", "shape": [2, 1, 2, 2], "datatype": datatype, "data": data}
        ],
        "outputs": [{"name": "output"}],
    }
    resp = await client.post(INFER, json=doc)
    assert resp.status == 200, await resp.text()
    out = (await resp.json())["outputs"][0]["data"]
    assert out == data[:3] + data[4:7]


async def test_binary_data_is_read_as_its_datatype_and_must_be_its_size(
    client: TestClient,
) -> None:
    doc = {
        "inputs": [
            {
                "name": "input",
                "shape": [2, 1, 2, 2],
                "datatype": "INT8",
                "parameters": {"binary_data_size": 8},
            }
        ],
        "outputs": [{"name": "output"}],
    }
    # in range by construction: 0xff is INT8 -1, never 255
    raw = bytes([0xFF, 0x7F, 0x80, 0, 1, 2, 3, 4])
    body, headers = binary_body(doc, raw)
    resp = await client.post(INFER, data=body, headers=headers)
    assert resp.status == 200
    assert (await resp.json())["outputs"][0]["data"] == [-1, 127, -128, 1, 2, 3]
    for datatype, size, match in (
        (
            "FP32",
            16,
            "binary data of input 'input' holds 16 bytes but shape "
            "[2, 1, 2, 2] of FP32 needs 32 (8 elements of 4 bytes)",
        ),
        (
            "FP64",
            31,
            "holds 31 bytes but shape [2, 1, 2, 2] of FP64 needs 64 "
            "(8 elements of 8 bytes)",
        ),
        ("UINT16", 8, "holds 8 bytes but shape [2, 1, 2, 2] of UINT16 needs 16"),
    ):
        spec = {
            **doc["inputs"][0],
            "datatype": datatype,
            "parameters": {"binary_data_size": size},
        }
        body, headers = binary_body({"inputs": [spec]}, bytes(size))
        resp = await client.post(INFER, data=body, headers=headers)
        assert resp.status == 400
        assert match in (await resp.json())["error"], datatype


class OverflowingBackend(FakeBackend):
    """Instances that answer inf (a backend that does not check outputs)."""

    def _deliver(self, role: str, index: int, tag: int, output: np.ndarray) -> None:
        super()._deliver(role, index, tag, np.full_like(output, np.inf))


async def test_a_non_finite_output_is_422_not_null() -> None:
    backend = OverflowingBackend(W, data_instances=2)
    async with serving(frontend_of(backend=backend)) as client:
        resp = await client.post(INFER, json={"inputs": [tensor(X)]})
        assert resp.status == 422
        assert (await resp.json())["error"].startswith(
            "the model's output for input 0 holds NaN or infinity"
        )


async def test_unknown_version_and_model_are_404(client: TestClient) -> None:
    resp = await client.get(f"/v2/models/{NAME}/versions/2")
    assert resp.status == 404 and "the only one is '1'" in (await resp.json())["error"]
    resp = await client.get("/v2/models/other/ready")
    assert resp.status == 404


async def test_timeout_parameters_set_the_deadline() -> None:
    never = FakeBackend(W, data_instances=2, delay_s=lambda role, i, tag: None)
    default = np.array([1.0, 2.0, 3.0], np.float32)
    async with serving(frontend_of(backend=never, default_output=default)) as client:
        for parameters in ({"timeout_ms": 20}, {"timeout": 20_000}):
            doc = {"inputs": [tensor(X[:1])], "parameters": parameters}
            out = (await (await client.post(INFER, json=doc)).json())["outputs"]
            assert out[0]["data"] == [1, 2, 3] and out[2]["data"] == [True], parameters
        stats = client.app[SERVICE].frontend.statistics()
        assert stats.defaulted == 2 and stats.timed_out == 0
        both = {"timeout_ms": 20, "timeout": 20_000}
        doc = {"inputs": [tensor(X[:1])], "parameters": both}
        resp = await client.post(INFER, json=doc)
        assert resp.status == 400
        assert "give one deadline" in (await resp.json())["error"]


async def test_json_body_mistakes_are_named(client: TestClient) -> None:
    # fresh-user test: each got only the generic message or the parser's offset
    spec = {"name": "input", "shape": [2, 1, 2, 2], "datatype": "FP32"}
    ragged = {"inputs": [{**spec, "data": [[0, 1, 2, 3], [4, 5, 6]]}]}
    body = await (await client.post(INFER, json=ragged)).json()
    assert body["error"] == (
        "input 'data' must be a rectangular (nested) list of numbers: data[1] has "
        "3 elements where data[0] has 4"
    )
    nan = b'{"inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", '
    nan += b'"data": [0, NaN, 0, 0]}]}'
    body = await (await client.post(INFER, data=nan)).json()
    assert "JSON has no NaN or Infinity" in body["error"]
    raw = np.zeros(4, np.float32).tobytes()
    headerless = orjson.dumps({"inputs": [{**spec, "shape": [1, 1, 2, 2]}]}) + raw
    body = await (await client.post(INFER, data=headerless)).json()
    assert "needs the Inference-Header-Content-Length header" in body["error"]


async def test_fp16_binary_data_is_held_to_the_bound() -> None:
    # fresh-user test: NumPy compared FP16 data against the bound in float16,
    # where 1000 squared is infinity, so 2000 and 60000 went through
    async with serving(frontend_of(), max_abs_input=1000) as client:
        spec = {"name": "input", "shape": [2, 1, 2, 2], "datatype": "FP16"}
        doc = {"inputs": [{**spec, "parameters": {"binary_data_size": 16}}]}
        for values, match in (
            (
                [0.5] * 7 + [2000],
                "FP16 input holds 2000 at [1][0][1][1], beyond +-1000",
            ),
            ([60000] * 8, "FP16 input holds 60000 at [0][0][0][0], beyond +-1000"),
            (
                [0] * 3 + [np.inf] * 5,
                "FP16 input holds NaN or infinity (inf at [0][0][1][1])",
            ),
        ):
            raw = np.array(values, np.float16).tobytes()
            body, headers = binary_body(doc, raw)
            resp = await client.post(INFER, data=body, headers=headers)
            assert resp.status == 400, values
            assert match in (await resp.json())["error"]
        ok = np.full(8, 999, np.float16).tobytes()
        body, headers = binary_body(doc, ok)
        assert (await client.post(INFER, data=body, headers=headers)).status == 200


async def test_integers_float32_cannot_hold_are_refused_past_a_raised_bound() -> None:
    # with the default bound (1e6) the bound refuses them first, naming the value
    async with serving(frontend_of(), max_abs_input=1e9) as client:
        doc = {"inputs": [tensor(X.astype(np.int64) + 2**24 + 1, "INT64")]}
        body = await (await client.post(INFER, json=doc)).json()
        assert "INT64 input holds values beyond +-2**24" in body["error"]


@pytest.mark.parametrize("timeout", [1500.5, "20000", True, -5, 0])
async def test_triton_timeout_must_be_whole_microseconds(timeout: Any) -> None:
    async with serving(frontend_of()) as client:
        doc = {"inputs": [tensor(X[:1])], "parameters": {"timeout": timeout}}
        resp = await client.post(INFER, json=doc)
        assert resp.status == 400
        assert (
            "parameter timeout (microseconds) must be a whole number > 0"
            in (await resp.json())["error"]
        )


# -- the real tritonclient, against a server in a thread ----------------------


@contextlib.contextmanager
def server_in_thread(**options: Any) -> Iterator[str]:
    """An HttpServer on its own event loop in a daemon thread; yields its URL."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        server = HttpServer(
            frontend_of(), port=0, model_name=NAME, output_shape=(3,), **options
        )
        await server.start()
        box.update(
            url=server.url, loop=asyncio.get_running_loop(), stop=asyncio.Event()
        )
        started.set()
        await box["stop"].wait()
        await server.shutdown()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10), "the server did not start"
    try:
        yield box["url"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with server_in_thread(token=TOKEN) as url:
        yield url


def test_tritonclient_works_unchanged(server_url: str) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    def auth() -> dict[str, str]:
        # a fresh dict each call: tritonclient writes its own headers into it
        return {"Authorization": f"Bearer {TOKEN}"}

    client = httpclient.InferenceServerClient(server_url.removeprefix("http://"))
    try:
        assert client.is_server_live()  # no token needed
        assert client.is_server_ready(headers=auth())
        assert client.is_model_ready(NAME, headers=auth())
        assert not client.is_model_ready("other", headers=auth())
        meta = client.get_model_metadata(NAME, headers=auth())
        assert meta["inputs"] == [
            {"name": "input", "datatype": "FP32", "shape": [-1, 1, 2, 2]}
        ]

        for binary in (True, False):
            inp = httpclient.InferInput("input", list(X.shape), "FP32")
            inp.set_data_from_numpy(X, binary_data=binary)
            outputs = [
                httpclient.InferRequestedOutput("output", binary_data=binary),
                httpclient.InferRequestedOutput("reconstructed", binary_data=binary),
            ]
            result = client.infer(
                NAME, [inp], outputs=outputs, headers=auth(), request_id="r7"
            )
            np.testing.assert_array_equal(
                result.as_numpy("output"), [[0, 1, 2], [4, 5, 6]]
            )
            np.testing.assert_array_equal(
                result.as_numpy("reconstructed"), [False, False]
            )
            assert result.get_response()["id"] == "r7"

        # no outputs named: tritonclient asks for all of them in binary
        inp = httpclient.InferInput("input", [1, 1, 2, 2], "INT32")
        inp.set_data_from_numpy(X[:1].astype(np.int32))
        result = client.infer(NAME, [inp], headers=auth(), timeout=2_000_000)
        np.testing.assert_array_equal(result.as_numpy("output"), [[0, 1, 2]])
        np.testing.assert_array_equal(result.as_numpy("default"), [False])

        with pytest.raises(InferenceServerException, match="unknown model 'other'"):
            client.infer("other", [inp], headers=auth())
        with pytest.raises(InferenceServerException, match="missing bearer token"):
            client.infer(NAME, [inp])
    finally:
        client.close()


# -- fuzzing ------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
INPUT_SPEC = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "x"]),
        "shape": st.lists(st.integers(-1, 3), max_size=5),
        "datatype": st.sampled_from(
            ["FP32", "FP64", "INT8", "UINT64", "BOOL", "BYTES", "x"]
        ),
    },
    optional={
        "data": st.lists(st.floats() | st.integers(-(2**70), 2**70), max_size=10),
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-2, 40) | JSON}
        ),
    },
)
REQUEST = st.fixed_dictionaries(
    {"inputs": st.lists(INPUT_SPEC, max_size=2) | JSON},
    optional={
        "outputs": JSON,
        "parameters": st.dictionaries(
            st.sampled_from(["timeout_ms", "timeout", "binary_data_output"]), JSON
        ),
        "id": JSON,
    },
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    doc=REQUEST | JSON,
    tail=st.binary(max_size=40),
    header_length=st.none() | st.integers(-5, 300).map(str) | st.just("x"),
)
async def test_fuzzed_infer_requests_get_2xx_or_4xx_json(
    client: TestClient, doc: Any, tail: bytes, header_length: str | None
) -> None:
    headers = (
        {}
        if header_length is None
        else {"Inference-Header-Content-Length": header_length}
    )
    body = json.dumps(doc).encode() + tail
    resp = await client.post(INFER, data=body, headers=headers)
    assert resp.status in (200, 400, 413, 504)
    if resp.status != 200:
        assert resp.content_type == "application/json"
        assert "error" in await resp.json()
    assert (await client.post(INFER, json={"inputs": [tensor(X)]})).status == 200


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_or_schema_violation() -> None:
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    with server_in_thread() as url:
        import requests

        document = requests.get(f"{url}/openapi.json", timeout=5).json()
        schema = schemathesis.openapi.from_dict(document)

        from schemathesis import GenerationMode

        seen: set[tuple[str, int]] = set()
        for result in schema.get_all_operations():
            operation = result.ok()
            strategy = operation.as_strategy() | operation.as_strategy(
                GenerationMode.NEGATIVE
            )

            @settings(
                max_examples=5,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Any) -> None:
                response = case.call_and_validate(
                    base_url=url, checks=checks, timeout=5
                )
                seen.add((case.operation.path, response.status_code))

            run()
    # every operation was called, and the model refused bad input with 400
    assert {path for path, _ in seen} == set(document["paths"])
    assert {("/v2/models/{name}/infer", 400), ("/infer", 400)} <= seen, seen

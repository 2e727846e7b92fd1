"""Open Inference Protocol v2 over REST (the KServe/Triton/MLServer API).

Routes (``{version}`` may be left out; the only version is ``"1"``):

- ``GET /v2/health/live``: 200 while the process serves HTTP (never needs the
  token);
- ``GET /v2/health/ready``, ``GET /v2/models/{name}[/versions/{v}]/ready``:
  200 when a data instance is alive and the server is not draining, else 503;
- ``GET /v2``: server metadata; ``GET /v2/models/{name}[/versions/{v}]``:
  model metadata (one input ``input``, outputs ``output``, ``reconstructed``,
  ``default``);
- ``POST /v2/models/{name}[/versions/{v}]/infer``: inference.

The request's one input is named ``input``, with shape ``[batch, *in]``, batch
dimension first. Each batch item becomes one frontend query; all are submitted
at once and the response waits for every answer. Accepted datatypes: FP32, and
FP16, FP64 and (U)INT8-64, which are converted to float32; integers beyond
+-2**24 (not exact in float32) and FP64 values beyond float32's range are
refused, as are BOOL, BYTES and BF16, and values beyond +-``max_abs_input``
(1e6 by default; see ``make_app``), which would overflow F's outputs.

Outputs, each with batch dimension first:

- ``output`` (FP32, ``[batch, *out]``): the answers;
- ``reconstructed`` (BOOL, ``[batch]``): True where the answer was decoded
  from the coding group's other outputs and its parity outputs (degraded mode)
  rather than computed by F itself;
- ``default`` (BOOL, ``[batch]``): True where the query's deadline passed and
  the configured default answer was given.

The per-item flags are tensors, not response parameters, because the
protocol allows only scalar parameter values. The response ``parameters`` also
give ``reconstructed_count`` and ``default_count``.

Request parameters: ``timeout_ms`` (our deadline, milliseconds, > 0), or
Triton's ``timeout`` (microseconds, what ``tritonclient``'s ``infer(timeout=)``
sends); either is passed to the frontend as ``deadline_s``. A deadline is when
the caller wants the best answer there is: the default answer if the server
has one, else 504.

Binary tensor extension: with the ``Inference-Header-Content-Length: n``
header, the body's first n bytes are the JSON request and the rest the raw
little-endian tensors of the inputs whose ``parameters`` hold
``binary_data_size``, in input order. Outputs come back raw when the output's
``parameters.binary_data`` or the request's ``binary_data_output`` is true;
the response then carries the same header and each such output's
``binary_data_size``.

Not supported (answered 400): shared-memory parameters, the classification
extension (``class_count``), more than one input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from aiohttp import web

import learncc
from learncc.serving.frontend import Answer
from learncc.serving.http.app import (
    SERVICE,
    HttpError,
    Service,
    check_input_range,
    json_response,
    read_body,
)

INPUT_NAME = "input"
OUTPUT_NAMES = ("output", "reconstructed", "default")
VERSION = "1"

# OIP datatype -> little-endian NumPy dtype of the wire format
DATATYPES: dict[str, np.dtype[Any]] = {
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
}
# the largest integer magnitude float32 holds exactly
_EXACT_INT_F32 = 2**24
_BINARY_BODY_TYPES = ("application/json", "application/octet-stream")


@dataclass(frozen=True)
class InferRequest:
    """A decoded, checked inference request."""

    id: str | None
    batch: np.ndarray  # (batch, *in) float32, finite
    deadline_s: float | None
    outputs: list[tuple[str, bool]]  # (name, binary) in response order


def _model(request: web.Request) -> Service:
    """The service, once the path's model name and version are ours.

    Raises:
        HttpError: 404 naming the model this server serves.
    """
    service = request.app[SERVICE]
    name = request.match_info["name"]
    version = request.match_info.get("version", VERSION)
    served = service.settings.model_name
    if name != served:
        raise HttpError(404, f"unknown model {name!r}; this server serves {served!r}")
    if version != VERSION:
        raise HttpError(
            404,
            f"unknown version {version!r} of model {name!r}; "
            f"the only one is {VERSION!r}",
        )
    return service


# -- health and metadata ------------------------------------------------------


async def live(_: web.Request) -> web.Response:
    return json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    reason = request.app[SERVICE].not_ready_reason()
    if reason is not None:
        return json_response({"ready": False, "error": f"not ready: {reason}"}, 503)
    return json_response({"ready": True})


async def model_ready(request: web.Request) -> web.Response:
    _model(request)
    return await ready(request)


async def server_metadata(_: web.Request) -> web.Response:
    return json_response(
        {
            "name": "learncc",
            "version": learncc.__version__,
            "extensions": ["binary_tensor_data"],
        }
    )


async def model_metadata(request: web.Request) -> web.Response:
    service = _model(request)
    out = service.settings.output_shape
    return json_response(
        {
            "name": service.settings.model_name,
            "versions": [VERSION],
            "platform": "learncc",
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "datatype": "FP32",
                    "shape": [-1, *service.frontend.input_shape],
                }
            ],
            "outputs": [
                {"name": "output", "datatype": "FP32", "shape": [-1, *(out or (-1,))]},
                {"name": "reconstructed", "datatype": "BOOL", "shape": [-1]},
                {"name": "default", "datatype": "BOOL", "shape": [-1]},
            ],
        }
    )


# -- decoding a request -------------------------------------------------------


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of an inference request body."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 < n <= len(body):
        raise HttpError(
            400,
            f"Inference-Header-Content-Length must be an integer in 1..{len(body)} "
            f"(the body's length), got {header_length!r}",
        )
    return body[:n], memoryview(body)[n:]


def _as_dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HttpError(
            400, f"{what} must be a JSON object, got {type(value).__name__}"
        )
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_shape(spec: dict[str, Any], service: Service) -> list[int]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise HttpError(
            400, f"input 'shape' must be a list of non-negative integers, got {shape!r}"
        )
    input_shape = list(service.frontend.input_shape)
    if shape[1:] != input_shape:
        raise HttpError(
            400,
            f"input shape {shape} does not match the model's [batch, *{input_shape}] "
            f"= {[-1, *input_shape]}",
        )
    if not 1 <= shape[0] <= service.settings.max_batch:
        raise HttpError(
            400,
            f"batch dimension (shape[0]) must be in 1..{service.settings.max_batch}, "
            f"got {shape[0]}",
        )
    return shape


def _from_json_data(data: Any, datatype: str, shape: list[int]) -> np.ndarray:
    if not isinstance(data, list):
        raise HttpError(
            400, f"input 'data' must be a (nested) list, got {type(data).__name__}"
        )
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise HttpError(
            400, "input 'data' must be a rectangular (nested) list of numbers"
        ) from None
    expected = "integers" if DATATYPES[datatype].kind in "iu" else "numbers"
    kinds = "iu" if expected == "integers" else "iuf"
    if array.dtype.kind not in kinds:
        raise HttpError(
            400, f"input 'data' of datatype {datatype} must hold {expected} only"
        )
    if array.size != math.prod(shape):
        raise HttpError(
            400,
            f"input 'data' holds {array.size} elements but shape {shape} "
            f"needs {math.prod(shape)}",
        )
    return array.reshape(shape)


def _from_binary(raw: memoryview, datatype: str, shape: list[int]) -> np.ndarray:
    dtype = DATATYPES[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise HttpError(
            400,
            f"binary input holds {len(raw)} bytes but shape {shape} of {datatype} "
            f"needs {expected}",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _to_float32(array: np.ndarray, datatype: str) -> np.ndarray:
    """Convert to float32, refusing conversions that would change values."""
    if array.dtype == np.float32:
        if not np.isfinite(array).all():
            raise HttpError(400, f"{datatype} input holds NaN or infinity")
        return np.ascontiguousarray(array)
    if array.dtype.kind in "iu":
        if array.size and int(np.abs(array, dtype=np.float64).max()) > _EXACT_INT_F32:
            raise HttpError(
                400,
                f"{datatype} input holds values beyond +-2**24, which float32 cannot "
                "hold exactly; send FP32",
            )
        return array.astype(np.float32)
    with np.errstate(over="ignore"):
        converted = array.astype(np.float32)
    if not np.isfinite(converted).all():
        # tell the two causes apart only on the error path
        if not np.isfinite(array).all():
            raise HttpError(400, f"{datatype} input holds NaN or infinity")
        raise HttpError(
            400, f"{datatype} input holds values beyond float32's range (+-3.4e38)"
        )
    return converted


def _decode_input(
    spec: Any, binary: memoryview, service: Service
) -> tuple[np.ndarray, int]:
    """One input tensor as float32, and how many binary bytes it used."""
    if not isinstance(spec, dict):
        raise HttpError(
            400, f"each input must be a JSON object, got {type(spec).__name__}"
        )
    name = spec.get("name")
    if name != INPUT_NAME:
        raise HttpError(
            400, f"unknown input {name!r}; this model's input is {INPUT_NAME!r}"
        )
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        raise HttpError(
            400,
            f"input datatype {datatype!r} is not accepted; send one of "
            f"{', '.join(DATATYPES)} (FP32 needs no conversion)",
        )
    shape = _check_shape(spec, service)
    parameters = _as_dict(spec.get("parameters"), "input 'parameters'")
    if any(key.startswith("shared_memory") for key in parameters):
        raise HttpError(400, "shared-memory inputs are not supported; send the data")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise HttpError(
                400, "an input has either 'data' or binary_data_size, not both"
            )
        if not _is_int(size) or not 0 <= size <= len(binary):
            raise HttpError(
                400,
                f"binary_data_size {size!r} must be an integer in 0..{len(binary)} "
                "(the binary bytes left after the JSON header)",
            )
        array, used = _from_binary(binary[:size], datatype, shape), size
    elif "data" in spec:
        array, used = _from_json_data(spec["data"], datatype, shape), 0
    else:
        raise HttpError(400, "input has no 'data' and no binary_data_size parameter")
    converted = _to_float32(array, datatype)
    check_input_range(converted, service.settings.max_abs_input, f"{datatype} input")
    return converted, used


def _requested_outputs(
    doc: dict[str, Any], binary_default: bool
) -> list[tuple[str, bool]]:
    specs = doc.get("outputs")
    if specs is None:
        return [(name, binary_default) for name in OUTPUT_NAMES]
    if not isinstance(specs, list) or not specs:
        raise HttpError(400, "'outputs' must be a non-empty list of {name, parameters}")
    outputs = []
    for spec in specs:
        if not isinstance(spec, dict) or spec.get("name") not in OUTPUT_NAMES:
            name = spec.get("name") if isinstance(spec, dict) else spec
            raise HttpError(
                400, f"unknown output {name!r}; choose from {', '.join(OUTPUT_NAMES)}"
            )
        parameters = _as_dict(spec.get("parameters"), "output 'parameters'")
        if parameters.get("class_count"):
            raise HttpError(
                400, "the classification extension (class_count) is not supported"
            )
        if any(key.startswith("shared_memory") for key in parameters):
            raise HttpError(400, "shared-memory outputs are not supported")
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise HttpError(
                400, f"output parameter binary_data must be a boolean, got {binary!r}"
            )
        outputs.append((spec["name"], binary))
    return outputs


def decode_request(
    body: bytes, header_length: str | None, service: Service
) -> InferRequest:
    """Parse and check an inference request body.

    Raises:
        HttpError: 400 naming the first problem found.
        BadQueryError: the input holds values beyond +-``max_abs_input``.
    """
    json_part, binary = _split_body(body, header_length)
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as e:
        raise HttpError(400, f"malformed JSON inference request: {e}") from None
    if not isinstance(doc, dict):
        raise HttpError(
            400,
            f"the inference request must be a JSON object, got {type(doc).__name__}",
        )
    parameters = _as_dict(doc.get("parameters"), "request 'parameters'")
    deadline_s = service.deadline_from(
        parameters.get("timeout_ms"), name="parameter timeout_ms", scale_s=1e-3
    )
    if deadline_s is None:
        deadline_s = service.deadline_from(
            parameters.get("timeout"),
            name="parameter timeout (microseconds)",
            scale_s=1e-6,
        )
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise HttpError(
            400, f"binary_data_output must be a boolean, got {binary_default!r}"
        )
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        count = len(inputs) if isinstance(inputs, list) else "no"
        raise HttpError(
            400,
            f"'inputs' must be a list of exactly one input, {INPUT_NAME!r}; "
            f"got {count}",
        )
    batch, used = _decode_input(inputs[0], binary, service)
    if used != len(binary):
        raise HttpError(
            400,
            f"the body holds {len(binary)} binary bytes after the JSON header but the "
            f"inputs declare {used}",
        )
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise HttpError(400, f"'id' must be a string, got {type(request_id).__name__}")
    return InferRequest(
        request_id, batch, deadline_s, _requested_outputs(doc, binary_default)
    )


# -- inference ----------------------------------------------------------------


async def infer(request: web.Request) -> web.Response:
    service = _model(request)
    if request.content_type not in _BINARY_BODY_TYPES:
        raise HttpError(
            415,
            "send the inference request as application/json (or "
            "application/octet-stream with Inference-Header-Content-Length), not "
            f"{request.content_type!r}",
        )
    body = await read_body(request)
    decoded = decode_request(
        body, request.headers.get("Inference-Header-Content-Length"), service
    )
    # decode_request checked shape, dtype and finiteness of the whole batch, so
    # submit's own check of each item cannot refuse one half-way through
    answers = await service.run(list(decoded.batch), decoded.deadline_s)
    return _encode_response(service, decoded, answers)


def _encode_output(
    name: str, binary: bool, answers: list[Answer]
) -> tuple[dict, bytes]:
    """One output's response entry and its raw bytes (empty unless binary)."""
    if name == "output":
        # (batch, *out); a single answer needs no copy
        if len(answers) == 1:
            tensor = answers[0].output[None]
        else:
            tensor = np.stack([a.output for a in answers])
        tensor = tensor.astype("<f4", copy=False)
        entry = {"name": name, "datatype": "FP32", "shape": list(tensor.shape)}
        if not binary:
            return {**entry, "data": tensor.ravel().tolist()}, b""
        raw = tensor.tobytes()
    else:
        flags = [getattr(a, name) for a in answers]
        entry = {"name": name, "datatype": "BOOL", "shape": [len(flags)]}
        if not binary:
            return {**entry, "data": flags}, b""
        raw = bytes(flags)  # BOOL is one byte per element
    return {**entry, "parameters": {"binary_data_size": len(raw)}}, raw


def _encode_response(
    service: Service, decoded: InferRequest, answers: list[Answer]
) -> web.Response:
    outputs, chunks = [], []
    for name, binary in decoded.outputs:
        entry, raw = _encode_output(name, binary, answers)
        outputs.append(entry)
        if raw:
            chunks.append(raw)
    doc: dict[str, Any] = {
        "model_name": service.settings.model_name,
        "model_version": VERSION,
        "parameters": {
            "reconstructed_count": sum(a.reconstructed for a in answers),
            "default_count": sum(a.default for a in answers),
        },
        "outputs": outputs,
    }
    if decoded.id is not None:
        doc["id"] = decoded.id
    header = orjson.dumps(doc)
    if not any(binary for _, binary in decoded.outputs):
        return web.Response(body=header, content_type="application/json")
    return web.Response(
        body=b"".join([header, *chunks]),
        content_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def add_routes(app: web.Application) -> None:
    """Add the v2 routes to ``app`` (made by ``make_app``)."""
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(base, model_metadata)
        app.router.add_get(f"{base}/ready", model_ready)
        app.router.add_post(f"{base}/infer", infer)

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
FP16, FP64 and (U)INT8-64, which are converted to float32. Values beyond
+-``max_abs_input`` (1e6 by default; see ``make_app``), which would overflow
F's outputs, are refused, naming the first such value and its place; with a
bound raised past them, so are integers beyond +-2**24 (not exact in
float32) and FP64 values beyond float32's range; BOOL, BYTES and BF16 always.

JSON ``data`` must fit its declared datatype, as binary data does by
construction: integers only, within the type's range, for the integer types
(INT8 300, UINT8 -1 or 1.5 are refused), numbers within the type's range for
the float types, and never ``true``/``false``. The 400 answer names the input,
the datatype and the first value that does not fit, with its place in
``data``; nothing is wrapped, rounded or cast to fit.

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
Triton's ``timeout`` (whole microseconds > 0, what ``tritonclient``'s
``infer(timeout=)`` sends); either is passed to the frontend as
``deadline_s``. A deadline is when the caller wants the best answer there
is: the default answer if the server has one, else 504.

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
    has_bool_literal,
    holds_bool,
    index_text,
    json_hint,
    json_response,
    leaves,
    ragged_place,
    read_body,
    show_json,
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
_F32_MAX = float(np.finfo(np.float32).max)
_BINARY_BODY_TYPES = ("application/json", "application/octet-stream")
# (name, binary) of every output, for requests that name none
_ALL_OUTPUTS = {
    binary: tuple((name, binary) for name in OUTPUT_NAMES) for binary in (False, True)
}
# ufunc reductions: ndarray.min/max add a Python-level wrapper per call
_MIN, _MAX = np.minimum.reduce, np.maximum.reduce
# data this small is scanned for true/false outright (cheaper than searching
# the body text for the literals first)
_BOOL_SCAN_SIZE = 64


def _value_range(dtype: np.dtype[Any]) -> tuple[float, float]:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return int(info.min), int(info.max)
    top = float(np.finfo(dtype).max)
    return -top, top


# the values each datatype holds; binary data is in range by construction,
# JSON data is checked against these
RANGES = {name: _value_range(dtype) for name, dtype in DATATYPES.items()}


@dataclass(frozen=True)
class ModelSpec:
    """What every inference request is checked against, worked out once per
    app rather than once per request (see ``add_routes``)."""

    service: Service
    name: str
    dims: list[int]  # the input shape after the batch dimension
    shape_types: list[type]  # [int] * (1 + len(dims)), so bools are not dims
    max_batch: int
    max_abs: float
    # datatype -> (NumPy kinds, lo, hi, hi**2 or None): an array of one of
    # these kinds with every value in lo..hi fits the datatype, is exact in
    # float32 and is within max_abs, so it needs no other value check
    accepts: dict[str, tuple[str, float, float, float | None]]

    @classmethod
    def of(cls, service: Service) -> ModelSpec:
        settings = service.settings
        max_abs = settings.max_abs_input
        accepts = {}
        for datatype, dtype in DATATYPES.items():
            lo, hi = RANGES[datatype]
            if dtype.kind in "iu":
                kinds, cap = "iu", min(max_abs, _EXACT_INT_F32)
                square = None
            else:
                kinds, cap = "iuf", min(max_abs, _F32_MAX, hi)
                square = cap * cap if math.isfinite(cap * cap) else None
            accepts[datatype] = (kinds, max(lo, -cap), min(hi, cap), square)
        dims = list(service.frontend.input_shape)
        return cls(
            service=service,
            name=settings.model_name,
            dims=dims,
            shape_types=[int] * (1 + len(dims)),
            max_batch=settings.max_batch,
            max_abs=max_abs,
            accepts=accepts,
        )


MODEL = web.AppKey("oip_model", ModelSpec)


@dataclass(frozen=True)
class InferRequest:
    """A decoded, checked inference request."""

    id: str | None
    batch: np.ndarray  # (batch, *in) float32, finite
    deadline_s: float | None
    outputs: tuple[tuple[str, bool], ...]  # (name, binary) in response order


def _model(request: web.Request) -> ModelSpec:
    """The model, once the path's model name and version are ours.

    Raises:
        HttpError: 404 naming the model this server serves.
    """
    model = request.app[MODEL]
    name = request.match_info["name"]
    version = request.match_info.get("version", VERSION)
    if name != model.name:
        raise HttpError(
            404, f"unknown model {name!r}; this server serves {model.name!r}"
        )
    if version != VERSION:
        raise HttpError(
            404,
            f"unknown version {version!r} of model {name!r}; "
            f"the only one is {VERSION!r}",
        )
    return model


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
    model = _model(request)
    out = model.service.settings.output_shape
    return json_response(
        {
            "name": model.name,
            "versions": [VERSION],
            "platform": "learncc",
            "inputs": [
                {"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *model.dims]}
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


def _check_shape(shape: Any, model: ModelSpec) -> list[int]:
    if (
        type(shape) is list
        and shape[1:] == model.dims
        and list(map(type, shape)) == model.shape_types
        and 1 <= shape[0] <= model.max_batch
    ):
        return shape
    # the request is refused: say why
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise HttpError(
            400, f"input 'shape' must be a list of non-negative integers, got {shape!r}"
        )
    if not shape or shape[1:] != model.dims:
        raise HttpError(
            400,
            f"input shape {shape} does not match the model's [batch, *{model.dims}] "
            f"= {[-1, *model.dims]}",
        )
    raise HttpError(
        400,
        f"batch dimension (shape[0]) must be in 1..{model.max_batch}, got {shape[0]}",
    )


def _within(array: np.ndarray, lo: float, hi: float, square: float | None) -> bool:
    """Whether every value is in lo..hi (False for NaN)."""
    # no value's square exceeds the sum of squares, so for float arrays, whose
    # bounds are -cap..cap, one vdot (about the cost of one of the two
    # reductions) clears all but the largest inputs; not for integer dtypes,
    # whose vdot can wrap around, nor float16: NumPy computes its vdot in
    # float16 and casts the bound to float16 too, where a bound above 256
    # squared is infinity and every array passed (fresh-user test: FP16
    # values of 60000 went through a bound of 1000)
    if square is not None and array.dtype.kind == "f" and array.dtype.itemsize >= 4:
        if float(np.vdot(array, array)) <= square:
            return True
    return (
        bool(array.size)
        and lo <= _MIN(array, axis=None)
        and _MAX(array, axis=None) <= hi
    )


def _first_misfit(data: list[Any], datatype: str) -> str | None:
    """The refusal of JSON data with a value its datatype cannot hold, naming
    the first such value and its place; None if every value fits."""
    lo, hi = RANGES[datatype]
    integers = DATATYPES[datatype].kind in "iu"
    for place, value in leaves(data):
        number = type(value) is int or (type(value) is float and not integers)
        if number and lo <= value <= hi:
            continue
        if not number:
            want = "integers only" if integers else "numbers only"
        elif integers:
            want = f"integers in {lo}..{hi}"
        else:
            want = f"numbers within +-{hi:g}"
        where = "data" + index_text(place)
        return (
            f"input {INPUT_NAME!r} of datatype {datatype} must hold {want}; "
            f"got {show_json(value)} at {where}"
        )
    return None


def _checked_slowly(array: np.ndarray, datatype: str, model: ModelSpec) -> np.ndarray:
    """The input as float32 after the exact checks, which name what is wrong.

    Only arrays outside the quick bounds of ``ModelSpec.accepts`` come here,
    so most of them are refused.
    """
    if array.dtype.kind in "iuf":
        # the server's bound first, in the client's own values: it is lower
        # than float32's exact-integer and overflow limits unless raised, and
        # it names the offending value and its place
        check_input_range(array.astype(np.float64), model.max_abs, f"{datatype} input")
    converted = _to_float32(array, datatype)
    check_input_range(converted, model.max_abs, f"{datatype} input")
    return converted


def _from_json_data(
    data: Any, datatype: str, shape: list[int], text: bytes, model: ModelSpec
) -> np.ndarray:
    if not isinstance(data, list):
        raise HttpError(
            400, f"input 'data' must be a (nested) list, got {type(data).__name__}"
        )
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        where = ragged_place(data, "data")
        raise HttpError(
            400,
            "input 'data' must be a rectangular (nested) list of numbers"
            + (f": {where}" if where else ""),
        ) from None
    if array.size != math.prod(shape):
        raise HttpError(
            400,
            f"input 'data' holds {array.size} elements but shape {shape} "
            f"needs {math.prod(shape)}",
        )
    array = array.reshape(shape)
    kinds, lo, hi, square = model.accepts[datatype]
    # NumPy reads true as 1 in a list that also holds numbers, so only a scan
    # finds it; the body text tells when there is no true/false to find
    if (
        array.dtype.kind in kinds
        and _within(array, lo, hi, square)
        and not (
            (array.size <= _BOOL_SCAN_SIZE or has_bool_literal(text))
            and holds_bool(data)
        )
    ):
        return array.astype(np.float32)
    misfit = _first_misfit(data, datatype)
    if misfit is not None:
        raise HttpError(400, misfit)
    return _checked_slowly(array, datatype, model)


def _from_binary(raw: memoryview, datatype: str, shape: list[int]) -> np.ndarray:
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise HttpError(
            400,
            f"binary data of input {INPUT_NAME!r} holds {len(raw)} bytes but shape "
            f"{shape} of {datatype} needs {expected} ({count} elements of "
            f"{dtype.itemsize} bytes)",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _to_float32(array: np.ndarray, datatype: str) -> np.ndarray:
    """Convert to float32, refusing conversions that would change values."""
    if array.dtype == np.float32:
        if not np.isfinite(array).all():
            raise HttpError(400, f"{datatype} input holds NaN or infinity")
        return np.ascontiguousarray(array)
    if array.dtype.kind not in "iuf":
        # _first_misfit refuses these first; this keeps a mistake there from
        # turning strings or booleans into numbers
        raise HttpError(400, f"input 'data' of datatype {datatype} must hold numbers")
    if DATATYPES[datatype].kind in "iu":
        # JSON integers beyond int64's range mixed with negative ones come as
        # float64, so the datatype decides, not the array's dtype
        if array.size and float(np.abs(array, dtype=np.float64).max()) > _EXACT_INT_F32:
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
    spec: Any, binary: memoryview, text: bytes, model: ModelSpec
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
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise HttpError(
            400,
            f"input datatype {datatype!r} is not accepted; send one of "
            f"{', '.join(DATATYPES)} (FP32 needs no conversion)",
        )
    shape = _check_shape(spec.get("shape"), model)
    size = None
    if "parameters" in spec:
        parameters = _as_dict(spec["parameters"], "input 'parameters'")
        if any(key.startswith("shared_memory") for key in parameters):
            raise HttpError(
                400, "shared-memory inputs are not supported; send the data"
            )
        size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in spec:
            raise HttpError(
                400, "input has no 'data' and no binary_data_size parameter"
            )
        return _from_json_data(spec["data"], datatype, shape, text, model), 0
    if "data" in spec:
        raise HttpError(400, "an input has either 'data' or binary_data_size, not both")
    if not _is_int(size) or not 0 <= size <= len(binary):
        raise HttpError(
            400,
            f"binary_data_size {size!r} must be an integer in 0..{len(binary)} "
            "(the binary bytes left after the JSON header)",
        )
    array = _from_binary(binary[:size], datatype, shape)
    _, lo, hi, square = model.accepts[datatype]
    if _within(array, lo, hi, square):
        # FP32 stays a view of the body: no copy
        return array.astype(np.float32, copy=False), size
    return _checked_slowly(array, datatype, model), size


def _requested_outputs(
    specs: Any, binary_default: bool
) -> tuple[tuple[str, bool], ...]:
    if specs is None:
        return _ALL_OUTPUTS[binary_default]
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
    return tuple(outputs)


def _request_parameters(value: Any, service: Service) -> tuple[float | None, bool]:
    """The deadline and ``binary_data_output`` of the request's parameters."""
    parameters = _as_dict(value, "request 'parameters'")
    if "timeout_ms" in parameters and "timeout" in parameters:
        raise HttpError(
            400,
            "give one deadline: parameters timeout_ms and timeout (microseconds) "
            f"were both set ({parameters['timeout_ms']!r}, {parameters['timeout']!r})",
        )
    deadline_s = service.deadline_from(
        parameters.get("timeout_ms"), name="parameter timeout_ms", scale_s=1e-3
    )
    if deadline_s is None:
        deadline_s = service.deadline_from(
            parameters.get("timeout"),
            name="parameter timeout (microseconds)",
            scale_s=1e-6,
            whole=True,
        )
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise HttpError(
            400, f"binary_data_output must be a boolean, got {binary_default!r}"
        )
    return deadline_s, binary_default


def _binary_hint(json_part: bytes, header_length: str | None, error: str) -> str:
    """A body with bytes after its JSON document, or that is not text, sent
    without the binary extension's header, is most likely a binary tensor
    request missing that header."""
    if header_length is not None:
        return ""
    try:
        json_part.decode("utf-8")
        binary = "after document" in error
    except UnicodeDecodeError:
        binary = True
    if not binary:
        return ""
    return (
        "; a body with binary tensor data needs the "
        "Inference-Header-Content-Length header (the JSON part's length)"
    )


def decode_request(
    body: bytes, header_length: str | None, model: ModelSpec
) -> InferRequest:
    """Parse and check an inference request body.

    Raises:
        HttpError: 400 naming the first problem found (for data that does not
            fit its datatype: the input, the datatype and the value).
        BadQueryError: the input holds values beyond +-``max_abs_input``.
    """
    json_part, binary = _split_body(body, header_length)
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as e:
        raise HttpError(
            400,
            f"malformed JSON inference request: {e}{json_hint(bytes(json_part))}"
            + _binary_hint(json_part, header_length, str(e)),
        ) from None
    if not isinstance(doc, dict):
        raise HttpError(
            400,
            f"the inference request must be a JSON object, got {type(doc).__name__}",
        )
    deadline_s, binary_default = None, False
    if "parameters" in doc:
        deadline_s, binary_default = _request_parameters(
            doc["parameters"], model.service
        )
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        count = len(inputs) if isinstance(inputs, list) else "no"
        raise HttpError(
            400,
            f"'inputs' must be a list of exactly one input, {INPUT_NAME!r}; "
            f"got {count}",
        )
    batch, used = _decode_input(inputs[0], binary, json_part, model)
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
        request_id,
        batch,
        deadline_s,
        _requested_outputs(doc.get("outputs"), binary_default),
    )


# -- inference ----------------------------------------------------------------


async def infer(request: web.Request) -> web.Response:
    model = _model(request)
    if request.content_type not in _BINARY_BODY_TYPES:
        raise HttpError(
            415,
            "send the inference request as application/json (or "
            "application/octet-stream with Inference-Header-Content-Length), not "
            f"{request.content_type!r}",
        )
    body = await read_body(request)
    decoded = decode_request(
        body, request.headers.get("Inference-Header-Content-Length"), model
    )
    # decode_request checked shape, dtype and finiteness of the whole batch, so
    # submit's own check of each item cannot refuse one half-way through
    answers = await model.service.run(list(decoded.batch), decoded.deadline_s)
    return _encode_response(model, decoded, answers)


def _encode_response(
    model: ModelSpec, decoded: InferRequest, answers: list[Answer]
) -> web.Response:
    n = len(answers)
    # (batch, *out); a single answer needs no copy
    if n == 1:
        tensor = answers[0].output[None]
    else:
        tensor = np.stack([a.output for a in answers])
    tensor = tensor.astype("<f4", copy=False)
    flags = {
        "reconstructed": [a.reconstructed for a in answers],
        "default": [a.default for a in answers],
    }
    outputs, chunks = [], []
    for name, binary in decoded.outputs:
        entry: dict[str, Any]
        if name == "output":
            entry = {"name": name, "datatype": "FP32", "shape": list(tensor.shape)}
            if binary:
                chunks.append(tensor.tobytes())
            else:
                entry["data"] = tensor.ravel().tolist()
        else:
            entry = {"name": name, "datatype": "BOOL", "shape": [n]}
            if binary:
                chunks.append(bytes(flags[name]))  # BOOL is one byte per element
            else:
                entry["data"] = flags[name]
        if binary:
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": model.name,
        "model_version": VERSION,
        "parameters": {
            "reconstructed_count": sum(flags["reconstructed"]),
            "default_count": sum(flags["default"]),
        },
        "outputs": outputs,
    }
    if decoded.id is not None:
        doc["id"] = decoded.id
    header = orjson.dumps(doc)
    if not chunks:
        return web.Response(body=header, content_type="application/json")
    return web.Response(
        body=b"".join([header, *chunks]),
        content_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def add_routes(app: web.Application) -> None:
    """Add the v2 routes to ``app`` (made by ``make_app``)."""
    app[MODEL] = ModelSpec.of(app[SERVICE])
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    bases = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    # the router tries the routes under /v2/models in the order they were
    # added: inference first, so its requests match on the first try
    for base in bases:
        app.router.add_post(f"{base}/infer", infer)
    for base in bases:
        app.router.add_get(base, model_metadata)
        app.router.add_get(f"{base}/ready", model_ready)

"""The aiohttp application: shared state, guard middleware and the plain API.

Every response is JSON (``/metrics`` excepted), and every failure has the
form ``{"error": message}``, which is also the Open Inference Protocol's error
form. The guard middleware maps causes to status codes in one place:

=============================================  ======================
cause                                          status
=============================================  ======================
missing or wrong bearer token                  401 + WWW-Authenticate
unknown route / model                          404
body over ``max_body_bytes``                   413
wrong content type                             415
malformed body, shape, dtype, NaN/inf          400
an input beyond +-``max_abs_input``             400
body not complete within ``body_timeout_s``    408
F's output (or a reconstruction) not finite    422
client gone before its body arrived            499 (never delivered, DEBUG log)
``OverloadedError`` or the server is draining  503 + Retry-After
no live instance, frontend closed              503
``QueryTimeoutError``                          504
anything unexpected (a bug)                    500, logged, no traceback
=============================================  ======================
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from learncc.errors import (
    BackendUnavailableError,
    BadQueryError,
    ConfigError,
    FrontendClosedError,
    NonFiniteOutputError,
    OverloadedError,
    QueryTimeoutError,
)
from learncc.serving.backend import DATA
from learncc.serving.frontend import Answer, Frontend
from learncc.serving.metrics import CONTENT_TYPE, ServingMetrics

logger = logging.getLogger(__name__)

MAX_BATCH_INPUTS = 1024
# Inputs are pixels or standardized features, so |x| beyond a million is a
# client bug; values near float32's limit overflow F's output to inf/NaN.
DEFAULT_MAX_ABS_INPUT = 1e6
DEFAULT_BODY_TIMEOUT_S = 30.0
# The one path a load balancer or orchestrator may probe without the token.
PUBLIC_PATHS = frozenset({"/v2/health/live"})


class HttpError(Exception):
    """A request the app answers with ``status`` and ``{"error": message}``."""

    def __init__(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class HttpSettings:
    """The app's options; see ``make_app`` for their meaning."""

    model_name: str = "model"
    output_shape: tuple[int, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    token: str | None = None
    max_body_bytes: int = 8 << 20
    max_batch: int = MAX_BATCH_INPUTS
    default_deadline_s: float | None = None
    retry_after_s: int = 1
    max_abs_input: float = DEFAULT_MAX_ABS_INPUT
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.model_name or "/" in self.model_name:
            raise ConfigError(
                "model_name must be a non-empty name without '/', "
                f"got {self.model_name!r}"
            )
        if self.token is not None and not self.token:
            raise ConfigError("token must be None (no authentication) or non-empty")
        if self.max_body_bytes < 1024:
            raise ConfigError(
                f"max_body_bytes must be >= 1024, got {self.max_body_bytes}"
            )
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.default_deadline_s is not None and not self.default_deadline_s > 0:
            raise ConfigError(
                f"default_deadline_s must be > 0 or None, got {self.default_deadline_s}"
            )
        if self.retry_after_s < 0:
            raise ConfigError(f"retry_after_s must be >= 0, got {self.retry_after_s}")
        # inf is allowed for both: no bound, no timeout
        if not self.max_abs_input > 0:
            raise ConfigError(
                f"max_abs_input must be > 0 (or inf), got {self.max_abs_input}"
            )
        if not self.body_timeout_s > 0:
            raise ConfigError(
                f"body_timeout_s must be > 0 (inf for none), got {self.body_timeout_s}"
            )


class Service:
    """What the handlers share: the frontend, the settings and the metrics."""

    def __init__(
        self, frontend: Frontend, settings: HttpSettings, metrics: ServingMetrics
    ) -> None:
        self.frontend, self.settings, self.metrics = frontend, settings, metrics
        self._draining = False
        # timeouts of bodies being read now, cut short when draining starts
        self._reading: set[asyncio.Timeout] = set()

    @property
    def draining(self) -> bool:
        """Set by ``HttpServer.shutdown``: new queries get 503 while in-flight
        ones finish, and requests still sending their body get 503 at once
        (they were never admitted, so nothing of theirs is lost)."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        if value and self._reading:
            now = asyncio.get_running_loop().time()
            for timeout in self._reading:
                timeout.reschedule(now)

    async def read_slow_body(self, request: web.Request) -> bytes:
        """Read a body that has not fully arrived, within ``body_timeout_s``.

        Raises:
            HttpError: 408 when the body is still incomplete at the timeout,
                503 when draining starts first.
        """
        timeout_s = self.settings.body_timeout_s
        try:
            async with asyncio.timeout(
                None if math.isinf(timeout_s) else timeout_s
            ) as timeout:
                self._reading.add(timeout)
                if self._draining:
                    timeout.reschedule(asyncio.get_running_loop().time())
                try:
                    return await request.read()
                finally:
                    self._reading.discard(timeout)
        except TimeoutError:
            if self._draining:
                raise self.shutting_down() from None
            logger.debug("request body incomplete after %g s: 408", timeout_s)
            # close the connection: the rest of the body may still come
            raise HttpError(
                408,
                f"the request body did not arrive within {timeout_s:g} s "
                "(body_timeout_s); send the whole body at once",
                {"Connection": "close"},
            ) from None

    def shutting_down(self) -> HttpError:
        return HttpError(
            503,
            "the server is shutting down; retry on another replica",
            {"Retry-After": str(self.settings.retry_after_s)},
        )

    def not_ready_reason(self) -> str | None:
        """Why the server cannot serve a query now, or None if it can."""
        if self.draining:
            return "the server is shutting down"
        backend = self.frontend.backend
        if not any(backend.alive(DATA, i) for i in range(backend.counts[DATA])):
            return "no live data instance"
        return None

    async def run(
        self, queries: list[np.ndarray], deadline_s: float | None
    ) -> list[Answer]:
        """Submit every query at once and wait for all the answers.

        Raises:
            HttpError: 503 while draining.
            HttpError: 413 for a batch larger than ``max_pending``.
            HttpError: 422 for an answer holding NaN or infinity.
            OverloadedError, FrontendClosedError: refused; a batch is checked
                against the free room first, so normally none of it was accepted.
            QueryTimeoutError, BackendUnavailableError, FrontendClosedError:
                the first failure among the batch's queries.
        """
        if self._draining:
            raise self.shutting_down()
        if deadline_s is None:
            deadline_s = self.settings.default_deadline_s
        frontend = self.frontend
        if len(queries) == 1:
            # the common case: submit's own max_pending check is the whole
            # batch's (and counts the query in `refused`, which a batch refused
            # below is not), and timing the await costs less than a callback
            start_s = time.perf_counter()
            answer = await frontend.submit(queries[0], deadline_s=deadline_s)
            self.metrics.observe_answer(answer, time.perf_counter() - start_s)
            _check_finite(answer, 0)
            return [answer]
        # admit a batch whole or not at all: a batch refused half-way would
        # have its accepted part computed and its answers dropped
        if len(queries) > frontend.max_pending:
            raise HttpError(
                413,
                f"a batch of {len(queries)} inputs exceeds the server's limit of "
                f"{frontend.max_pending} pending queries; send smaller batches",
            )
        pending = frontend.statistics().pending
        if pending + len(queries) > frontend.max_pending:
            raise OverloadedError(pending, frontend.max_pending)
        futures: list[asyncio.Future[Answer]] = []
        try:
            for x in queries:
                future = frontend.submit(x, deadline_s=deadline_s)
                future.add_done_callback(_Timer(self.metrics, time.perf_counter()))
                futures.append(future)
        except (OverloadedError, FrontendClosedError):
            for future in futures:
                future.add_done_callback(_retrieve)
            raise
        answers = []
        for outcome in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
            answers.append(outcome)
        for i, answer in enumerate(answers):
            _check_finite(answer, i)
        return answers

    def deadline_from(
        self,
        value: Any,
        *,
        name: str,
        scale_s: float,
        text: bool = False,
        whole: bool = False,
    ) -> float | None:
        """Parse a per-request deadline given in units of ``scale_s`` seconds;
        with ``text`` (a query string) from a string, else (JSON) a number;
        with ``whole``, a JSON integer (Triton's ``timeout`` is a uint64).

        Raises:
            HttpError: 400 unless ``value`` is None or a finite number > 0.
        """
        if value is None:
            return None
        sent = value  # named as sent in the error, not as parsed
        if whole and (type(value) is not int or value <= 0):
            raise HttpError(400, f"{name} must be a whole number > 0, got {sent!r}")
        if text and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                value = math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HttpError(400, f"{name} must be a number > 0, got {sent!r}")
        if not (math.isfinite(value) and value > 0):
            raise HttpError(400, f"{name} must be a finite number > 0, got {sent!r}")
        return float(value) * scale_s


def _check_finite(answer: Answer, index: int) -> None:
    """Refuse to send an answer holding NaN or infinity.

    JSON would carry NaN as null; a reconstruction can overflow even where the
    instances refused non-finite outputs of their own.

    Raises:
        HttpError: 422.
    """
    output = answer.output
    # a sum of squares is finite only if every value is, and costs less than
    # isfinite().all(); an output so large that the sum overflows takes the
    # exact test
    if math.isfinite(np.vdot(output, output)) or np.isfinite(output).all():
        return
    how = "its reconstruction" if answer.reconstructed else "the model's output"
    raise HttpError(
        422,
        f"{how} for input {index} holds NaN or infinity: the input is outside "
        "what the model can compute; send inputs in the range it was trained on",
    )


def check_input_range(x: np.ndarray, max_abs: float, what: str = "input") -> None:
    """Refuse NaN, infinity and values beyond +-``max_abs``.

    Raises:
        BadQueryError: naming the bound, or the non-finite value.
    """
    # the largest magnitude is NaN if any value is, and NaN <= max_abs is
    # False; one ufunc reduction, without the errstate a comparison needs
    if not x.size or np.maximum.reduce(np.abs(x), axis=None) <= max_abs:
        return
    # the error path only: name the first offending value and its place
    bad = ~np.isfinite(x)
    if not bad.any():
        bad = np.abs(x) > max_abs
    at = np.unravel_index(int(np.argmax(bad)), x.shape)
    place = index_text(tuple(int(i) for i in at))
    value = float(x[at])
    if not math.isfinite(value):
        raise BadQueryError(f"{what} holds NaN or infinity ({value} at {place})")
    shown = (
        f"{int(value)}" if value.is_integer() and abs(value) < 1e16 else f"{value:g}"
    )
    raise BadQueryError(
        f"{what} holds {shown} at {place}, beyond +-{max_abs:g} (the server's "
        "max_abs_input); send inputs in the range the model was trained on"
    )


class _Timer:
    """Done callback that records a query's latency under its outcome."""

    __slots__ = ("metrics", "start_s")

    def __init__(self, metrics: ServingMetrics, start_s: float) -> None:
        self.metrics, self.start_s = metrics, start_s

    def __call__(self, future: asyncio.Future[Answer]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.metrics.observe_answer(
                future.result(), time.perf_counter() - self.start_s
            )


def _retrieve(future: asyncio.Future[Answer]) -> None:
    # marks the exception retrieved so asyncio does not log it as lost
    if not future.cancelled():
        future.exception()


SERVICE = web.AppKey("service", Service)


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return json_response({"error": message}, status, headers)


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"body exceeds the {limit}-byte limit (max_body_bytes)")


async def read_body(request: web.Request) -> bytes:
    """The whole request body, at most ``max_body_bytes``.

    Raises:
        HttpError: 413 over the limit, 400 when empty, 408 when the body does
            not arrive within ``body_timeout_s``, 503 when the server starts
            draining while it is read, 499 (for the metrics only: nobody
            reads it) when the client disconnects mid-body.
    """
    service = request.app[SERVICE]
    limit = service.settings.max_body_bytes
    # refuse on the declared length before reading anything
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    content = request.content
    try:
        if content.is_eof():
            # it came with the headers: take it from the buffer, without
            # request.read()'s loop over chunks (read_nowait does not check
            # the limit; a compressed body can outgrow its Content-Length)
            body = content.read_nowait()
            if len(body) > limit:
                raise _too_large(limit)
        else:
            body = await service.read_slow_body(request)
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except ConnectionResetError:
        # the client's choice, not a server fault: no ERROR, no traceback
        logger.debug("client disconnected mid-body on %s", request.path)
        raise HttpError(
            499, "the client disconnected before sending its body"
        ) from None
    if not body:
        raise HttpError(400, "empty body; send a JSON request")
    return body


def _check_token(request: web.Request, token: str) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, supplied = header.partition(" ")
    if not header:
        raise HttpError(
            401,
            "missing bearer token: send 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": 'Bearer realm="learncc"'},
        )
    # compare_digest so the time taken does not reveal how much of it matched
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        supplied.strip().encode(), token.encode()
    ):
        raise HttpError(
            401,
            "wrong bearer token",
            {"WWW-Authenticate": 'Bearer realm="learncc", error="invalid_token"'},
        )


def _error_for(e: Exception, request: web.Request, service: Service) -> web.Response:
    """The JSON answer to a failure; re-raises what has no known cause."""
    retry = {"Retry-After": str(service.settings.retry_after_s)}
    if isinstance(e, HttpError):
        return error_response(e.status, e.message, e.headers)
    if isinstance(e, web.HTTPException):
        # aiohttp's own 404 and 405 come with a text body: give the JSON form,
        # keeping the Allow header of a 405
        allow = e.headers.get("Allow")
        if e.status == 404:
            return error_response(404, f"no route {request.path!r}; see /openapi.json")
        if e.status == 405 and allow is not None:
            return error_response(
                405,
                f"{request.method} is not allowed on {request.path!r}; use {allow}",
                {"Allow": allow},
            )
        return error_response(e.status, e.reason)
    if isinstance(e, BadQueryError):
        return error_response(400, str(e))
    if isinstance(e, OverloadedError):
        return error_response(503, str(e), retry)
    if isinstance(e, QueryTimeoutError):
        return error_response(504, str(e))
    if isinstance(e, NonFiniteOutputError):
        # the instance refused F's output for this input: retrying cannot help
        return error_response(422, str(e))
    if isinstance(e, (BackendUnavailableError, FrontendClosedError)):
        return error_response(503, str(e), retry)
    raise e


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, run the handler, map errors to JSON, count the request."""
    service = request.app[SERVICE]
    try:
        token = service.settings.token
        if token is not None and request.path not in PUBLIC_PATHS:
            _check_token(request, token)
        response = await handler(request)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure must become a JSON answer
        try:
            response = _error_for(e, request, service)
        except Exception:
            logger.exception(
                "unhandled error serving %s %s", request.method, request.path
            )
            response = error_response(
                500, f"internal error ({type(e).__name__}); the server log has details"
            )
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    service.metrics.observe_request(route, response.status)
    return response


# -- the plain JSON API -------------------------------------------------------


def _answer_json(answer: Answer) -> dict[str, Any]:
    output = answer.output
    values = output.tolist()
    if output.ndim == 1 and len(values) <= 64:
        # a classifier's few scores: cheaper in Python than a NumPy call
        top1 = values.index(max(values))
    else:
        top1 = int(np.argmax(output))
    return {
        "output": values,
        "top1": top1,
        "reconstructed": answer.reconstructed,
        "default": answer.default,
    }


def has_bool_literal(text: bytes) -> bool:
    """False when the JSON text holds no ``true`` or ``false``; True may also
    mean one inside a string, which only costs a needless scan of the data."""
    # find() of one byte is a memchr, many times faster than finding the
    # literal, and these first letters are rare outside the keys
    for literal in (b"true", b"false"):
        first = literal[:1]
        i = text.find(first)
        while i >= 0:
            if text.startswith(literal, i):
                return True
            i = text.find(first, i + 1)
    return False


def holds_bool(data: list[Any]) -> bool:
    types = set(map(type, data))
    return bool in types or (
        list in types and any(holds_bool(v) for v in data if type(v) is list)
    )


def json_hint(body: bytes) -> str:
    """What a malformed JSON body most likely got wrong, if we can tell: the
    parser's position alone does not say that NaN is not JSON."""
    if b"NaN" in body or b"Infinity" in body:
        return "; JSON has no NaN or Infinity (inputs must be finite numbers)"
    return ""


def leaves(data: list[Any], path: tuple[int, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """(place, value) of every non-list in nested lists, in row-major order."""
    for i, value in enumerate(data):
        if type(value) is list:
            yield from leaves(value, (*path, i))
        else:
            yield (*path, i), value


def show_json(value: Any) -> str:
    """A value as the client wrote it in JSON (true, null, "a"), shortened."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def ragged_place(data: list[Any], what: str, path: tuple[int, ...] = ()) -> str | None:
    """Where nested lists stop being rectangular, shallowest first: a list
    whose length differs from its first sibling's, or a number beside lists."""
    subs = [v for v in data if type(v) is list]
    if subs and len(subs) < len(data):
        i = next(i for i, v in enumerate(data) if type(v) is not list)
        return (
            f"{what}{index_text((*path, i))} is {show_json(data[i])} where its "
            "siblings are lists"
        )
    for i, v in enumerate(subs[1:], 1):
        if len(v) != len(subs[0]):
            return (
                f"{what}{index_text((*path, i))} has {len(v)} elements where "
                f"{what}{index_text((*path, 0))} has {len(subs[0])}"
            )
    for i, v in enumerate(subs):
        found = ragged_place(v, what, (*path, i))
        if found is not None:
            return found
    return None


def index_text(path: tuple[int, ...]) -> str:
    """A place in nested lists or an array as the client indexes it: [1][0]."""
    return "".join(f"[{j}]" for j in path)


def _misfit(value: list[Any], what: str, max_abs: float) -> str:
    """Why ``value`` is not a nested list of numbers, naming the first place
    where it goes wrong; only computed for a request that is refused."""
    for place, leaf in leaves(value):
        where = f"{what}{index_text(place)}"
        if type(leaf) is int and abs(leaf) > max_abs:
            return (
                f"{where} is {show_json(leaf)}, beyond +-{max_abs:g} (the server's "
                "max_abs_input); send inputs in the range the model was trained on"
            )
        if type(leaf) not in (int, float):
            return (
                f"'{what}' must hold numbers only (no strings, booleans or null); "
                f"got {show_json(leaf)} at {where}"
            )
    ragged = ragged_place(value, what)
    if ragged is not None:
        return f"'{what}' must be a rectangular nested list: {ragged}"
    return f"'{what}' must be a rectangular nested list of numbers"


def parse_input(
    value: Any,
    frontend: Frontend,
    *,
    max_abs: float = DEFAULT_MAX_ABS_INPUT,
    scan_bools: bool = True,
    what: str = "input",
) -> np.ndarray:
    """Turn a JSON value into a checked query array.

    A flat list of the input's size is reshaped to the input shape. With
    ``scan_bools`` False (the caller knows the body holds no ``true`` or
    ``false``) nested lists are not searched for booleans. ``what`` names
    the value in errors (``inputs[2]`` for one of several).

    Raises:
        BadQueryError: not a rectangular array of numbers (strings, booleans
            and null are refused, not converted) of the input shape, or it
            holds NaN, infinity or values beyond +-``max_abs``; naming the
            first offending place.
    """
    if not isinstance(value, list):
        kind = "null" if value is None else type(value).__name__
        raise BadQueryError(f"'{what}' must be a nested list of numbers, got {kind}")
    try:
        # no dtype: a float64 conversion would read "1.5" as 1.5
        x = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        x = None
    if x is None or x.dtype.kind not in "iuf":
        raise BadQueryError(
            f"{_misfit(value, what, max_abs)} (the model takes shape "
            f"{list(frontend.input_shape)})"
        )
    # NumPy reads true as 1 in a list that also holds numbers
    if scan_bools and holds_bool(value):
        raise BadQueryError(_misfit(value, what, max_abs))
    check_input_range(x, max_abs, f"'{what}'")  # places as sent, before reshaping
    if x.ndim == 1 and x.size == math.prod(frontend.input_shape):
        x = x.reshape(frontend.input_shape)
    try:
        return frontend.check_input(x)
    except BadQueryError as e:
        raise BadQueryError(f"'{what}': {e}") from None


async def health(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    reason = service.not_ready_reason()
    body = {"status": "ok" if reason is None else reason}
    return json_response({**body, **asdict(service.frontend.statistics())})


async def model(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    settings = service.settings
    output_shape = list(settings.output_shape) if settings.output_shape else None
    return json_response(
        {
            "name": settings.model_name,
            "input_shape": list(service.frontend.input_shape),
            "output_shape": output_shape,
            **settings.info,
        }
    )


async def infer(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    if request.content_type != "application/json":
        raise HttpError(
            415,
            f"send JSON (Content-Type: application/json), not {request.content_type!r}",
        )
    query = request.query
    if len(query) > 1 or (query and "timeout_ms" not in query):
        # a setting that does nothing would pass for one that does
        unknown = sorted(set(query) - {"timeout_ms"})
        raise HttpError(
            400,
            f"unknown query parameter(s) {unknown}; /infer takes timeout_ms"
            if unknown
            else f"give timeout_ms once, got {query.getall('timeout_ms')}",
        )
    deadline_s = service.deadline_from(
        query.get("timeout_ms"),
        name="query parameter timeout_ms",
        scale_s=1e-3,
        text=True,
    )
    body = await read_body(request)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise HttpError(400, f"malformed JSON: {e}{json_hint(body)}") from None
    if not isinstance(doc, dict) or ("input" in doc) == ("inputs" in doc):
        raise HttpError(400, "send an object with exactly one of 'input' or 'inputs'")
    if len(doc) > 1:
        # a setting the body cannot carry would otherwise be silently ignored
        extra = sorted(set(doc) - {"input", "inputs"})
        where = (
            "; a deadline goes in the query string: POST /infer?timeout_ms=..."
            if "timeout_ms" in extra
            else ""
        )
        raise HttpError(400, f"unknown field(s) {extra} in the body{where}")
    max_abs = service.settings.max_abs_input
    scan = has_bool_literal(body)
    if "input" in doc:
        queries = [
            parse_input(
                doc["input"], service.frontend, max_abs=max_abs, scan_bools=scan
            )
        ]
    else:
        inputs = doc["inputs"]
        if not isinstance(inputs, list) or not inputs:
            raise HttpError(400, "'inputs' must be a non-empty list of inputs")
        if len(inputs) > service.settings.max_batch:
            raise HttpError(
                400, f"at most {service.settings.max_batch} inputs per request"
            )
        queries = [
            parse_input(
                v,
                service.frontend,
                max_abs=max_abs,
                scan_bools=scan,
                what=f"inputs[{i}]",
            )
            for i, v in enumerate(inputs)
        ]
    answers = [_answer_json(a) for a in await service.run(queries, deadline_s)]
    return json_response(answers[0] if "input" in doc else {"answers": answers})


async def metrics_text(request: web.Request) -> web.Response:
    body = request.app[SERVICE].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def make_app(
    frontend: Frontend,
    *,
    model_name: str = "model",
    output_shape: tuple[int, ...] | None = None,
    info: dict[str, Any] | None = None,
    token: str | None = None,
    max_body_bytes: int = 8 << 20,
    max_batch: int = MAX_BATCH_INPUTS,
    default_deadline_s: float | None = None,
    retry_after_s: int = 1,
    max_abs_input: float = DEFAULT_MAX_ABS_INPUT,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    metrics: ServingMetrics | None = None,
) -> web.Application:
    """The aiohttp application; the caller owns the frontend's lifecycle.

    Args:
        frontend: serves the queries; it must be started before requests come.
        model_name: the model's name in ``/v2/models/{name}``.
        output_shape: shape of one output, for the model metadata; ``None``
            advertises ``-1`` (unknown) dimensions.
        info: extra fields for ``GET /model`` (mode, instance counts, ...).
        token: bearer token required on every route but ``/v2/health/live``;
            ``None`` leaves the API open (bind to 127.0.0.1 then).
        max_body_bytes: larger request bodies get 413 before they are read.
        max_batch: most inputs in one request (each is one frontend query).
        default_deadline_s: deadline given to queries whose request names
            none; ``None`` leaves them to the frontend's ``query_timeout_s``.
        retry_after_s: the ``Retry-After`` header on 503 answers.
        max_abs_input: inputs with a value beyond +-this get 400: near
            float32's limit F's outputs overflow to inf/NaN; ``math.inf``
            lifts the bound (NaN and infinity are refused regardless).
        body_timeout_s: a request body still incomplete this long after its
            headers gets 408, so a stalled client cannot hold a handler.
        metrics: where to record; by default a fresh ``ServingMetrics``.

    Raises:
        ConfigError: an option is out of range (the message names it).
    """
    from learncc.serving.http import oip, openapi

    settings = HttpSettings(
        model_name=model_name,
        output_shape=tuple(output_shape) if output_shape is not None else None,
        info=dict(info or {}),
        token=token,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
        default_deadline_s=default_deadline_s,
        retry_after_s=retry_after_s,
        max_abs_input=max_abs_input,
        body_timeout_s=body_timeout_s,
    )
    # client_max_size is the backstop for bodies without Content-Length
    app = web.Application(client_max_size=max_body_bytes, middlewares=[guard])
    app[SERVICE] = Service(frontend, settings, metrics or ServingMetrics(frontend))
    app.router.add_get("/health", health)
    app.router.add_get("/model", model)
    app.router.add_post("/infer", infer)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/openapi.json", openapi.serve_document)
    oip.add_routes(app)
    return app

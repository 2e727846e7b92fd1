"""A minimal JSON HTTP endpoint over the frontend (aiohttp).

- ``GET /health``: ``{"status": "ok", ...statistics}``.
- ``GET /model``: input shape, code and deployment.
- ``POST /infer`` with ``{"input": <nested list of the input shape>}``
  answers ``{"output": [...], "top1": i, "reconstructed": bool}``; with
  ``{"inputs": [...]}`` it answers ``{"answers": [...]}``, one per input.

A malformed request gets 400 (415 for a non-JSON content type, 413 when over
``max_body_bytes``) with ``{"error": message}``; an accepted query that
cannot be answered gets 503 (no instance) or 504 (timeout). The server binds
127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from learncc.errors import (
    BackendUnavailableError,
    BadQueryError,
    FrontendClosedError,
    QueryTimeoutError,
)
from learncc.serving.frontend import Answer, Frontend

logger = logging.getLogger(__name__)

MAX_BATCH_INPUTS = 1024


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _answer_json(answer: Answer) -> dict[str, Any]:
    return {
        "output": answer.output.tolist(),
        "top1": int(np.argmax(answer.output)),
        "reconstructed": answer.reconstructed,
    }


def parse_input(value: Any, frontend: Frontend) -> np.ndarray:
    """Turn a JSON value into a checked query array.

    Raises:
        BadQueryError: not a rectangular numeric array of the input shape.
    """
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise BadQueryError(f"'input' must be a nested list of numbers, got {type(value).__name__}")
    try:
        x = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise BadQueryError(
            "'input' must be a rectangular nested list of numbers "
            f"of shape {list(frontend.input_shape)}"
        ) from None
    if x.size == int(np.prod(frontend.input_shape)) and x.shape != frontend.input_shape:
        # a flat list of the right length is accepted for convenience
        x = x.reshape(frontend.input_shape) if x.ndim == 1 else x
    return frontend.check_input(x)


def make_app(
    frontend: Frontend, *, info: dict[str, Any] | None = None, max_body_bytes: int = 8 << 20
) -> web.Application:
    """The aiohttp application; the caller owns the frontend's lifecycle."""

    async def health(_: web.Request) -> web.Response:
        return _json({"status": "ok", **asdict(frontend.statistics())})

    async def model(_: web.Request) -> web.Response:
        return _json({"input_shape": list(frontend.input_shape), **(info or {})})

    async def infer(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return _error(415, f"send JSON (Content-Type: application/json), not {request.content_type!r}")
        try:
            body = orjson.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body exceeds the {max_body_bytes}-byte limit")
        except orjson.JSONDecodeError as e:
            return _error(400, f"malformed JSON: {e}")
        if not isinstance(body, dict) or ("input" in body) == ("inputs" in body):
            return _error(400, "send an object with exactly one of 'input' or 'inputs'")
        try:
            if "input" in body:
                queries = [parse_input(body["input"], frontend)]
            else:
                if not isinstance(body["inputs"], list) or not body["inputs"]:
                    raise BadQueryError("'inputs' must be a non-empty list of inputs")
                if len(body["inputs"]) > MAX_BATCH_INPUTS:
                    raise BadQueryError(f"at most {MAX_BATCH_INPUTS} inputs per request")
                queries = [parse_input(v, frontend) for v in body["inputs"]]
        except BadQueryError as e:
            return _error(400, str(e))
        try:
            futures = [frontend.submit(x) for x in queries]
        except FrontendClosedError as e:
            return _error(503, str(e))
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, QueryTimeoutError):
                return _error(504, str(outcome))
            if isinstance(outcome, (BackendUnavailableError, FrontendClosedError)):
                return _error(503, str(outcome))
            if isinstance(outcome, BaseException):
                raise outcome
        answers = [_answer_json(a) for a in outcomes]  # type: ignore[arg-type]
        return _json(answers[0] if "input" in body else {"answers": answers})

    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_get("/health", health)
    app.router.add_get("/model", model)
    app.router.add_post("/infer", infer)
    return app


async def serve_http(
    frontend: Frontend,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    info: dict[str, Any] | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Start the frontend and serve HTTP until ``stop`` is set (or forever),
    then drain in-flight requests and close."""
    await frontend.start()
    runner = web.AppRunner(make_app(frontend, info=info))
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        logger.info("serving on http://%s:%d", host, port)
        if ready is not None:
            ready.set()
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await runner.cleanup()
        await frontend.close()

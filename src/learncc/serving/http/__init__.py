"""The HTTP face of the frontend (aiohttp).

Three APIs over one app (``make_app``), all JSON, errors as ``{"error": ...}``:

- the Open Inference Protocol v2 (``/v2/...``, see ``learncc.serving.http.oip``),
  which ``tritonclient.http`` and other KServe/Triton clients speak unchanged;
- a plain API for curl: ``POST /infer`` with ``{"input": <nested list>}``
  answers ``{"output", "top1", "reconstructed", "default"}``, with
  ``{"inputs": [...]}`` it answers ``{"answers": [...]}``; ``?timeout_ms=``
  (the query string only: other fields in the body are refused) sets a
  deadline; ``GET /health`` and ``GET /model``;
- ``GET /metrics`` (Prometheus, see ``learncc.serving.metrics``) and
  ``GET /openapi.json``.

An optional bearer token guards every route but ``/v2/health/live``. Status
codes are mapped in one place (``learncc.serving.http.app``). ``serve_http``
binds 127.0.0.1 unless told otherwise and drains on SIGINT/SIGTERM.
"""

from learncc.serving.http.app import (
    MAX_BATCH_INPUTS,
    HttpError,
    HttpSettings,
    make_app,
    parse_input,
)
from learncc.serving.http.server import HttpServer, serve_http

__all__ = [
    "MAX_BATCH_INPUTS",
    "HttpError",
    "HttpServer",
    "HttpSettings",
    "make_app",
    "parse_input",
    "serve_http",
]

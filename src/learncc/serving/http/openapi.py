"""A hand-written OpenAPI 3.0 document of the HTTP API, served at /openapi.json.

It describes the JSON forms only: the binary tensor extension (a JSON header
followed by raw bytes) is outside what OpenAPI can state, so a binary infer
response is declared as opaque ``application/octet-stream``. The model name
and the input shape are filled in from the running app, so a client (or a
fuzzer such as schemathesis) sees the one model served.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

import learncc
from learncc.serving.http.app import SERVICE, HttpSettings, json_response
from learncc.serving.http.oip import DATATYPES, INPUT_NAME, OUTPUT_NAMES


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    described = {
        400: "malformed request: the message names the problem",
        401: "missing or wrong bearer token",
        404: "unknown model or version",
        408: "the body did not arrive within the server's body timeout",
        413: "body over the size limit",
        415: "wrong content type",
        422: "the model's output for an input is not finite (NaN or infinity)",
        503: "overloaded, draining, or no live instance (see Retry-After)",
        504: "no answer before the deadline",
    }
    return {str(c): _json(_ref("Error"), described[c]) for c in codes}


def _schemas(settings: HttpSettings, input_shape: list[int]) -> dict[str, Any]:
    number_list = {"type": "array", "items": {}}  # nested lists of numbers
    tensor_meta = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "TensorMetadata": tensor_meta,
        "InferInput": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string", "enum": [INPUT_NAME]},
                "shape": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0},
                    "description": f"[batch, {', '.join(map(str, input_shape))}]",
                },
                "datatype": {"type": "string", "enum": list(DATATYPES)},
                "parameters": {"type": "object"},
                "data": number_list,
            },
        },
        "InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {
                    "type": "object",
                    "properties": {
                        "timeout_ms": {
                            "type": "number",
                            "minimum": 0,
                            "exclusiveMinimum": True,
                        },
                        "timeout": {"type": "integer", "minimum": 1},
                        "binary_data_output": {"type": "boolean"},
                    },
                },
                "inputs": {"type": "array", "items": _ref("InferInput")},
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "enum": list(OUTPUT_NAMES)},
                            "parameters": {"type": "object"},
                        },
                    },
                },
            },
        },
        "InferResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string", "enum": [settings.model_name]},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "outputs": {
                    "type": "array",
                    "items": {
                        "allOf": [
                            tensor_meta,
                            {
                                "properties": {
                                    "data": number_list,
                                    "parameters": {"type": "object"},
                                }
                            },
                        ]
                    },
                },
            },
        },
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            },
        },
        "PlainAnswer": {
            "type": "object",
            "required": ["output", "top1", "reconstructed", "default"],
            "properties": {
                "output": {"type": "array", "items": {"type": "number"}},
                "top1": {"type": "integer"},
                "reconstructed": {"type": "boolean"},
                "default": {"type": "boolean"},
            },
        },
    }


def document(settings: HttpSettings, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """The OpenAPI 3.0 document for an app with these settings."""
    name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        # the one name served: positive cases reach the model, negative ones get 404
        "schema": {"type": "string", "enum": [settings.model_name]},
        "description": f"the model's name; this server serves {settings.model_name!r}",
    }
    auth = (401,) if settings.token is not None else ()
    health = {"type": "object", "properties": {"live": {"type": "boolean"}}}
    readiness = {
        "type": "object",
        "required": ["ready"],
        "properties": {"ready": {"type": "boolean"}, "error": {"type": "string"}},
    }
    infer_ok = _json(_ref("InferResponse"), "the answers, one per batch item")
    infer_ok["content"]["application/octet-stream"] = {
        "schema": {"type": "string", "format": "binary"}
    }
    plain_request = {
        "type": "object",
        "properties": {
            "input": {"type": "array", "items": {}},
            "inputs": {"type": "array", "items": {"type": "array", "items": {}}},
        },
    }
    plain_response = {
        "oneOf": [
            _ref("PlainAnswer"),
            {
                "type": "object",
                "required": ["answers"],
                "properties": {
                    "answers": {"type": "array", "items": _ref("PlainAnswer")}
                },
            },
        ]
    }
    paths: dict[str, Any] = {
        "/v2/health/live": {
            "get": {
                "summary": "Liveness (never needs the token)",
                "security": [],
                "responses": {"200": _json(health, "the server answers HTTP")},
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "Readiness",
                "responses": {
                    "200": _json(readiness, "ready"),
                    "503": _json(readiness, "not ready (draining or no live instance)"),
                    **_errors(*auth),
                },
            }
        },
        "/v2": {
            "get": {
                "summary": "Server metadata",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["name", "version", "extensions"],
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                                "extensions": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                },
                            },
                        },
                        "server metadata",
                    ),
                    **_errors(*auth),
                },
            }
        },
        "/v2/models/{name}": {
            "get": {
                "summary": "Model metadata",
                "parameters": [name_param],
                "responses": {
                    "200": _json(_ref("ModelMetadata"), "model metadata"),
                    **_errors(404, *auth),
                },
            }
        },
        "/v2/models/{name}/ready": {
            "get": {
                "summary": "Model readiness",
                "parameters": [name_param],
                "responses": {
                    "200": _json(readiness, "ready"),
                    "503": _json(readiness, "not ready"),
                    **_errors(404, *auth),
                },
            }
        },
        "/v2/models/{name}/infer": {
            "post": {
                "summary": "Inference (Open Inference Protocol v2)",
                "parameters": [name_param],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("InferRequest")}},
                },
                "responses": {
                    "200": infer_ok,
                    **_errors(400, 404, 408, 413, 415, 422, 503, 504, *auth),
                },
            }
        },
        "/infer": {
            "post": {
                "summary": "Plain JSON inference (one input or a list of inputs)",
                "parameters": [
                    {
                        "name": "timeout_ms",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "number",
                            "minimum": 0,
                            "exclusiveMinimum": True,
                        },
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": plain_request}},
                },
                "responses": {
                    "200": _json(plain_response, "the answer, or one per input"),
                    **_errors(400, 408, 413, 415, 422, 503, 504, *auth),
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Status and the frontend's counters",
                "responses": {
                    "200": _json({"type": "object"}, "status and counters"),
                    **_errors(*auth),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text format 0.0.4)",
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(*auth),
                },
            }
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "learncc", "version": learncc.__version__},
        "paths": paths,
        "components": {"schemas": _schemas(settings, list(input_shape))},
    }
    if settings.token is not None:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        doc["security"] = [{"bearer": []}]
    return doc


async def serve_document(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return json_response(document(service.settings, service.frontend.input_shape))

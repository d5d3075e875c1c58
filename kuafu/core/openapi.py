"""The HTTP front door's pure parts: how a service describes its methods, the OpenAPI 3
document built from that description, and how Kuafu's typed errors become HTTP statuses
(standard library only; ``kuafu/gateway.py`` serves them).

A server answers the reserved method ``DESCRIBE_METHOD`` of any of its services with
``describe(name, methods, idempotent)`` as JSON, so the description travels the normal call
path (same authentication, same routing) and needs no registry of its own."""

from __future__ import annotations

import inspect
import json

DESCRIBE_METHOD = "_kuafu_describe"  # reserved: a public method never starts with "_"
OPENAPI_VERSION = "3.0.3"
DOC_CHARS_MAX = 2000  # of a method's docstring copied into the description

ARROW_TYPE = "application/vnd.apache.arrow.stream"
MESSAGE_KINDS = ("map", "str", "bytes", "arrow")

# Kuafu error code -> HTTP status (the defaults; a few messages refine them, see ``status_of``)
STATUS_BY_CODE = {
    "BadRequest": 400, "FrameError": 400, "TooLarge": 413, "Unauthenticated": 401,
    "Denied": 403, "Overloaded": 429, "Unavailable": 503, "TimedOut": 504,
    "RemoteError": 500, "KuafuError": 502,
}
# Messages Kuafu emits for a name that does not exist (kuafu.io.server, kuafu.core.routing).
NOT_FOUND_MARKS = ("has no method", "here; this server offers", "is registered")


def status_of(code: str, message: str) -> int:
    """The HTTP status of a Kuafu error: 404 for an unknown service or method (no endpoint of
    it is registered anywhere, or its server does not offer the method), else by its code."""
    if code in ("BadRequest", "Unavailable") and any(m in message for m in NOT_FOUND_MARKS):
        return 404
    return STATUS_BY_CODE.get(code, 502)


def _kind(annotation) -> str | None:
    """The message kind a parameter or return annotation names, or None (any)."""
    if annotation is inspect.Signature.empty or annotation is None:
        return None
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    name = str(name).strip("'\"").replace("typing.", "").lower()
    if name.startswith("dict"):
        return "map"
    if name in ("str",):
        return "str"
    if name in ("bytes", "bytearray", "memoryview"):
        return "bytes"
    if name.endswith("table") or name.endswith("recordbatch"):
        return "arrow"
    return None


def method_info(name: str, fn, idempotent: bool) -> dict:
    """What the description says of one method: its name, whether it may be resent, its doc
    and the message kinds its annotations name (None: any)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    params = [p for p in sig.parameters.values()] if sig is not None else []
    takes = _kind(params[0].annotation) if params else None
    gives = _kind(sig.return_annotation) if sig is not None else None
    doc = inspect.getdoc(fn) or ""
    return {"name": name, "idempotent": bool(idempotent), "doc": doc[:DOC_CHARS_MAX],
            "input": takes, "output": gives}


def describe(service: str, methods: dict, idempotent: set) -> str:
    """The JSON a server answers ``DESCRIBE_METHOD`` with."""
    return json.dumps({"service": service,
                       "methods": [method_info(n, fn, n in idempotent)
                                   for n, fn in sorted(methods.items())]})


def _body_schemas(kind: str | None) -> dict:
    """Request or response content for a message kind (None: every kind)."""
    out = {}
    if kind in (None, "map"):
        out["application/json"] = {"schema": {"type": "object",
                                              "additionalProperties": {"type": "string"}}}
    if kind == "str":
        out["application/json"] = {"schema": {"type": "string"}}
    if kind is None:  # a JSON body is a map or a string
        out["application/json"] = {"schema": {"oneOf": [
            {"type": "object", "additionalProperties": {"type": "string"}},
            {"type": "string"}]}}
    if kind in (None, "str"):
        out["text/plain"] = {"schema": {"type": "string"}}
    if kind in (None, "bytes"):
        out["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    if kind in (None, "arrow"):
        out[ARROW_TYPE] = {"schema": {"type": "string", "format": "binary"}}
    return out


ERROR_RESPONSES = {
    "400": "bad input: a malformed body, a bad deadline or header",
    "401": "no token, or a bad one (Authorization: Bearer <token>)",
    "403": "the caller may not call this service",
    "404": "no such service or method",
    "413": "the body is over the front door's limit",
    "415": "a Content-Type the front door does not take",
    "429": "overloaded: retry later",
    "500": "the method raised",
    "503": "no endpoint could take the call",
    "504": "the deadline passed",
}


def openapi(description: dict, server_url: str = "") -> dict:
    """An OpenAPI 3 document for one service from its description (``describe``'s JSON)."""
    svc = str(description.get("service", ""))
    paths = {}
    methods = description.get("methods")
    for m in methods if isinstance(methods, list) else []:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m["name"]:
            continue  # a description from a server of another version: skip what is odd
        name = m["name"]
        responses = {"200": {"description": "the method's reply",
                             "content": _body_schemas(m.get("output"))}}
        for code, text in ERROR_RESPONSES.items():
            responses[code] = {"description": text, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}
        paths[f"/v1/services/{svc}/{name}"] = {"post": {
            "operationId": f"{svc}.{name}",
            "summary": (m.get("doc") or "").split("\n", 1)[0] or f"{svc}.{name}",
            "description": m.get("doc") or "",
            "x-idempotent": bool(m.get("idempotent")),
            "parameters": [
                {"name": "X-Fuxi-Deadline-Ms", "in": "header", "required": False,
                 "schema": {"type": "integer", "minimum": 1},
                 "description": "the call's deadline in milliseconds"},
                {"name": "timeout_s", "in": "query", "required": False,
                 "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
                 "description": "the call's deadline in seconds"},
                {"name": "X-Fuxi-Backup", "in": "header", "required": False,
                 "schema": {"type": "string"},
                 "description": "an idempotent call's backup request: a delay in ms or a "
                                "latency percentile such as p95"},
            ],
            "requestBody": {"required": False, "content": _body_schemas(m.get("input"))},
            "responses": responses,
        }}
    doc = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": f"Fuxi service {svc}", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "object", "required": ["type", "message"], "properties": {
                    "type": {"type": "string"}, "message": {"type": "string"},
                    "remote_type": {"type": "string"}}}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc

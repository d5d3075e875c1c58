"""The HTTP front door's pure parts (kuafu.core.openapi): Kuafu errors to HTTP statuses, a
service's description from its methods, and the OpenAPI 3 document built from it."""

from __future__ import annotations

import json

import pytest

from kuafu.core import openapi as O
from kuafu.core.routing import no_endpoint_reason


@pytest.mark.parametrize("code,message,status", [
    ("BadRequest", "service 'svc' has no method 'x'; it offers ['echo']", 404),
    ("BadRequest", "no service 'x' here; this server offers ['svc']", 404),
    ("Unavailable", no_endpoint_reason("svc", None, 0, 0) + "; not sent", 404),
    ("Unavailable", no_endpoint_reason("svc", None, 2, 2), 503),
    ("Unavailable", no_endpoint_reason("svc", None, 0, 3), 503),
    ("BadRequest", "a request header needs 'svc'", 400),
    ("FrameError", "bad", 400), ("TooLarge", "big", 413),
    ("Unauthenticated", "no token", 401), ("Denied", "no", 403),
    ("Overloaded", "full", 429), ("TimedOut", "late", 504), ("RemoteError", "boom", 500),
    ("KuafuError", "odd", 502), ("SomethingNew", "?", 502),
    # A message that merely mentions the words under another code keeps its code's status.
    ("RemoteError", "user text: has no method", 500), ("Denied", "is registered", 403),
])
def test_status_of(code, message, status):
    assert O.status_of(code, message) == status


class Shop:
    def buy(self, msg: dict) -> str:
        """Buy a thing.

        More words."""
        return "ok"

    def blob(self, msg: bytes) -> bytes:
        return msg

    def table(self, msg: "pa.Table") -> "pa.Table":  # noqa: F821 - a string annotation
        return msg

    def anything(self, msg):
        return msg


def test_describe_and_openapi():
    s = Shop()
    methods = {"buy": s.buy, "blob": s.blob, "table": s.table, "anything": s.anything}
    desc = json.loads(O.describe("shop", methods, {"buy"}))
    by = {m["name"]: m for m in desc["methods"]}
    assert by["buy"] == {"name": "buy", "idempotent": True, "doc": "Buy a thing.\n\nMore words.",
                         "input": "map", "output": "str"}
    assert (by["blob"]["input"], by["table"]["input"], by["anything"]["input"]) == \
        ("bytes", "arrow", None)
    doc = O.openapi(desc, "http://127.0.0.1:1")
    assert doc["openapi"] == O.OPENAPI_VERSION and doc["servers"] == [{"url": "http://127.0.0.1:1"}]
    buy = doc["paths"]["/v1/services/shop/buy"]["post"]
    assert buy["summary"] == "Buy a thing." and buy["x-idempotent"] is True
    assert list(buy["requestBody"]["content"]) == ["application/json"]
    assert buy["responses"]["200"]["content"]["application/json"]["schema"] == {"type": "string"}
    anything = doc["paths"]["/v1/services/shop/anything"]["post"]["requestBody"]["content"]
    assert set(anything) == {"application/json", "text/plain", "application/octet-stream",
                             O.ARROW_TYPE}
    assert doc["paths"]["/v1/services/shop/table"]["post"]["requestBody"]["content"] == \
        {O.ARROW_TYPE: {"schema": {"type": "string", "format": "binary"}}}
    json.dumps(doc)  # serialisable


def test_openapi_of_a_garbage_description_is_still_a_document():
    doc = O.openapi({"service": 5, "methods": [{"name": None}, {}, "x", {"name": "ok"}]})
    assert list(doc["paths"]) == ["/v1/services/5/ok"]
    assert O.openapi({})["paths"] == {} and O.openapi({"methods": "abc"})["paths"] == {}

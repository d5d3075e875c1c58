"""The HTTP front door (kuafu.gateway) on a real proxy and a real attached server, in this
process (no Ray): every body type, every error status, deadlines, limits, the OpenAPI
description -- with ``curl`` as the client where it is installed -- and, with access control
on over a real Nuwa, the bearer token."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request

import pyarrow as pa
import pytest

from kuafu.core.openapi import ARROW_TYPE
from kuafu.gateway import HttpGateway
from kuafu.io.loops import LoopThread
from kuafu.io.proxy import ProxyCore
from kuafu.io.server import Server
from tests.kuafu.services import Svc

pytestmark = pytest.mark.timeout(120)

CURL = shutil.which("curl")
BODY_MAX = 256 * 1024  # the test front door's body limit


def curl(url: str, *args: str) -> tuple[int, str]:
    """(status, body) of a curl request."""
    out = subprocess.run([CURL, "-s", "-S", "-o", "-", "-w", "\n%{http_code}", *args, url],
                         capture_output=True, text=True, timeout=60)
    body, _, status = out.stdout.rpartition("\n")
    return int(status), body


def post(url: str, data: bytes = b"", content_type: str = "application/json",
         headers: dict | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def error_of(body) -> dict:
    doc = json.loads(body)
    assert set(doc) == {"error"} and {"type", "message"} <= set(doc["error"]), doc
    return doc["error"]


class Door:
    def __init__(self, core, loop, **kw):
        self.core, self.loop = core, loop
        self.gw = HttpGateway(core, **kw)
        self.url = loop.run(self.gw.start(), 10)

    def svc(self, service: str, method: str) -> str:
        return f"{self.url}/v1/services/{service}/{method}"

    def close(self):
        self.loop.run(self.gw.stop(), 10)


@pytest.fixture(scope="module")
def door():
    d = tempfile.mkdtemp(prefix="kgw-", dir="/tmp")
    lt = LoopThread("test-proxy")
    core = ProxyCore("tg", uds=os.path.join(d, "p.sock"))
    lt.run(core.start(), 10)
    slt = LoopThread("test-server")
    srv = Server({"svc": Svc("one")})
    slt.run(srv.attach(f"unix://{core.uds}"), 10)
    gw = Door(core, lt, body_bytes_max=BODY_MAX, calls_max=4)
    try:
        yield gw
    finally:
        gw.close()
        slt.run(srv.stop(0.5), 10)
        slt.stop()
        lt.run(core.stop(), 10)
        lt.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_calls_a_service(door):
    st, body = curl(door.svc("svc", "echo"), "-H", "Content-Type: application/json",
                    "-d", '{"word": "the", "n": "1"}')
    assert st == 200 and json.loads(body) == {"word": "the", "n": "1"}
    st, body = curl(door.svc("svc", "echo"), "-H", "Content-Type: application/json",
                    "-d", '"a string"')
    assert st == 200 and json.loads(body) == "a string"
    st, body = curl(door.svc("svc", "who"), "-X", "POST")  # no body: empty bytes
    assert st == 200 and json.loads(body) == "one"
    st, body = curl(door.svc("svc", "echo"), "-H", "Content-Type: text/plain", "-d", "ünï")
    assert st == 200 and json.loads(body) == "ünï"
    st, body = curl(f"{door.url}/v1/health")
    assert st == 200 and body.strip() == "ok"


def test_bytes_and_arrow_round_trip(door):
    raw = os.urandom(100_000)
    st, body, h = post(door.svc("svc", "echo"), raw, "application/octet-stream")
    assert st == 200 and body == raw and h["Content-Type"] == "application/octet-stream"
    table = pa.table({"a": list(range(1000)), "b": ["x"] * 1000})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    st, body, h = post(door.svc("svc", "echo"), sink.getvalue().to_pybytes(), ARROW_TYPE)
    assert st == 200 and h["Content-Type"] == ARROW_TYPE
    assert pa.ipc.open_stream(pa.py_buffer(body)).read_all().equals(table)


@pytest.mark.parametrize("body,ctype,status,kind,match", [
    (b"{not json", "application/json", 400, "BadRequest", "not JSON"),
    (b"[1, 2]", "application/json", 400, "BadRequest", "got list"),
    (b'{"a": 1}', "application/json", 400, "BadRequest", "non-string value"),
    (b"12", "application/json", 400, "BadRequest", "got int"),
    (b"\xff\xfe", "text/plain", 400, "BadRequest", "not UTF-8"),
    (b"not arrow at all", ARROW_TYPE, 400, "BadRequest", "not an Arrow IPC stream"),
    (b"a=b", "application/x-www-form-urlencoded", 415, "UnsupportedMediaType",
     "Content-Type: application/json"),
])
def test_bad_bodies_are_400_or_415_with_a_json_error(door, body, ctype, status, kind, match):
    st, out, _ = post(door.svc("svc", "echo"), body, ctype)
    err = error_of(out)
    assert (st, err["type"]) == (status, kind) and match in err["message"], (st, err)


def test_a_huge_body_is_413_before_it_is_read(door, tmp_path):
    st, out, _ = post(door.svc("svc", "echo"), b"x" * (BODY_MAX + 1), "application/octet-stream")
    err = error_of(out)
    assert st == 413 and "HTTP_BODY_BYTES_MAX" in err["message"]
    if CURL:  # chunked, with no Content-Length: refused while reading
        big = tmp_path / "big"
        big.write_bytes(b"y" * (4 * BODY_MAX))
        st, out = curl(door.svc("svc", "echo"), "-H", "Transfer-Encoding: chunked",
                       "-H", "Content-Type: application/octet-stream",
                       "--data-binary", f"@{big}", "--max-time", "30")
        assert st == 413 and "HTTP_BODY_BYTES_MAX" in error_of(out)["message"]
    # the proxy still serves
    st, out, _ = post(door.svc("svc", "echo"), b'"ok"')
    assert st == 200 and json.loads(out) == "ok"


@pytest.mark.parametrize("path,status,match", [
    ("/v1/services/nosuch/echo", 404, "no endpoint of service 'nosuch' is registered"),
    ("/v1/services/svc/nosuch", 404, "has no method 'nosuch'"),
    ("/v1/services/svc/_private", 404, "never exposed"),
    ("/v1/services/svc/_kuafu_describe", 404, "never exposed"),
    ("/v1/services/bad%20name!/echo", 400, ""),
    ("/v1/nothing", 404, "expected POST /v1/services/<name>/<method>"),
    ("/v1/services/svc/" + "m" * 3000, 414, "HTTP_TARGET_BYTES_MAX"),
])
def test_unknown_names_and_routes(door, path, status, match):
    st, out, _ = post(door.url + path, b'"x"')
    err = error_of(out)
    assert st == status and match in err["message"], (st, err)


def test_get_on_a_call_is_405(door):
    try:
        urllib.request.urlopen(door.svc("svc", "echo"), timeout=10)
        raise AssertionError("a GET was answered")
    except urllib.error.HTTPError as e:
        assert e.code == 405 and error_of(e.read())["type"] == "MethodNotAllowed"


def test_remote_exception_is_500_with_its_type(door):
    st, out, _ = post(door.svc("svc", "boom"), b'"thing"')
    err = error_of(out)
    assert st == 500 and err["type"] == "RemoteError"
    assert err["remote_type"] == "builtins.KeyError" and "no thing" in err["message"]
    assert "Traceback" not in out.decode()


def test_deadlines(door):
    st, out, _ = post(door.svc("svc", "sleep"), b'"5"', headers={"X-Fuxi-Deadline-Ms": "300"})
    assert st == 504 and error_of(out)["type"] == "TimedOut"
    st, out, _ = post(door.svc("svc", "sleep") + "?timeout_s=0.3", b'"5"')
    assert st == 504
    st, out, _ = post(door.svc("svc", "remaining") + "?timeout_s=7", b"")
    assert st == 200 and 5.0 < float(json.loads(out)) <= 7.0
    for bad in ({"X-Fuxi-Deadline-Ms": "-5"}, {"X-Fuxi-Deadline-Ms": "abc"},
                {"X-Fuxi-Deadline-Ms": str(10 ** 12)}, {"X-Fuxi-Deadline-Ms": "0"}):
        st, out, _ = post(door.svc("svc", "echo"), b'"x"', headers=bad)
        assert st == 400 and "deadline" in error_of(out)["message"], bad
    for q in ("?timeout_s=nan", "?timeout_s=inf", "?timeout_s=-1"):
        st, out, _ = post(door.svc("svc", "echo") + q, b'"x"')
        assert st == 400, q
    st, out, _ = post(door.svc("svc", "echo") + "?timeout_s=1", b'"x"',
                      headers={"X-Fuxi-Deadline-Ms": "1000"})
    assert st == 400 and "once" in error_of(out)["message"]


def test_idempotent_and_backup_headers(door):
    st, out, _ = post(door.svc("svc", "who_idem"), b'"0"',
                      headers={"X-Fuxi-Idempotent": "1", "X-Fuxi-Backup": "20"})
    assert st == 200 and json.loads(out) == "one"
    st, out, _ = post(door.svc("svc", "who_idem") + "?backup=p95&idempotent=true", b'"0"')
    assert st == 200
    for bad in ({"X-Fuxi-Backup": "soon"}, {"X-Fuxi-Backup": "p200"},
                {"X-Fuxi-Idempotent": "maybe"}):
        st, out, _ = post(door.svc("svc", "who_idem"), b'"0"', headers=bad)
        assert st == 400, bad


def test_calls_in_flight_are_bounded(door):
    # calls_max=4: the fifth concurrent call is refused at once, the others complete.
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(post, door.svc("svc", "sleep"), b'"1.5"') for _ in range(8)]
        got = sorted(f.result()[0] for f in futs)
    assert got.count(200) == 4 and got.count(429) == 4, got
    assert door.gw.stats()["refused"] >= 4
    st, out, _ = post(door.svc("svc", "echo"), b'"after"')
    assert st == 200


def test_body_bytes_held_are_bounded(door):
    gw = door.gw
    door.loop.call(lambda: gw._admit(gw.held_bytes_max), 10)  # as if a call held them all
    try:
        st, out, _ = post(door.svc("svc", "echo"), b'"x"')
        assert st == 429 and "HTTP_BODIES_HELD_BYTES_MAX" in error_of(out)["message"]
    finally:
        door.loop.call(lambda: gw._release(gw.held_bytes_max), 10)
    st, out, _ = post(door.svc("svc", "echo"), b'"x"')
    assert st == 200 and gw.stats()["held_bytes"] == 0 and gw.stats()["in_flight"] == 0


def test_bad_limits_are_refused():
    from kuafu.errors import BadRequest

    for kw in ({"body_bytes_max": 0}, {"calls_max": 0},
               {"body_bytes_max": 100, "held_bytes_max": 99}):
        with pytest.raises(BadRequest, match="expected body_bytes_max"):
            HttpGateway(None, **kw)


def test_openapi_description(door):
    with urllib.request.urlopen(f"{door.url}/v1/services/svc/openapi.json", timeout=10) as r:
        doc = json.loads(r.read())
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    assert "/v1/services/svc/echo" in paths and "/v1/services/svc/_private" not in paths
    echo = paths["/v1/services/svc/echo"]["post"]
    assert echo["x-idempotent"] is True
    assert paths["/v1/services/svc/who"]["post"]["x-idempotent"] is False
    assert {"200", "400", "401", "403", "404", "429", "500", "503", "504"} <= set(echo["responses"])
    lag = paths["/v1/services/svc/lag"]["post"]
    assert "straggler" in lag["description"]
    try:
        urllib.request.urlopen(f"{door.url}/v1/services/nosuch/openapi.json", timeout=10)
        raise AssertionError("an unknown service was described")
    except urllib.error.HTTPError as e:
        assert e.code == 404


# ------------------------------------------------------------------ access control


@pytest.fixture(scope="module")
def authed():
    from tests.kuafu.authed import AuthedCluster

    zc = AuthedCluster()
    try:
        zc.bob = zc.token("bob")
        zc.attach("pay", zc.bob, tag="bob")  # bob claims the name: his service
        zc.door = Door(zc.core, zc.loop)
        yield zc
    finally:
        try:
            zc.door.close()
        finally:
            zc.close()


def test_token_required_checked_and_acl_applied(authed):
    zc = authed
    url = zc.door.svc("pay", "who")
    st, out, h = post(url, b"")
    assert st == 401 and "Bearer" in error_of(out)["message"]
    assert h.get("WWW-Authenticate", "").startswith("Bearer")
    for bad in ("Basic Ym9iOnB3", "Bearer", "Bearer " + zc.bob[:-4],
                "Bearer " + zc.bob + "x", "Bearer " + "x" * 4_000):
        st, out, _ = post(url, b"", headers={"Authorization": bad})
        assert st == 401, bad
    # A header over aiohttp's line limit (8190 bytes) is refused before any handler runs.
    st, out, _ = post(url, b"", headers={"Authorization": "Bearer " + "x" * 12_000})
    assert st == 400
    st, out, _ = post(url, b"", headers={"Authorization": "Bearer " + zc.token("mallory")})
    assert st == 403 and error_of(out)["type"] == "Denied"
    st, out, _ = post(url, b"", headers={"Authorization": "Bearer " + zc.bob})
    assert st == 200 and json.loads(out) == "bob"
    # Two Authorization headers (a valid one first): refused, whichever a reader would take.
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.putrequest("POST", u.path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", "0")
        conn.putheader("Authorization", "Bearer " + zc.bob)
        conn.putheader("Authorization", "Bearer x")
        conn.endheaders()
        r = conn.getresponse()
        assert r.status == 400 and "Authorization headers" in error_of(r.read())["message"]
    finally:
        conn.close()
    # A large body with a valid token passes the proxy's pre-authentication bound.
    big = os.urandom(200_000)
    st, out, _ = post(zc.door.svc("pay", "echo"), big, "application/octet-stream",
                      headers={"Authorization": "Bearer " + zc.bob})
    assert st == 200 and out == big
    # The description is a call too: same token rules.
    req = urllib.request.Request(zc.door.url + "/v1/services/pay/openapi.json")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("described without a token")
    except urllib.error.HTTPError as e:
        assert e.code == 401
    req.add_header("Authorization", "Bearer " + zc.bob)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert "/v1/services/pay/who" in json.loads(r.read())["paths"]


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_with_and_without_a_token(authed):
    zc = authed
    st, body = curl(zc.door.svc("pay", "who"), "-X", "POST")
    assert st == 401
    st, body = curl(zc.door.svc("pay", "who"), "-X", "POST",
                    "-H", f"Authorization: Bearer {zc.bob}")
    assert st == 200 and json.loads(body) == "bob"


def test_a_flood_of_idle_connections_is_capped_and_the_door_keeps_serving():
    """Strangers opening sockets and sending nothing: past ``connections_max`` each new one
    is answered 503 and closed; once they go, calls are served again."""
    import socket
    import time

    d = tempfile.mkdtemp(prefix="kgwc-", dir="/tmp")
    lt = LoopThread("test-proxy-cap")
    core = ProxyCore("tgc", uds=os.path.join(d, "p.sock"))
    lt.run(core.start(), 10)
    slt = LoopThread("test-server-cap")
    srv = Server({"svc": Svc("one")})
    slt.run(srv.attach(f"unix://{core.uds}"), 10)
    door = Door(core, lt, connections_max=8)
    host, port = door.url.removeprefix("http://").rsplit(":", 1)
    idle = []
    try:
        for _ in range(8):
            idle.append(socket.create_connection((host, int(port)), timeout=10))
        time.sleep(0.3)  # every one accepted by the loop
        extra = socket.create_connection((host, int(port)), timeout=10)
        got = b""
        while True:
            chunk = extra.recv(4096)
            if not chunk:
                break  # closed by the door
            got += chunk
        extra.close()
        assert got.startswith(b"HTTP/1.1 503") and b"HTTP_CONNECTIONS_MAX" in got, got[:200]
        assert door.gw.stats()["connections_refused"] >= 1
        for s in idle:
            s.close()
        idle.clear()
        deadline = time.time() + 10
        while True:
            st, body, _ = post(door.svc("svc", "who"))
            if st == 200 or time.time() > deadline:
                break
            time.sleep(0.1)
        assert st == 200 and json.loads(body) == "one"
        with pytest.raises(Exception, match="connections_max"):
            HttpGateway(core, connections_max=0)
    finally:
        for s in idle:
            s.close()
        door.close()
        slt.run(srv.stop(0.5), 10)
        slt.stop()
        lt.run(core.stop(), 10)
        lt.stop()
        shutil.rmtree(d, ignore_errors=True)

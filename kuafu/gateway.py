"""The HTTP front door: every service reachable over HTTP at each Kuafu proxy (issue 20 part 3).

    POST /v1/services/<name>/<method>        a call; the body is the message
    GET  /v1/services/<name>/openapi.json    an OpenAPI 3 description of the service's methods
    GET  /v1/health                          "ok" (no authentication)

``HttpGateway`` runs on the proxy's own event loop (aiohttp) and is a Kuafu client of that
proxy over its Unix socket, so an HTTP call takes the same path as any other call: the
proxy verifies the caller's token and the service's ACL, applies the deadline, chooses an
endpoint, retries what certainly did not run and sends backup requests. Nothing here decides
routing or access; it translates.

Bodies (by ``Content-Type``): ``application/json`` -- an object of string values (a map
message) or a string; ``text/plain`` -- a str; ``application/octet-stream`` -- bytes;
``application/vnd.apache.arrow.stream`` -- an Arrow IPC stream (a Table). Replies: a map or
a str as JSON, bytes as octet-stream, a Table as an Arrow stream when the request was Arrow
or ``Accept`` names it, else as a JSON list of rows. Errors: ``{"error": {"type",
"message"}}`` with the status ``kuafu.core.openapi.status_of`` gives.

Per call: ``Authorization: Bearer <token>`` (required when access control is on),
``X-Fuxi-Deadline-Ms`` or ``?timeout_s=`` (default ``CALL_DEADLINE_S``), ``X-Fuxi-Idempotent:
1`` or ``?idempotent=1`` (the proxy may resend it; the server may also declare the method),
``X-Fuxi-Backup: 20`` / ``p95`` or ``?backup=`` (a backup copy of an idempotent call)."""

from __future__ import annotations

import errno
import json
import logging
import math

from aiohttp import web

from kuafu.io.channel import CALL_DEADLINE_S, Channel
from kuafu.core.frame import DEADLINE_MAX_S
from kuafu.core.openapi import ARROW_TYPE, DESCRIBE_METHOD, openapi, status_of
from kuafu.errors import BadRequest, KuafuError, RemoteError

log = logging.getLogger("kuafu.http")

HTTP_BODY_BYTES_MAX = 16 * 1024 * 1024   # a request body; more is 413 before it is read
HTTP_CALLS_IN_FLIGHT_MAX = 1024           # calls at once through one front door; more: 429
HTTP_BODIES_HELD_BYTES_MAX = 256 * 1024 * 1024  # request bodies held by calls in flight; more: 429
HTTP_TARGET_BYTES_MAX = 2048              # path and query; longer: 414
HTTP_CONNECTIONS_MAX = 512                # open connections to one front door; more: 503, closed
HTTP_KEEPALIVE_S = 75.0                   # an idle keep-alive connection is closed after this
HTTP_SHUTDOWN_TIMEOUT_S = 5.0             # calls in flight get this long when it stops
SUPPORTED_TYPES = ("application/json", "text/plain", "application/octet-stream", ARROW_TYPE)


class HttpError(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def error_response(status: int, kind: str, message: str, headers: dict | None = None,
                   extra: dict | None = None) -> web.Response:
    body = {"type": kind, "message": message}
    body.update(extra or {})
    return web.Response(status=status, headers=headers, content_type="application/json",
                        text=json.dumps({"error": body}))


def _kuafu_error_response(e: KuafuError) -> web.Response:
    status = status_of(e.code, str(e))
    headers = None
    extra = None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="fuxi"'}
    elif status in (429, 503):
        headers = {"Retry-After": "1"}
    if isinstance(e, RemoteError):
        extra = {"remote_type": e.remote_type}
        return error_response(status, e.code, e.remote_message, headers, extra)
    return error_response(status, e.code, str(e), headers)


def parse_deadline(headers, query) -> float:
    """The call's timeout in seconds from ``X-Fuxi-Deadline-Ms`` or ``?timeout_s=``."""
    ms, ts = headers.get("X-Fuxi-Deadline-Ms"), query.get("timeout_s")
    if ms is not None and ts is not None:
        raise HttpError(400, "BadRequest", "give the deadline once: X-Fuxi-Deadline-Ms or "
                                           "?timeout_s=, not both")
    try:
        if ms is not None:
            value = int(ms) / 1000.0
        elif ts is not None:
            value = float(ts)
        else:
            return CALL_DEADLINE_S
    except ValueError:
        raise HttpError(400, "BadRequest", f"deadline {ms if ms is not None else ts!r:.40}: "
                                           f"expected X-Fuxi-Deadline-Ms as whole milliseconds "
                                           f"or ?timeout_s= as seconds") from None
    if not math.isfinite(value) or value <= 0 or value > DEADLINE_MAX_S:
        raise HttpError(400, "BadRequest", f"deadline {value:g} s: expected more than 0 and at "
                                           f"most {DEADLINE_MAX_S:g} s (DEADLINE_MAX_S)")
    return value


def parse_flag(headers, query, header: str, param: str) -> bool:
    raw = headers.get(header, query.get(param))
    if raw is None:
        return False
    v = raw.strip().lower()
    if v in ("1", "true", "yes"):
        return True
    if v in ("0", "false", "no", ""):
        return False
    raise HttpError(400, "BadRequest", f"{header} / ?{param}= {raw!r:.40}: expected 1 or 0")


def parse_backup(headers, query):
    raw = headers.get("X-Fuxi-Backup", query.get("backup"))
    if raw is None:
        return None
    raw = raw.strip()
    if raw.startswith("p"):
        return raw  # the client library checks the percentile
    try:
        return float(raw)
    except ValueError:
        raise HttpError(400, "BadRequest", f"X-Fuxi-Backup {raw!r:.40}: expected a delay in "
                                           f"milliseconds or a percentile such as p95") from None


def decode_body(content_type: str, body: bytes):
    """The Kuafu message an HTTP body of ``content_type`` carries."""
    ct = (content_type or "application/octet-stream").lower()
    if ct == "application/json":
        if not body.strip():
            return b""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise HttpError(400, "BadRequest", f"the body is not JSON ({e})") from None
        if isinstance(doc, str):
            return doc
        if isinstance(doc, dict) and all(isinstance(v, str) for v in doc.values()):
            return doc
        what = type(doc).__name__ if not isinstance(doc, dict) else "an object with a " \
            "non-string value"
        raise HttpError(400, "BadRequest", f"a JSON body is an object of string values (a map "
                                           f"message) or a string; got {what}")
    if ct == "text/plain":
        try:
            return body.decode()
        except UnicodeDecodeError as e:
            raise HttpError(400, "BadRequest", f"a text/plain body that is not UTF-8 ({e})") \
                from None
    if ct == "application/octet-stream":
        return body
    if ct == ARROW_TYPE:
        import pyarrow as pa

        try:
            return pa.ipc.open_stream(pa.py_buffer(body)).read_all()
        except (pa.ArrowInvalid, OSError) as e:
            raise HttpError(400, "BadRequest", f"the body is not an Arrow IPC stream ({e})") \
                from None
    raise HttpError(415, "UnsupportedMediaType",
                    f"Content-Type {ct!r:.60}: expected one of {', '.join(SUPPORTED_TYPES)} "
                    f"(curl: -H 'Content-Type: application/json')")


def encode_reply(result, want_arrow: bool) -> web.Response:
    if isinstance(result, dict) or isinstance(result, str):
        return web.Response(content_type="application/json", text=json.dumps(result))
    if isinstance(result, (bytes, bytearray, memoryview)):
        return web.Response(body=bytes(result), content_type="application/octet-stream")
    import pyarrow as pa

    if isinstance(result, pa.Table):
        if want_arrow:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, result.schema) as w:
                w.write_table(result)
            return web.Response(body=sink.getvalue().to_pybytes(), content_type=ARROW_TYPE)
        return web.Response(content_type="application/json",
                            text=json.dumps(result.to_pylist(), default=str))
    raise HttpError(502, "KuafuError", f"the service replied with a {type(result).__name__}")


class HttpGateway:
    """The front door of one proxy: ``core`` is its ``ProxyCore`` (on the running loop);
    ``target`` the proxy's address to call through (default: its Unix socket, else TCP)."""

    def __init__(self, core, *, host: str = "127.0.0.1", port: int = 0,
                 body_bytes_max: int = HTTP_BODY_BYTES_MAX,
                 calls_max: int = HTTP_CALLS_IN_FLIGHT_MAX,
                 held_bytes_max: int = HTTP_BODIES_HELD_BYTES_MAX, target: str | None = None,
                 fallback_free_port: bool = True,
                 connections_max: int = HTTP_CONNECTIONS_MAX):
        if body_bytes_max < 1 or calls_max < 1 or held_bytes_max < body_bytes_max \
                or connections_max < 1:
            raise BadRequest(f"expected body_bytes_max >= 1, calls_max >= 1, held_bytes_max "
                             f">= body_bytes_max and connections_max >= 1; got "
                             f"{body_bytes_max}, {calls_max}, {held_bytes_max}, "
                             f"{connections_max}")
        self.connections_max = int(connections_max)
        self.core, self.host, self.port = core, host, int(port)
        self.body_bytes_max, self.calls_max = int(body_bytes_max), int(calls_max)
        self.held_bytes_max, self.held_bytes = int(held_bytes_max), 0
        self.target = target
        self.fallback_free_port = fallback_free_port
        self.note = ""
        self.in_flight = 0
        self.counters = {"calls": 0, "ok": 0, "errors": 0, "refused": 0,
                         "connections_refused": 0}
        self.channel: Channel | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> str:
        app = web.Application(client_max_size=self.body_bytes_max,
                              middlewares=[self._limits])
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/v1/services/{svc}/openapi.json", self._openapi)
        app.router.add_post("/v1/services/{svc}/{method}", self._call)
        self.runner = web.AppRunner(app, access_log=None, keepalive_timeout=HTTP_KEEPALIVE_S,
                                    shutdown_timeout=HTTP_SHUTDOWN_TIMEOUT_S)
        await self.runner.setup()
        self._cap_connections(self.runner.server)
        try:
            site = web.TCPSite(self.runner, self.host, self.port, backlog=1024)
            await site.start()
        except OSError as e:
            if not (self.port and self.fallback_free_port and e.errno == errno.EADDRINUSE):
                await self.runner.cleanup()
                raise
            # Another proxy on this machine (simulated nodes) holds the fixed port.
            self.note = f"port {self.port} was in use; took a free one"
            site = web.TCPSite(self.runner, self.host, 0, backlog=1024)
            await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self.url

    def _cap_connections(self, server) -> None:
        """At most ``connections_max`` open connections (idle keep-alive ones and strangers
        that never finish a request count too): one more is answered 503 and closed at once,
        so a flood of sockets cannot take the proxy process's file descriptors."""
        made = server.connection_made
        body = json.dumps({"error": {"type": "Overloaded", "message": (
            f"this front door holds {self.connections_max} connections "
            f"(HTTP_CONNECTIONS_MAX); retry later")}}).encode()
        refusal = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                   b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\n\r\n" + body)

        def connection_made(handler, transport) -> None:
            made(handler, transport)
            if len(server.connections) > self.connections_max:
                self.counters["connections_refused"] += 1
                transport.write(refusal)
                transport.close()

        server.connection_made = connection_made  # this Server object's, called per connection

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    def info(self) -> dict:
        out = {"http": self.url}
        if self.note:
            out["http_note"] = self.note
        return out

    def stats(self) -> dict:
        return {"url": self.url, "in_flight": self.in_flight, "held_bytes": self.held_bytes,
                **self.counters}

    def _channel(self) -> Channel:
        if self.channel is None:
            target = self.target or (f"unix://{self.core.uds}" if self.core.uds
                                     else self.core.tcp_address)

            async def resolve():
                return target
            self.channel = Channel(resolve, requests_max=self.calls_max)
        return self.channel

    # ------------------------------------------------------------ requests
    @web.middleware
    async def _limits(self, request: web.Request, handler):
        if len(request.raw_path) > HTTP_TARGET_BYTES_MAX:
            return error_response(414, "TooLarge", f"request target over "
                                                   f"{HTTP_TARGET_BYTES_MAX} bytes "
                                                   f"(HTTP_TARGET_BYTES_MAX)")
        try:
            return await handler(request)
        except HttpError as e:
            return error_response(e.status, e.kind, e.message, e.headers)
        except web.HTTPNotFound:
            return error_response(404, "NotFound", f"no route {request.method} {request.path!r:.80};"
                                                   f" expected POST /v1/services/<name>/<method>"
                                                   f" or GET /v1/services/<name>/openapi.json")
        except web.HTTPMethodNotAllowed:
            return error_response(405, "MethodNotAllowed",
                                  f"{request.method} {request.path!r:.80}: calls are POST, the "
                                  f"OpenAPI description is GET")
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(request.content_length)
        except web.HTTPException:
            raise
        except Exception:  # noqa: BLE001 - logged; the client gets no traceback
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "InternalError", "the front door failed (see the "
                                                        "proxy's log)")

    def _too_large(self, size) -> web.Response:
        return error_response(413, "TooLarge", f"a body of {size if size is not None else 'more'}"
                                               f" bytes; HTTP_BODY_BYTES_MAX is "
                                               f"{self.body_bytes_max}")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    def _token(self, request: web.Request) -> str:
        given = request.headers.getall("Authorization", [])
        if len(given) > 1:  # which one counts would depend on who reads it: neither does
            raise HttpError(400, "BadRequest", f"{len(given)} Authorization headers: expected "
                            f"one, 'Bearer <token>'")
        auth = given[0] if given else None
        if auth is None:
            if self.core.guard is not None:
                raise HttpError(401, "Unauthenticated", "access control is on: send "
                                "'Authorization: Bearer <token>' (after `fuxi login`, the "
                                "token is in $FUXI_HOME/<cluster>/token)",
                                {"WWW-Authenticate": 'Bearer realm="fuxi"'})
            return ""
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpError(401, "Unauthenticated", "the Authorization header must be "
                            "'Bearer <token>'", {"WWW-Authenticate": 'Bearer realm="fuxi"'})
        return token.strip()

    async def _verify(self, token: str) -> None:
        """Refuse a bad token here (401) rather than on the shared connection to the proxy;
        the proxy verifies it again, with the ACL."""
        guard = self.core.guard
        if guard is None:
            return
        from zhongkui.errors import BadCredentials

        try:
            await guard.aidentify(token)
        except BadCredentials as e:
            raise HttpError(401, "Unauthenticated", f"{type(e).__name__}: {e}",
                            {"WWW-Authenticate": 'Bearer realm="fuxi"'}) from None

    def _admit(self, reserve: int) -> None:
        """Room for one more call holding ``reserve`` body bytes, or 429."""
        if self.in_flight >= self.calls_max:
            why = (f"{self.in_flight} calls are in flight through this front door "
                   f"(HTTP_CALLS_IN_FLIGHT_MAX={self.calls_max})")
        elif self.held_bytes + reserve > self.held_bytes_max:
            why = (f"{self.held_bytes} body bytes are held by calls in flight "
                   f"(HTTP_BODIES_HELD_BYTES_MAX={self.held_bytes_max})")
        else:
            self.in_flight += 1
            self.held_bytes += reserve
            self.counters["calls"] += 1
            return
        self.counters["refused"] += 1
        raise HttpError(429, "Overloaded", why + "; retry later", {"Retry-After": "1"})

    def _release(self, reserve: int) -> None:
        self.in_flight -= 1
        self.held_bytes -= reserve

    async def _forward(self, svc: str, method: str, message, timeout_s: float, token: str,
                       idempotent: bool = False, backup=None):
        try:
            return await self._channel().request(svc, method, message, timeout_s, idempotent,
                                                 True, token, backup)
        except KuafuError:
            self.counters["errors"] += 1
            raise

    async def _call(self, request: web.Request) -> web.Response:
        svc, method = request.match_info["svc"], request.match_info["method"]
        size = request.content_length
        if size is not None and size > self.body_bytes_max:
            return self._too_large(size)
        timeout_s = parse_deadline(request.headers, request.query)
        idem = parse_flag(request.headers, request.query, "X-Fuxi-Idempotent", "idempotent")
        backup = parse_backup(request.headers, request.query)
        if method.startswith("_"):
            raise HttpError(404, "NotFound", f"service {svc!r:.80} has no method "
                                               f"{method!r:.80} (names starting with '_' are "
                                               f"never exposed)")
        token = self._token(request)  # before the body is read: strangers send none
        await self._verify(token)
        # A body of unknown length (chunked) may grow to the limit: reserve that much.
        reserve = size if size is not None else self.body_bytes_max
        self._admit(reserve)
        try:
            body = await request.read()
            ct = request.content_type
            message = decode_body(ct, body)
            del body
            want_arrow = ct == ARROW_TYPE or ARROW_TYPE in request.headers.get("Accept", "")
            try:
                result = await self._forward(svc, method, message, timeout_s, token, idem,
                                             backup)
            except KuafuError as e:
                return _kuafu_error_response(e)
        finally:
            self._release(reserve)
        self.counters["ok"] += 1
        return encode_reply(result, want_arrow)

    async def _openapi(self, request: web.Request) -> web.Response:
        svc = request.match_info["svc"]
        timeout_s = parse_deadline(request.headers, request.query)
        token = self._token(request)
        await self._verify(token)
        self._admit(0)
        try:
            raw = await self._forward(svc, DESCRIBE_METHOD, b"", timeout_s, token, True)
            description = json.loads(raw)
        except KuafuError as e:
            return _kuafu_error_response(e)
        except ValueError:
            raise HttpError(502, "KuafuError", f"service {svc!r} sent a description that is "
                                               f"not JSON") from None
        finally:
            self._release(0)
        return web.Response(content_type="application/json",
                            text=json.dumps(openapi(description, self.url)))

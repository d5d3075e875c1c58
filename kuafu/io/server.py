"""Kuafu servers: expose an object's methods under a service name.

A ``Server`` holds services and answers REQUEST frames on any connection it is given. It
either listens itself (``serve``: a standalone server, no Ray, no proxy) or *attaches* to a
proxy (``attach``): it connects out to the proxy, registers each service with the proxy's
control service ``kuafu``, and then receives requests on that connection. The proxy
publishes each registered service as an endpoint in Nuwa and removes it when the server
unregisters or its connection goes away.

Methods take one message (``bytes``, ``str``, ``dict[str, str]`` or a ``pyarrow.Table``) and
return one (``None`` is sent as empty bytes). ``async def`` methods run on the server's event
loop; plain methods run in a thread pool of ``max_concurrency`` threads. A service runs at most
``max_concurrency`` requests at once and queues at most ``queue_max`` more; beyond that callers
get ``Overloaded``. ``kuafu.context()`` inside a method gives the deadline, the caller's
credentials and the names involved; a client used inside a method inherits the deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import inspect
import itertools
import os
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from kuafu import frame as F
from kuafu.core.frame import timeout_from_header
from kuafu.core.openapi import DESCRIBE_METHOD, describe
from kuafu.core.routing import (CONTROL_SERVICE, check_service_name, check_share,
                                check_version)
from kuafu.io.addresses import open_connection
from kuafu.io.conn import (HELLO_TIMEOUT_S, IDLE_TIMEOUT_S, PARTIAL_FRAME_TIMEOUT_S,
                           PING_INTERVAL_S, Conn, stale_reason)
from kuafu.io.loops import LoopThread
from kuafu.errors import (BadRequest, FrameError, KuafuError, Overloaded, RemoteError, TimedOut,
                          Unavailable, error_from_header)

MAX_CONCURRENCY_DEFAULT = 16   # requests one service runs at once
QUEUE_MAX_DEFAULT = 1024       # requests queued behind them before callers get Overloaded
CONTROL_TIMEOUT_S = 10.0       # a register/unregister round trip to the proxy
DRAIN_GRACE_S = 10.0           # how long stop() lets requests in flight finish
SERVER_SWEEP_PERIOD_S = 1.0
REATTACH_BACKOFF_S = (0.1, 2.0)  # first and longest pause between attempts to re-attach
TRACEBACK_CHARS_MAX = 8000
LATENCIES_KEPT = 1024          # recent call durations kept per service, for percentiles
SERVER_CONNECTIONS_MAX = 16_384       # connections a standalone server accepts at once; more are closed


def method(fn=None, *, idempotent: bool | None = None, name: str | None = None):
    """Mark a method as exposed (``@kuafu.method``). ``idempotent=True`` lets Kuafu retry a
    call on another endpoint when the first may have run; only say so when running it twice
    is harmless. Undeclared (None), a method is not idempotent, but a caller may say a call
    of it is (``idempotent=True`` at the client); ``idempotent=False`` says it never is: no
    proxy or client resends a call of it that may have run, whatever the caller says."""
    if idempotent is not None and not isinstance(idempotent, bool):
        raise TypeError(f"idempotent={idempotent!r}: expected True, False or None")

    def mark(f):
        f.__kuafu__ = {"idempotent": idempotent, "name": name or f.__name__}
        return f

    return mark(fn) if fn is not None else mark


@dataclass
class Context:
    service: str
    method: str
    deadline: float            # time.monotonic() by which the caller wants the answer
    credentials: object = None  # the caller's token, when it reached us without a proxy
    request_id: int = 0
    caller: str | None = None  # the caller's user name as the proxy verified it (Zhongkui)

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


_context: contextvars.ContextVar[Context | None] = contextvars.ContextVar("kuafu_context",
                                                                          default=None)


def context() -> Context | None:
    """The request being served by this method call, or None outside one."""
    return _context.get()


@dataclass
class Service:
    name: str
    obj: object
    methods: dict            # wire name -> bound callable
    idempotent: set
    max_concurrency: int
    queue_max: int
    running: int = 0
    queued: int = 0
    served: int = 0
    failed: int = 0
    busy_s: float = 0.0      # total time spent in calls (for the mean)
    latencies: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=LATENCIES_KEPT))
    endpoint: str = ""       # the name the proxy published it under
    version: str = ""        # the version it registers with (routing groups by it)
    share: float | None = None  # a canary's percent of the service's calls (None: the rest)
    never: set = field(default_factory=set)  # methods declared idempotent=False
    sem: asyncio.Semaphore | None = None
    executor: ThreadPoolExecutor | None = None

    @classmethod
    def build(cls, name: str, obj, max_concurrency: int, queue_max: int) -> "Service":
        check_service_name(name)
        if name == CONTROL_SERVICE:
            raise BadRequest(f"service name {name!r} is reserved for the proxy's control service")
        if max_concurrency < 1 or queue_max < 0:
            raise BadRequest(f"max_concurrency >= 1 and queue_max >= 0 expected; got "
                             f"{max_concurrency}, {queue_max}")
        methods, idem, never = {}, set(), set()
        if isinstance(obj, dict):  # {"method": callable}
            for k, fn in obj.items():
                if not callable(fn):
                    raise BadRequest(f"service {name!r}: {k!r} is not callable")
                methods[k] = fn
                declared = getattr(fn, "__kuafu__", {}).get("idempotent")
                if declared is not None:
                    (idem if declared else never).add(k)
        else:
            members = inspect.getmembers(type(obj), callable)
            marked = [(n, f) for n, f in members if hasattr(f, "__kuafu__")]
            chosen = marked or [(n, f) for n, f in members if not n.startswith("_")]
            for n, f in chosen:
                info = getattr(f, "__kuafu__", {})
                wire = info.get("name", n)
                methods[wire] = getattr(obj, n)
                if info.get("idempotent") is not None:
                    (idem if info["idempotent"] else never).add(wire)
        if not methods:
            raise BadRequest(f"service {name!r} exposes no methods; give it public methods or "
                             f"mark some with @kuafu.method")
        svc = cls(name, obj, methods, idem, max_concurrency, queue_max)
        svc.never = never
        return svc


def _result_frames(rid: int, result) -> list:
    if result is None:
        result = b""
    try:
        return F.encode_message(F.RESPONSE, {"id": rid}, result)
    except FrameError as e:
        raise RemoteError(f"the method's return value cannot be sent: {e}", "kuafu.BadResult",
                          "") from None


class Server:
    """Services and the request loop; see the module docstring."""

    def __init__(self, services: dict | None = None, *, max_concurrency: int =
                 MAX_CONCURRENCY_DEFAULT, queue_max: int = QUEUE_MAX_DEFAULT):
        self.services: dict[str, Service] = {}
        self.max_concurrency, self.queue_max = max_concurrency, queue_max
        self.conns: set[Conn] = set()
        self.tasks: dict[tuple, asyncio.Task] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.proxy: Conn | None = None
        self._control_ids = itertools.count(1)
        self._control_waits: dict[int, asyncio.Future] = {}
        self._listeners: list = []
        self._sweeper: asyncio.Task | None = None
        self._pinger: asyncio.Task | None = None
        self._reattacher: asyncio.Task | None = None
        self.proxy_address: str | None = None
        self.credentials: str | None = None  # the token the server attaches with (Zhongkui)
        self.reattached = 0
        self.idle_timeout_s = IDLE_TIMEOUT_S
        self.stopping = False
        for name, obj in (services or {}).items():
            self.add(name, obj)

    def add(self, name: str, obj, *, max_concurrency: int | None = None,
            queue_max: int | None = None, version: str = "",
            share: float | None = None) -> Service:
        """``version`` and ``share``: registered with the proxy; an endpoint with a share
        (a canary) gets that percent of the service's calls, the others share the rest."""
        if name in self.services:
            raise BadRequest(f"service {name!r} is already served here")
        svc = Service.build(name, obj, max_concurrency or self.max_concurrency,
                            self.queue_max if queue_max is None else queue_max)
        svc.version, svc.share = check_version(version), check_share(share)
        self.services[name] = svc
        return svc

    # ------------------------------------------------------------ connections
    def _protocol(self) -> Conn:
        return Conn(self, role="server", assemble=True)

    def on_open(self, conn: Conn) -> None:
        if len(self.conns) >= SERVER_CONNECTIONS_MAX and conn is not self.proxy:
            conn.reject(Overloaded(f"this server holds {len(self.conns)} connections "
                                   f"(SERVER_CONNECTIONS_MAX)"))
            return
        self.conns.add(conn)
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        self._ensure_sweeper()

    def on_lost(self, conn: Conn, exc) -> None:
        self.conns.discard(conn)
        for key in [k for k in self.tasks if k[0] is conn]:
            self.tasks.pop(key).cancel()  # nobody is left to answer
        if conn is self.proxy:
            self.proxy = None
            for fut in self._control_waits.values():
                if not fut.done():
                    fut.set_exception(Unavailable("the connection to the proxy was lost"))
            for svc in self.services.values():
                svc.endpoint = ""
            if not self.stopping and self.proxy_address:
                self._reattacher = self.loop.create_task(self._reattach())

    def on_frame(self, conn: Conn, f: F.Frame) -> None:
        if f.kind in (F.REQUEST, F.PIECE):
            try:
                whole = conn.asm.add(f)
            except FrameError as e:
                conn.reject(e)
                return
            if whole is not None:
                self._start(conn, whole)
        elif f.kind == F.CANCEL:
            t = self.tasks.pop((conn, f.request_id), None)
            if t is not None:
                t.cancel()
            conn.asm.drop(f.request_id)
        elif f.kind in (F.RESPONSE, F.ERROR):
            fut = self._control_waits.pop(f.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(f)
            elif f.request_id == 0 and f.kind == F.ERROR:
                conn.close()  # the peer refused our bytes

    # ------------------------------------------------------------ requests
    def _start(self, conn: Conn, f: F.Frame) -> None:
        h = f.header
        rid = f.request_id
        try:
            svc = self.services.get(h.get("svc"))
            if svc is None:
                raise BadRequest(f"no service {h.get('svc')!r:.80} here; this server offers "
                                 f"{sorted(self.services)}")
            fn = svc.methods.get(h.get("m"))
            if fn is None and h.get("m") == DESCRIBE_METHOD:  # the HTTP front door's OpenAPI
                conn.write_frames(F.encode_message(F.RESPONSE, {"id": rid}, describe(
                    svc.name, svc.methods, svc.idempotent)))
                return
            if fn is None:
                raise BadRequest(f"service {svc.name!r} has no method {h.get('m')!r:.80}; it "
                                 f"offers {sorted(svc.methods)}")
            if self.stopping:
                raise Unavailable(f"service {svc.name!r} is shutting down")
            if svc.running + svc.queued >= svc.max_concurrency + svc.queue_max:
                raise Overloaded(f"service {svc.name!r} runs {svc.running} and queues "
                                 f"{svc.queued} requests (max_concurrency="
                                 f"{svc.max_concurrency}, queue_max={svc.queue_max})")
            timeout_s = timeout_from_header(h.get("dl"))
            if timeout_s <= 0:
                raise TimedOut(f"the request's deadline had passed when it reached "
                               f"{svc.name}.{h.get('m')}; not run")
            message = F.unpack_body(h.get("type", "bytes"), f.body)
        except KuafuError as e:
            conn.write(F.error_frame(rid, e))
            return
        caller = h.get("caller") if conn.attrs.get("via_proxy") else None
        ctx = Context(svc.name, h["m"], time.monotonic() + timeout_s, h.get("cred"), rid,
                      caller if isinstance(caller, str) else None)
        svc.queued += 1
        task = self.loop.create_task(self._run(conn, rid, svc, fn, message, ctx))
        self.tasks[(conn, rid)] = task

    async def _run(self, conn: Conn, rid: int, svc: Service, fn, message, ctx: Context) -> None:
        if svc.sem is None:
            svc.sem = asyncio.Semaphore(svc.max_concurrency)
        started = False
        t0 = time.monotonic()
        try:
            async with svc.sem:
                svc.queued -= 1
                started = True
                svc.running += 1
                try:
                    if ctx.remaining_s() <= 0:
                        raise TimedOut(f"the deadline passed while the request waited for "
                                       f"{svc.name}.{ctx.method}; not run")
                    token = _context.set(ctx)
                    try:
                        if inspect.iscoroutinefunction(fn):
                            result = await fn(message)
                        else:
                            if svc.executor is None:
                                svc.executor = ThreadPoolExecutor(
                                    svc.max_concurrency, thread_name_prefix=f"kuafu-{svc.name}")
                            call = functools.partial(contextvars.copy_context().run, fn, message)
                            result = await self.loop.run_in_executor(svc.executor, call)
                            if inspect.isawaitable(result):
                                result = await result
                    finally:
                        _context.reset(token)
                    frames = _result_frames(rid, result)
                    svc.served += 1
                finally:
                    svc.running -= 1
        except asyncio.CancelledError:
            if not started:
                svc.queued -= 1
            svc.failed += 1
            return  # cancelled by the caller or the connection went away: nobody to answer
        except KuafuError as e:
            svc.failed += 1
            frames = [F.error_frame(rid, e)]
        except Exception as e:  # noqa: BLE001 - the method's own failure goes to the caller
            svc.failed += 1
            tb = traceback.format_exc()[-TRACEBACK_CHARS_MAX:]
            frames = [F.error_frame(rid, RemoteError(str(e)[:4000],
                                                    f"{type(e).__module__}.{type(e).__qualname__}",
                                                    tb))]
        self.tasks.pop((conn, rid), None)
        took = time.monotonic() - t0
        svc.busy_s += took
        svc.latencies.append(took)
        conn.write_frames(frames)

    # ------------------------------------------------------------ sweeping idle connections
    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SERVER_SWEEP_PERIOD_S)
            now = self.loop.time()
            for conn in list(self.conns):
                if conn is self.proxy:
                    continue  # our own link; the proxy pings it
                if any(k[0] is conn for k in self.tasks):
                    continue
                why = stale_reason(conn, now, self.idle_timeout_s, HELLO_TIMEOUT_S,
                                   PARTIAL_FRAME_TIMEOUT_S)
                if why:
                    conn.close()

    # ------------------------------------------------------------ listening (standalone)
    async def listen(self, host: str = "127.0.0.1", port: int = 0,
                     uds: str | None = None) -> list[str]:
        """Accept clients directly; returns the addresses (``tcp://h:p``, ``unix://path``)."""
        self.loop = asyncio.get_running_loop()
        out = []
        if port is not None:
            srv = await self.loop.create_server(self._protocol, host, port)
            self._listeners.append(srv)
            h, p = srv.sockets[0].getsockname()[:2]
            out.append(f"tcp://{h}:{p}")
        if uds:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(uds)
            srv = await self.loop.create_unix_server(self._protocol, uds)
            self._listeners.append(srv)
            out.append(f"unix://{uds}")
        return out

    # ------------------------------------------------------------ attaching to a proxy
    async def attach(self, address: str, timeout_s: float = CONTROL_TIMEOUT_S) -> dict:
        """Connect to a proxy (``unix://path`` or ``tcp://host:port``) and register every
        service; returns {service: endpoint name}."""
        self.loop = asyncio.get_running_loop()
        _, conn = await open_connection(address, self._protocol, timeout_s)
        conn.attrs["via_proxy"] = True  # requests on it were authenticated by the proxy
        self.proxy = conn
        self.proxy_address = address
        out = {}
        for name in list(self.services):
            out[name] = await self.register(name, timeout_s)
        if self._pinger is None or self._pinger.done():
            self._pinger = self.loop.create_task(self._ping_proxy())
        return out

    async def _reattach(self) -> None:
        """The proxy went away (restarted, say): attach again and re-register, with backoff,
        until it works or the server stops."""
        pause = REATTACH_BACKOFF_S[0]
        while not self.stopping:
            await asyncio.sleep(pause)
            if self.stopping:
                return
            try:
                await self.attach(self.proxy_address)
                self.reattached += 1
                return
            except KuafuError:
                if self.proxy is not None:
                    self.proxy.close()
                    self.proxy = None
                pause = min(pause * 2, REATTACH_BACKOFF_S[1])

    async def _ping_proxy(self) -> None:
        while not self.stopping:
            await asyncio.sleep(PING_INTERVAL_S)
            if self.proxy is not None and self.loop.time() - self.proxy.last_tx > PING_INTERVAL_S / 2:
                self.proxy.write(F.encode(F.PING, {"id": 0}))

    async def _control(self, method: str, message: dict, timeout_s: float) -> F.Frame:
        if self.proxy is None or self.proxy.closed:
            raise Unavailable("not attached to a proxy")
        rid = next(self._control_ids)
        fut = self.loop.create_future()
        self._control_waits[rid] = fut
        header = {"id": rid, "svc": CONTROL_SERVICE, "m": method, "dl": int(timeout_s * 1000)}
        cred = self.credentials
        if cred is None:
            from zhongkui import creds

            cred = creds.token()
        if cred:
            header["cred"] = cred
        self.proxy.write_frames(F.encode_message(F.REQUEST, header, message))
        try:
            f = await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            raise TimedOut(f"the proxy did not answer {method} within {timeout_s:g}s") from None
        finally:
            self._control_waits.pop(rid, None)
        if f.kind == F.ERROR:
            raise error_from_header(f.header)
        return f

    async def register(self, name: str, timeout_s: float = CONTROL_TIMEOUT_S) -> str:
        svc = self.services[name]
        msg = {"service": name, "idempotent": ",".join(sorted(svc.idempotent))}
        if svc.never:
            msg["never"] = ",".join(sorted(svc.never))
        if svc.version:
            msg["version"] = svc.version
        if svc.share is not None:
            msg["share"] = repr(svc.share)
        f = await self._control("register", msg, timeout_s)
        svc.endpoint = F.unpack_body(f.header.get("type", "map"), f.body)["endpoint"]
        return svc.endpoint

    async def unregister(self, name: str, timeout_s: float = CONTROL_TIMEOUT_S) -> None:
        await self._control("unregister", {"service": name}, timeout_s)
        self.services[name].endpoint = ""

    # ------------------------------------------------------------ stopping
    async def stop(self, grace_s: float = DRAIN_GRACE_S) -> None:
        """Unregister (no new calls are routed here), let calls in flight finish for up to
        ``grace_s``, then close every connection."""
        if self.proxy is not None:
            for name, svc in self.services.items():
                if svc.endpoint:
                    with contextlib.suppress(KuafuError):
                        await self.unregister(name, min(grace_s, CONTROL_TIMEOUT_S) or 1.0)
        self.stopping = True
        for srv in self._listeners:
            srv.close()
        deadline = time.monotonic() + grace_s
        while self.tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.conns):
            conn.close()
        for t in (self._sweeper, self._pinger, self._reattacher):
            if t is not None:
                t.cancel()
        for svc in self.services.values():
            if svc.executor is not None:
                svc.executor.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict:
        """Per service: running, queued, served and failed calls, the seconds spent in calls
        (queued or running, summed over finished ones), and the p50/p99 latency (ms)
        of the last LATENCIES_KEPT calls."""
        out = {}
        for name, s in self.services.items():
            lat = sorted(s.latencies)
            out[name] = {"running": s.running, "queued": s.queued, "served": s.served,
                         "failed": s.failed, "endpoint": s.endpoint,
                         "busy_s": round(s.busy_s, 6),  # time in calls: the autoscaler's mean
                         "p50_ms": round(lat[len(lat) // 2] * 1e3, 3) if lat else None,
                         "p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3, 3) if lat else None}
        return out


# ------------------------------------------------------------------ blocking wrappers

class ServerHandle:
    """A Server running on its own event-loop thread (for programs that are not asyncio)."""

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop, thread: threading.Thread,
                 addresses: list[str], endpoints: dict):
        self.server, self.loop, self.thread = server, loop, thread
        self.addresses, self.endpoints = addresses, endpoints

    @property
    def address(self) -> str:
        return self.addresses[0] if self.addresses else ""

    def stats(self) -> dict:
        return asyncio.run_coroutine_threadsafe(self._stats(), self.loop).result(10)

    async def _stats(self):
        return self.server.stats()

    def stop(self, grace_s: float = DRAIN_GRACE_S) -> None:
        if not self.thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace_s), self.loop).result(
                grace_s + CONTROL_TIMEOUT_S + 5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _run_in_thread(setup) -> ServerHandle:
    lt = LoopThread("kuafu-server")
    try:
        server, addresses, endpoints = lt.run(setup(), CONTROL_TIMEOUT_S + 5)
    except BaseException:
        lt.stop()
        raise
    return ServerHandle(server, lt.loop, lt.thread, addresses, endpoints)


def serve(services: dict, host: str = "127.0.0.1", port: int = 0, uds: str | None = None,
          **kw) -> ServerHandle:
    """A standalone server (no proxy, no Ray) on a background thread: ``services`` maps a
    service name to an object (its public methods, or those marked ``@kuafu.method``) or to
    a dict of callables. Clients call it at ``handle.address`` (``tcp://host:port``)."""

    async def setup():
        server = Server(services, **kw)
        return server, await server.listen(host, port, uds), {}

    return _run_in_thread(setup)


def attach(services: dict, proxy: str, **kw) -> ServerHandle:
    """Serve ``services`` through a proxy (``unix://path`` or ``tcp://host:port``) on a
    background thread; the proxy publishes them in Nuwa. ``handle.stop()`` unregisters, lets
    calls in flight finish and detaches."""

    async def setup():
        server = Server(services, **kw)
        return server, [], await server.attach(proxy)

    return _run_in_thread(setup)

"""Kuafu clients: call a service by URI.

    tcp://host:port[/service]     a proxy or a standalone server, directly
    unix:///path/to/socket        a proxy's Unix socket (processes on its node)
    nuwa://<cluster>/<service>    a service published in the cluster's Nuwa; calls go to the
                                  local proxy, which resolves the service with a watch and
                                  balances across its endpoints

Three ways to call, over one multiplexed connection per client:

* ``client.call_async(method, message)`` returns a ``Handle`` at once;
  ``handle.result(timeout_s)`` receives the reply (the seed's asynchronous call);
* ``client.call(method, message)`` waits for it (the synchronous call wraps the async one);
* ``await aclient.acall(method, message)`` in asyncio programs (``kuafu.aconnect``).

Every call has a deadline (``timeout_s``, default ``CALL_DEADLINE_S``), sent with the request and
inherited inside a Kuafu method. A full flow-control window makes the caller wait (bounded by
its deadline) or, with ``wait=False``, raises ``Overloaded``. A call that certainly did not
reach a server is retried (``UNAVAILABLE_RETRIES_MAX``); one that may have run is retried only
when declared idempotent (``idempotent=True`` here, or ``@kuafu.method(idempotent=True)`` on
the server)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import threading

from kuafu import deploy
from kuafu import frame as F
from kuafu.core import flow
from kuafu.io.addresses import KUAFU_CONNECT_TIMEOUT_S, open_connection, parse_uri
from kuafu.io.conn import PING_INTERVAL_S, Conn
from kuafu.io.loops import LoopThread
from kuafu.errors import (BadRequest, FrameError, TimedOut, Unavailable, UnavailableInFlight,
                          error_from_header)
from kuafu.io.server import context

CALL_DEADLINE_S = 30.0          # a call's deadline unless the caller gives one
UNAVAILABLE_RETRIES_MAX = 3    # resends of a call that certainly did not run
RESEND_BACKOFF_S = (0.05, 0.1, 0.2)


class _Pending:
    __slots__ = ("fut", "nbytes", "timer", "sent", "conn")

    def __init__(self, fut, nbytes):
        self.fut, self.nbytes, self.timer, self.sent, self.conn = fut, nbytes, None, False, None


class Channel:
    """One multiplexed connection (reconnected on demand) on one event loop."""

    def __init__(self, resolve, *, requests_max: int = flow.REQUESTS_IN_FLIGHT_MAX,
                 bytes_max: int = flow.BYTES_IN_FLIGHT_MAX):
        self.resolve = resolve  # async () -> "tcp://..." or "unix://..."
        self.loop = asyncio.get_running_loop()
        self.conn: Conn | None = None
        self._connecting: asyncio.Future | None = None
        self.ids = itertools.count(1)
        self.pending: dict[int, _Pending] = {}
        self.waiters = flow.Waiters(flow.Window(requests_max, bytes_max))
        self.closed = False
        self._ping = None
        self.address = None

    # ------------------------------------------------------------ connection
    async def _get_conn(self, deadline: float) -> Conn:
        while True:
            if self.closed:
                raise Unavailable("the client is closed")
            c = self.conn
            if c is not None and not c.closed:
                return c
            if self._connecting is None:
                self._connecting = self.loop.create_task(self._connect(deadline))
            fut = self._connecting
            try:
                await asyncio.shield(fut)
            finally:
                if fut.done() and self._connecting is fut:
                    self._connecting = None

    async def _connect(self, deadline: float) -> None:
        address = await self.resolve()
        timeout = min(KUAFU_CONNECT_TIMEOUT_S, max(0.01, deadline - self.loop.time()))
        _, conn = await open_connection(address, lambda: Conn(self, role="client",
                                                              assemble=True), timeout)
        self.address = address
        self.conn = conn
        if self._ping is None:
            self._ping = self.loop.call_later(PING_INTERVAL_S, self._keepalive)

    def _keepalive(self) -> None:
        self._ping = None
        c = self.conn
        if self.closed or c is None or c.closed:
            return
        if self.loop.time() - c.last_tx >= PING_INTERVAL_S / 2:
            c.write(F.encode(F.PING, {"id": 0}))
        self._ping = self.loop.call_later(PING_INTERVAL_S, self._keepalive)

    def on_frame(self, conn: Conn, f: F.Frame) -> None:
        p = self.pending.get(f.request_id)
        if p is None:
            if f.request_id == 0 and f.kind == F.ERROR:
                conn.close()  # the peer refused our bytes; pending calls fail in on_lost
            return
        try:
            whole = conn.asm.add(f)
        except FrameError as e:
            conn.reject(e)
            return
        if whole is not None and not p.fut.done():
            p.fut.set_result(whole)

    def on_lost(self, conn: Conn, exc) -> None:
        if self.conn is conn:
            self.conn = None
        for p in list(self.pending.values()):
            if p.conn is conn and not p.fut.done():
                p.fut.set_exception(UnavailableInFlight(
                    f"the connection to {self.address} was lost"
                    f"{': ' + str(exc) if exc else ''} with the call in flight; it may have run"))

    # ------------------------------------------------------------ calls
    async def request(self, service: str, method: str, message, timeout_s: float | None,
                      idempotent: bool = False, wait: bool = True, credentials=None,
                      backup: float | str | None = None):
        if not isinstance(method, str) or not method:
            raise BadRequest(f"method {method!r:.80}: expected a non-empty str")
        timeout_s = CALL_DEADLINE_S if timeout_s is None else float(timeout_s)
        ctx = context()
        if ctx is not None:  # inside a Kuafu method: never outlive the caller's deadline
            timeout_s = min(timeout_s, ctx.remaining_s())
            if credentials is None:
                credentials = ctx.credentials
        if credentials is None:  # this process's token (Zhongkui), if it has one
            from zhongkui import creds

            credentials = creds.token() or None
        if timeout_s <= 0:
            raise TimedOut("the deadline had already passed; not sent")
        bk = _backup_header(backup)
        btype, body = F.pack_body(message)  # bad messages fail here, before anything is sent
        deadline = self.loop.time() + timeout_s
        attempt = 0
        while True:
            try:
                return await self._once(service, method, btype, body, deadline, idempotent,
                                        wait, credentials, bk)
            except Unavailable as e:
                # A call that may have run goes again only when the caller said it is
                # idempotent and the server did not declare its method never so.
                retry = not e.maybe_executed or (idempotent and not e.no_resend)
                if not retry or attempt >= UNAVAILABLE_RETRIES_MAX:
                    raise
                pause = RESEND_BACKOFF_S[min(attempt, len(RESEND_BACKOFF_S) - 1)]
                if self.loop.time() + pause >= deadline:
                    raise
                attempt += 1
                await asyncio.sleep(pause)

    async def _once(self, service, method, btype, body, deadline, idempotent, wait, credentials,
                    bk=None):
        conn = await self._get_conn(deadline)
        rid = next(self.ids)
        nbytes = memoryview(body).nbytes
        fut = self.loop.create_future()
        p = _Pending(fut, nbytes)
        self.pending[rid] = p
        p.timer = self.loop.call_at(deadline, self._expire, rid)
        admitted = False
        try:
            if not wait:
                self.waiters.window.acquire_or_raise(nbytes)
                admitted = True
            elif self.waiters.arrive(fut, nbytes):
                admitted = True
            else:
                try:
                    await fut  # set (to None) when admitted, or to TimedOut by the timer
                except BaseException:
                    if fut.done() and not fut.cancelled() and fut.exception() is None:
                        admitted = True  # granted just before we gave up: returned below
                    else:
                        self._leave(fut)
                    raise
                admitted = True
                fut = p.fut = self.loop.create_future()
            if conn.closed:
                conn = await self._get_conn(deadline)
            header = {"id": rid, "svc": service, "m": method, "type": btype,
                      "dl": max(1, int((deadline - self.loop.time()) * 1000))}
            if idempotent:
                header["idem"] = 1
            if not wait:
                header["nw"] = 1  # the proxy refuses rather than queues it, too
            if bk is not None:
                header["bk"] = bk
            if credentials is not None:
                header["cred"] = credentials
            conn.write_frames(F.split_body(F.REQUEST, header, body))
            p.sent, p.conn = True, conn
            if conn.write_paused:  # a peer that stops reading cannot hold us past the deadline
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(conn.drained(), max(0.0, deadline - self.loop.time()))
            f = await fut
        except asyncio.CancelledError:
            if p.sent and not conn.closed:
                conn.write(F.encode(F.CANCEL, {"id": rid}))
            raise
        finally:
            del self.pending[rid]
            p.timer.cancel()
            if p.conn is not None:
                p.conn.asm.drop(rid)
            if admitted:
                for token in self.waiters.release(nbytes):
                    if not token.done():
                        token.set_result(None)
        if f.kind == F.ERROR:
            raise error_from_header(f.header)
        return F.unpack_body(f.header.get("type", "bytes"), f.body)

    def _leave(self, token) -> None:
        _, admitted = self.waiters.leave(token)
        for t in admitted:
            if not t.done():
                t.set_result(None)

    def _expire(self, rid: int) -> None:
        p = self.pending.get(rid)
        if p is None or p.fut.done():
            return
        if p.sent:
            if p.conn is not None and not p.conn.closed:
                p.conn.write(F.encode(F.CANCEL, {"id": rid}))
            p.fut.set_exception(TimedOut(f"no reply by the deadline (request {rid} to "
                                         f"{self.address}); it may have run"))
        else:
            p.fut.set_exception(TimedOut("the deadline passed while the call waited for "
                                         "room in the flow-control window; not sent"))

    async def close(self) -> None:
        self.closed = True
        if self._ping is not None:
            self._ping.cancel()
        if self.conn is not None:
            self.conn.close()

    def stats(self) -> dict:
        w = self.waiters.window
        return {"in_flight": w.requests, "bytes_in_flight": w.bytes,
                "waiting": len(self.waiters.queue), "address": self.address}


# ------------------------------------------------------------------ resolving addresses

def _backup_header(backup) -> dict | None:
    """``backup``: a delay in milliseconds (a number) or a latency percentile ("p95")."""
    if backup is None:
        return None
    if isinstance(backup, str) and backup.startswith("p"):
        try:
            p = float(backup[1:])
        except ValueError:
            p = -1.0
        if 0 < p < 100:
            return {"p": p}
    elif isinstance(backup, (int, float)) and not isinstance(backup, bool) and 0 <= backup < 3.6e6:
        return {"ms": float(backup)}
    raise BadRequest(f"backup={backup!r}: expected a delay in milliseconds (0..3.6e6) or a "
                     f"latency percentile such as 'p95'")


def _resolver(uri: str, proxy: str | None, nuwa: list | None = None):
    scheme, where, _ = parse_uri(uri)
    if scheme in ("tcp", "unix"):
        address = f"tcp://{where}" if scheme == "tcp" else f"unix://{where}"

        async def fixed():
            return address
        return fixed
    cluster = where

    async def local_proxy():
        if proxy:
            return proxy
        env = os.environ.get("KUAFU_PROXY")
        if env:
            return env
        loop = asyncio.get_running_loop()
        if nuwa:
            return await loop.run_in_executor(None, deploy.proxy_from_nuwa, nuwa)
        return await loop.run_in_executor(None, find_proxy, cluster)
    return local_proxy


def find_proxy(cluster: str) -> str:
    """The address of a Kuafu proxy for ``cluster``: this node's Unix socket inside Ray; from
    outside Ray, a proxy listed in the cluster's Nuwa (its Unix socket when it is on this
    machine)."""
    return deploy.find_proxy(cluster)


class AsyncClient:
    """A client whose connection lives on the running event loop (``kuafu.aconnect``).

    ``proxy`` names the proxy to use for ``nuwa://`` (default: this node's, found through Ray
    or the cluster's record); ``nuwa`` gives the Nuwa addresses to find one in instead."""

    def __init__(self, uri: str, *, service: str | None = None, timeout_s: float = CALL_DEADLINE_S,
                 proxy: str | None = None, nuwa: list | None = None, credentials=None,
                 **window):
        _, _, svc = parse_uri(uri)
        self.uri = uri
        self.service = service or svc
        self.timeout_s = timeout_s
        if credentials is None:
            scheme, where, _ = parse_uri(uri)
            if scheme == "nuwa":  # the token the user signed in to that cluster with
                from zhongkui import creds

                credentials = creds.token(where) or None
        self.credentials = credentials
        self.channel = Channel(_resolver(uri, proxy, nuwa), **window)

    async def acall(self, method: str, message=b"", *, service: str | None = None,
                    timeout_s: float | None = None, idempotent: bool = False,
                    wait: bool = True, backup: float | str | None = None):
        """``backup``: for an idempotent call, have the proxy send a second copy to another
        endpoint when no reply came within this many milliseconds, or within the service's
        recent latency percentile ("p95"); the first reply wins."""
        svc = service or self.service
        if not svc:
            raise BadRequest(f"no service named: give one in the address ({self.uri}/<service>)"
                             f" or as service=")
        return await self.channel.request(svc, method, message,
                                          self.timeout_s if timeout_s is None else timeout_s,
                                          idempotent, wait, self.credentials, backup)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


_bg_lock = threading.Lock()
_bg = None  # the LoopThread of blocking clients


def _background_loop() -> asyncio.AbstractEventLoop:
    """One event-loop thread per process carries every blocking client's connections."""
    global _bg
    with _bg_lock:
        if _bg is None or not _bg.alive():
            _bg = LoopThread("kuafu-client")
        return _bg.loop


class Handle:
    """The pending result of ``call_async``."""

    def __init__(self, fut: concurrent.futures.Future, timeout_s: float):
        self._fut, self._timeout_s = fut, timeout_s

    def result(self, timeout_s: float | None = None):
        """The reply, or the call's typed error. Waits at most ``timeout_s`` (default: until
        the call's own deadline, which always ends it)."""
        wait = self._timeout_s + 5.0 if timeout_s is None else timeout_s
        try:
            return self._fut.result(wait)
        except concurrent.futures.TimeoutError:
            if self._fut.done():
                raise
            raise TimedOut(f"no reply within result(timeout_s={wait:g}); the call goes on "
                           f"until its deadline") from None

    def done(self) -> bool:
        return self._fut.done()

    def cancel(self) -> bool:
        """Stop waiting; the server is told to stop the call (it may already have run)."""
        return self._fut.cancel()


class Client:
    """A blocking client; its connection lives on a shared background event loop."""

    def __init__(self, uri: str, **kw):
        self._loop = _background_loop()

        async def make():
            return AsyncClient(uri, **kw)
        self._async = asyncio.run_coroutine_threadsafe(make(), self._loop).result(10)
        self.uri = uri

    @property
    def service(self):
        return self._async.service

    def call_async(self, method: str, message=b"", *, service: str | None = None,
                   timeout_s: float | None = None, idempotent: bool = False,
                   wait: bool = True, backup: float | str | None = None) -> Handle:
        t = self._async.timeout_s if timeout_s is None else timeout_s
        fut = asyncio.run_coroutine_threadsafe(
            self._async.acall(method, message, service=service, timeout_s=t,
                              idempotent=idempotent, wait=wait, backup=backup), self._loop)
        return Handle(fut, t)

    def call(self, method: str, message=b"", **kw):
        return self.call_async(method, message, **kw).result()

    async def acall(self, method: str, message=b"", **kw):
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
            self._async.acall(method, message, **kw), self._loop))

    def stats(self) -> dict:
        async def s():
            return self._async.channel.stats()
        return asyncio.run_coroutine_threadsafe(s(), self._loop).result(10)

    def close(self) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(uri: str, **kw) -> Client:
    """A blocking client for ``uri`` (see the module docstring)."""
    return Client(uri, **kw)


def aconnect(uri: str, **kw) -> AsyncClient:
    """An asyncio client for ``uri``, bound to the running event loop."""
    return AsyncClient(uri, **kw)


__all__ = ["AsyncClient", "Client", "Handle", "connect", "aconnect", "parse_uri", "CALL_DEADLINE_S"]

"""One multiplexed Kuafu client connection (reconnected on demand) on one event loop: the
calls of ``kuafu.client`` and of the HTTP front door (``kuafu.gateway``) go through it. It
knows nothing of how an address is found (``resolve`` is given)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from kuafu import frame as F
from kuafu.core import flow
from kuafu.errors import (BadRequest, FrameError, TimedOut, Unavailable, UnavailableInFlight,
                          error_from_header)
from kuafu.io.addresses import KUAFU_CONNECT_TIMEOUT_S, open_connection
from kuafu.io.conn import PING_INTERVAL_S, Conn
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

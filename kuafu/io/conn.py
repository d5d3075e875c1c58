"""One Kuafu connection as an asyncio protocol, shared by clients, proxies and servers.

It decodes frames incrementally (``FrameDecoder``), answers PINGs, rejects a peer that sends
bytes that are not Kuafu frames (an ERROR frame, then close), and exposes the transport's
write backpressure: large bodies are queued as views and handed to the transport in chunks as
the socket drains (no bulk copies), and ``write_paused`` is set while more than
``WRITE_QUEUE_HIGH_BYTES`` wait; owners then stop reading from whoever feeds this connection
(``pause_reading``) until ``when_writable`` calls back. Reading is zero-copy for large bodies
(``asyncio.BufferedProtocol`` over ``FrameDecoder.get_buffer``). Timeouts are enforced by the
owner's sweeper through ``idle_for`` (see ``sweep``)."""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import Callable

from kuafu import frame as F
from kuafu.errors import FrameError

IDLE_TIMEOUT_S = 60.0        # a connection that sends nothing for this long is closed
HELLO_TIMEOUT_S = 10.0       # a connection that has not sent one whole frame by then is closed
PARTIAL_FRAME_TIMEOUT_S = 10.0  # a frame started but stalled this long is a slowloris: closed
PING_INTERVAL_S = 15.0       # clients ping an idle connection this often
WRITE_QUEUE_HIGH_BYTES = 8 * 1024 * 1024  # queued output above this pauses whoever feeds it
WRITE_CHUNK_BYTES = 256 * 1024  # large bodies go to the transport in pieces of this size
TRANSPORT_HIGH_BYTES = 64 * 1024  # asyncio's own buffer: stop handing it chunks above this
TRANSPORT_LOW_BYTES = 16 * 1024
SMALL_WRITE_BYTES = 64 * 1024  # frames up to this are joined into one write


class Conn(asyncio.BufferedProtocol):
    """``handler`` has ``on_frame(conn, frame)`` and ``on_lost(conn, exc)`` (and optionally
    ``on_open(conn)``)."""

    def __init__(self, handler, role: str = "client", budget: F.Budget | None = None,
                 assemble: bool = False, preauth_bytes_max: int | None = None):
        """``preauth_bytes_max``: until the owner calls ``authenticated()``, frames are at most
        this big unless the handler's ``admit(conn, kind, header, body_bytes)`` lets a larger
        one in (its own token checks out); None: no such limit."""
        self.handler = handler
        self.role = role
        # Endpoints that consume whole messages assemble pieces in place; a proxy forwards.
        self.asm = F.Assembler() if assemble else None
        admit = getattr(handler, "admit", None)
        self.decoder = F.FrameDecoder(
            budget, self.asm.sink if assemble else None, preauth_bytes_max,
            (lambda kind, header, blen: admit(self, kind, header, blen)) if admit else None)
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self.frames_in = 0
        self.opened_at = 0.0
        self.last_rx = 0.0
        self.last_tx = 0.0
        self.peer = ""
        self._out: deque = deque()   # memoryviews waiting to be handed to the transport
        self._out_bytes = 0
        self._transport_paused = False
        self._reading_paused_by: set = set()
        self._on_resume: list[Callable[[], None]] = []
        self.attrs: dict = {}

    # ------------------------------------------------------------ asyncio protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.opened_at = self.last_rx = self.last_tx = self.loop.time()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH_BYTES, low=TRANSPORT_LOW_BYTES)
        opened = getattr(self.handler, "on_open", None)
        if opened is not None:
            opened(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.last_rx = self.loop.time()
        try:
            frames = self.decoder.buffer_updated(nbytes)
        except FrameError as e:
            self.reject(e)
            return
        for f in frames:
            if self.closed:
                return
            self.frames_in += 1
            if f.kind == F.PING:
                self.write(F.encode(F.PONG, {"id": f.request_id}))
            elif f.kind != F.PONG:
                self.handler.on_frame(self, f)

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.decoder.close()
        self._out.clear()
        self._out_bytes = 0
        self._fire_resume()
        self.handler.on_lost(self, exc)

    def pause_writing(self) -> None:
        self._transport_paused = True

    def resume_writing(self) -> None:
        self._transport_paused = False
        self._pump()

    # ------------------------------------------------------------ writing
    def write(self, parts: list) -> None:
        """Queue one frame (a list of buffers from ``frame.encode``). Small frames on an idle
        connection go to the transport at once; large bodies are handed over in
        ``WRITE_CHUNK_BYTES`` pieces as the socket drains, so nothing is copied in bulk."""
        if self.closed:
            return
        self.last_tx = self.loop.time()
        if not self._out and not self._transport_paused and (
                len(parts) == 1 or len(parts[1]) <= SMALL_WRITE_BYTES):
            self.transport.write(parts[0] + parts[1] if len(parts) > 1 and len(parts[1])
                                 else parts[0])
            return
        for p in parts:
            v = memoryview(p).cast("B")
            if v.nbytes:
                self._out.append(v)
                self._out_bytes += v.nbytes
        self._pump()

    def write_frames(self, frames: list) -> None:
        for parts in frames:
            self.write(parts)

    def _pump(self) -> None:
        out, t = self._out, self.transport
        while out and not self._transport_paused and not self.closed:
            v = out[0]
            if v.nbytes <= WRITE_CHUNK_BYTES:
                out.popleft()
                chunk = v
            else:
                chunk, out[0] = v[:WRITE_CHUNK_BYTES], v[WRITE_CHUNK_BYTES:]
            self._out_bytes -= chunk.nbytes
            t.write(chunk)
        if self._on_resume and self._out_bytes <= WRITE_QUEUE_HIGH_BYTES // 2:
            self._fire_resume()

    def _fire_resume(self) -> None:
        callbacks, self._on_resume = self._on_resume, []
        for cb in callbacks:
            cb()

    @property
    def write_paused(self) -> bool:
        """True while more than ``WRITE_QUEUE_HIGH_BYTES`` wait to be sent: feeders should
        stop until ``when_writable`` calls back."""
        return self._out_bytes > WRITE_QUEUE_HIGH_BYTES and not self.closed

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the queue has drained to half its high mark (at once if it is
        not over it)."""
        if not self.write_paused:
            callback()
        else:
            self._on_resume.append(callback)

    async def drained(self) -> None:
        if self.write_paused:
            fut = self.loop.create_future()
            self.when_writable(lambda: fut.done() or fut.set_result(None))
            await fut

    # ------------------------------------------------------------ reading backpressure
    def pause_reading(self, reason) -> None:
        if not self._reading_paused_by and not self.closed:
            self.transport.pause_reading()
        self._reading_paused_by.add(reason)

    def resume_reading(self, reason) -> None:
        if reason in self._reading_paused_by:
            self._reading_paused_by.discard(reason)
            if not self._reading_paused_by and not self.closed:
                self.transport.resume_reading()

    @property
    def reading_paused(self) -> bool:
        return bool(self._reading_paused_by)

    @property
    def preauth(self) -> bool:
        """True while the pre-authentication frame limit holds."""
        return self.decoder.preauth_bytes_max is not None

    def authenticated(self) -> None:
        """The owner verified a token on this connection: lift the pre-auth frame limit."""
        self.decoder.lift_preauth()

    # ------------------------------------------------------------ ending
    def reject(self, err: Exception) -> None:
        """Answer bytes that are not Kuafu with an ERROR frame, then close."""
        if self.closed:
            return
        code = getattr(err, "code", "FrameError")
        self.write(F.encode(F.ERROR, {"id": 0, "code": code, "msg": str(err)[:1000]}))
        self.close()

    def close(self) -> None:
        if not self.closed:
            if self._out and self.transport is not None:
                for v in self._out:  # flush what is queued, then close
                    self.transport.write(v)
                self._out.clear()
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def stale_reason(conn: Conn, now: float, idle_timeout_s: float, hello_timeout_s: float,
                 partial_timeout_s: float) -> str | None:
    """Why a sweeper should drop this connection now, or None."""
    if conn.reading_paused:
        return None  # we stopped reading it: its silence is ours
    quiet = now - conn.last_rx
    if conn.frames_in == 0 and now - conn.opened_at > hello_timeout_s:
        return f"sent no whole frame within {hello_timeout_s:g}s of connecting (HELLO_TIMEOUT_S)"
    if conn.decoder.buffered and quiet > partial_timeout_s:
        return (f"left a frame unfinished for {quiet:.1f}s (PARTIAL_FRAME_TIMEOUT_S="
                f"{partial_timeout_s:g})")
    if quiet > idle_timeout_s:
        return f"silent for {quiet:.1f}s (IDLE_TIMEOUT_S={idle_timeout_s:g})"
    return None

"""Kuafu's frame codecs: headers as msgpack maps, typed bodies (msgpack maps, Arrow), and the
incremental decoder. The layout itself -- prefix, kinds, limits, the checks on a prefix, how
a message is cut into pieces -- is the pure ``kuafu.core.frame``; its names are re-exported
here, so ``kuafu.frame`` is the one module senders and receivers use.

A message larger than PIECE_BYTES travels as a first frame and PIECE frames with the same
request id, in order; every frame but the last has ``more`` set. Bodies are typed:

* ``bytes`` -- as is; ``str`` -- UTF-8; ``map`` -- a msgpack map of str to str (the seed's
  string key-value message); ``arrow`` -- an Arrow IPC stream (a pyarrow Table or
  RecordBatch), written and read by pyarrow without going through Python objects.

``FrameDecoder`` is incremental: feed it bytes as they arrive and take whole frames out. Every
violation -- bad magic, an unknown version or kind, a header or body over its limit, a header
that is not a map -- raises ``FrameError`` saying what was wrong and what was expected, before
it buffers more than the prefix: a sender cannot make a receiver allocate by claiming sizes.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from kuafu.core.frame import (BODY_BYTES_MAX, BODY_TYPES, CANCEL, DEADLINE_MAX_S, ERROR,
                              FRAME_VERSION, HEADER_BYTES_MAX, KINDS, MAGIC, MAP_ENTRIES_MAX,
                              MESSAGE_BYTES_MAX, MESSAGES_IN_PIECES_MAX, PIECE, PIECE_BYTES, PING,
                              PONG, PREFIX, REQUEST, RESPONSE, Frame, check_kind, check_magic,
                              check_sizes, pack_prefix, parse_prefix, piece_ranges,
                              timeout_from_header)
from kuafu.errors import FrameError, TooLarge

def encode(kind: int, header: dict, body=b"") -> list:
    """The frame as a list of buffers to write (the body is not copied)."""
    check_kind(kind)
    head = msgpack.packb(header, use_bin_type=True)
    n = memoryview(body).nbytes
    check_sizes(len(head), n)
    return [pack_prefix(kind, len(head), n) + head, body]


def error_frame(request_id: int, err) -> list:
    """The ERROR frame answering ``request_id`` with a KuafuError."""
    h = err.to_header()
    h["id"] = request_id
    return encode(ERROR, h)


# ------------------------------------------------------------------ typed message bodies

def pack_body(message) -> tuple[str, Any]:
    """(body type, bytes-like) for a message: bytes, str, dict[str, str], or a pyarrow
    Table/RecordBatch."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return "bytes", message
    if isinstance(message, str):
        return "str", message.encode()
    if isinstance(message, dict):
        if len(message) > MAP_ENTRIES_MAX:
            raise TooLarge(f"a map message of {len(message)} entries; MAP_ENTRIES_MAX is "
                           f"{MAP_ENTRIES_MAX}")
        for k, v in message.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise FrameError(f"a map message maps str to str; got {type(k).__name__} -> "
                                 f"{type(v).__name__} for key {k!r:.40}")
        return "map", msgpack.packb(message, use_bin_type=True)
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pa = None
    if pa is not None and isinstance(message, (pa.Table, pa.RecordBatch)):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, message.schema) as w:
            w.write(message)
        return "arrow", sink.getvalue()
    raise FrameError(f"a message is bytes, str, dict[str, str] or a pyarrow Table/RecordBatch; "
                     f"got {type(message).__name__}")


def unpack_body(kind: str, body) -> Any:
    if kind == "bytes":
        return body if type(body) is bytes else bytes(body)
    if kind == "str":
        try:
            return bytes(body).decode()
        except UnicodeDecodeError as e:
            raise FrameError(f"a str message that is not UTF-8 ({e})") from None
    if kind == "map":
        try:
            out = msgpack.unpackb(bytes(body), raw=False, max_map_len=MAP_ENTRIES_MAX)
        except Exception as e:  # noqa: BLE001 - any decoding failure is a bad frame
            raise FrameError(f"a map message that is not a msgpack map ({e})") from None
        if not isinstance(out, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in out.items()):
            raise FrameError("a map message must map str to str")
        return out
    if kind == "arrow":
        import pyarrow as pa

        try:
            return pa.ipc.open_stream(pa.py_buffer(body)).read_all()
        except (pa.ArrowInvalid, OSError) as e:
            raise FrameError(f"an arrow message that is not an Arrow IPC stream ({e})") from None
    raise FrameError(f"body type {kind!r}; expected one of {', '.join(BODY_TYPES)}")


def encode_message(kind: int, header: dict, message) -> list[list]:
    """A message as frames (each a list of buffers): one, or a first one and PIECEs when the
    body is over PIECE_BYTES. Pieces are views of the body: nothing is copied."""
    btype, body = pack_body(message)
    return split_body(kind, dict(header, type=btype), body)


def split_body(kind: int, header: dict, body, piece_bytes: int | None = None) -> list[list]:
    """Frames for an already packed body (``header`` names its type)."""
    view = memoryview(body).cast("B")
    ranges = piece_ranges(view.nbytes, piece_bytes or PIECE_BYTES)
    if len(ranges) == 1:
        return [encode(kind, header, view)]
    frames = []
    rid = header.get("id", 0)
    for seq, (start, end) in enumerate(ranges):
        part = view[start:end]
        if seq == 0:
            frames.append(encode(kind, dict(header, more=True, size=view.nbytes), part))
        else:
            frames.append(encode(PIECE, {"id": rid, "seq": seq, "more": end < view.nbytes},
                                 part))
    return frames


# ------------------------------------------------------------------ decoding

class Budget:
    """Bytes a process lets its connections hold in large bodies still arriving, so peers
    that announce bodies and then stall cannot make it allocate without bound."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


def alloc(n: int) -> memoryview:
    """A writable buffer of ``n`` bytes that is not zero-filled first (a body is about to be
    received into it; zeroing 16 MiB costs as much as copying it)."""
    return memoryview(np.empty(n, dtype=np.uint8)).cast("B")


READ_BUFFER_BYTES = 256 * 1024   # the decoder's fixed buffer for prefixes, headers, small bodies
DIRECT_BODY_BYTES = 64 * 1024    # bodies larger than this are read straight into their own buffer


class FrameDecoder:
    """Incremental decoder. Two ways to use it:

    * ``feed(data)`` returns the frames completed so far (copies ``data`` in);
    * as the buffer of an ``asyncio.BufferedProtocol``: ``get_buffer()`` gives the memory the
      next bytes should be received into and ``buffer_updated(n)`` returns the frames completed
      by them. A large body is received straight into a buffer of its own size, so its bytes
      are copied once, by the kernel.

    Its own buffer has a fixed size (``READ_BUFFER_BYTES``) and is never resized, so a view
    handed out by ``get_buffer`` stays valid. A body over ``DIRECT_BODY_BYTES`` is a
    ``bytearray`` of its exact size, allocated only after the prefix and header checked out."""

    def __init__(self, budget: "Budget | None" = None, sink=None,
                 preauth_bytes_max: int | None = None, gate=None) -> None:
        self.budget = budget
        self.sink = sink  # (kind, header, body length) -> a writable view to receive into, or None
        # Until the connection authenticates (``lift_preauth``), a frame's header and body
        # together may be at most ``preauth_bytes_max`` bytes, and the buffer is only that
        # big: a stranger costs little memory. A larger frame goes on only if ``gate(kind,
        # header, body length)`` says so (its header carries a valid token), checked before
        # its body is received. None: no such limit.
        self.preauth_bytes_max = preauth_bytes_max
        self.gate = gate
        self._buf = bytearray(READ_BUFFER_BYTES if preauth_bytes_max is None
                              else PREFIX.size + preauth_bytes_max)
        self._start = 0
        self._end = 0
        self._big: tuple | None = None  # (kind, header, body bytearray, bytes filled)

    @property
    def buffered(self) -> int:
        big = self._big[3] + PREFIX.size if self._big is not None else 0  # noqa: E501
        return self._end - self._start + big

    def lift_preauth(self) -> None:
        """The connection authenticated: frames up to the normal limits from now on."""
        if self.preauth_bytes_max is None:
            return
        self.preauth_bytes_max = None
        if len(self._buf) < READ_BUFFER_BYTES and self._big is None:
            n = self._end - self._start
            new = bytearray(READ_BUFFER_BYTES)
            new[:n] = self._buf[self._start:self._end]
            self._buf, self._start, self._end = new, 0, n

    def close(self) -> None:
        """Give back the budget of a body still being received (its connection is gone)."""
        if self._big is not None and self.budget is not None and not self._big[4]:
            self.budget.give(len(self._big[2]))
        self._big = None

    def get_buffer(self) -> memoryview:
        if self._big is not None:
            _, _, body, filled, _ = self._big
            return body[filled:]
        if self._end == len(self._buf) or (self._start and len(self._buf) - self._end < 65536):
            n = self._end - self._start
            self._buf[:n] = self._buf[self._start:self._end]  # same size: no resize
            self._start, self._end = 0, n
        return memoryview(self._buf)[self._end:]

    def buffer_updated(self, n: int) -> list[Frame]:
        out: list[Frame] = []
        if self._big is not None:
            kind, header, body, filled, placed = self._big
            filled += n
            if filled < len(body):
                self._big = (kind, header, body, filled, placed)
                return out
            self._big = None
            if self.budget is not None and not placed:
                self.budget.give(len(body))
            out.append(Frame(kind, header, body, placed))
            return out
        self._end += n
        while True:
            f = self._next()
            if f is None:
                break
            out.append(f)
        if self._start == self._end:
            self._start = self._end = 0
        return out

    def feed(self, data) -> list[Frame]:
        out: list[Frame] = []
        view = memoryview(data).cast("B")
        while view.nbytes:
            buf = self.get_buffer()
            n = min(buf.nbytes, view.nbytes)
            buf[:n] = view[:n]
            del buf
            view = view[n:]
            out.extend(self.buffer_updated(n))
        return out

    def _next(self) -> Frame | None:
        buf, start = self._buf, self._start
        avail = self._end - start
        if avail < PREFIX.size:
            if avail:
                check_magic(buf[start:start + min(avail, 2)])
            return None
        kind, hlen, blen = parse_prefix(buf, start, self.preauth_bytes_max)
        hstart = start + PREFIX.size
        bstart = hstart + hlen
        if avail < PREFIX.size + hlen:
            return None
        if self.preauth_bytes_max is not None and hlen + blen > self.preauth_bytes_max:
            self._admit_large(kind, hstart, bstart, blen)
            buf, start = self._buf, self._start  # lifting the limit may have moved the bytes
            hstart = start + PREFIX.size
            bstart = hstart + hlen
        if blen <= DIRECT_BODY_BYTES and avail < PREFIX.size + hlen + blen:
            return None
        try:
            header = msgpack.unpackb(memoryview(buf)[hstart:bstart], raw=False)
        except Exception as e:  # noqa: BLE001 - any decoding failure is a bad frame
            raise FrameError(f"a frame header that is not msgpack ({e})") from None
        if not isinstance(header, dict):
            raise FrameError(f"a frame header is a msgpack map; got {type(header).__name__}")
        have = min(blen, self._end - bstart)
        if blen <= DIRECT_BODY_BYTES:
            body = bytes(memoryview(buf)[bstart:bstart + blen])
            self._start = bstart + blen
            return Frame(kind, header, body)
        body = self.sink(kind, header, blen) if self.sink is not None else None
        placed = body is not None
        if not placed:
            if have < blen and self.budget is not None and not self.budget.take(blen):
                raise TooLarge(f"a frame body of {blen} bytes while this process already "
                               f"receives {self.budget.used} bytes of large bodies (budget "
                               f"{self.budget.limit} bytes); try again later")
            body = alloc(blen)
        body[:have] = memoryview(buf)[bstart:bstart + have]
        self._start = bstart + have
        if have == blen:
            return Frame(kind, header, body, placed)
        self._big = (kind, header, body, have, placed)  # the rest is received straight into it
        return None


    def _admit_large(self, kind: int, hstart: int, bstart: int, blen: int) -> None:
        limit = self.preauth_bytes_max
        try:
            header = msgpack.unpackb(memoryview(self._buf)[hstart:bstart], raw=False)
        except Exception as e:  # noqa: BLE001 - any decoding failure is a bad frame
            raise FrameError(f"a frame header that is not msgpack ({e})") from None
        if not isinstance(header, dict) or self.gate is None or not self.gate(kind, header, blen):
            raise TooLarge(f"a frame of {bstart - hstart + blen} bytes before the connection "
                           f"authenticated; at most {limit} (KUAFU_PREAUTH_FRAME_BYTES_MAX) unless "
                           f"the frame itself carries a valid token")
        self.lift_preauth()


class Assembler:
    """Joins a message's first frame and its PIECEs, per request id, within bounds.

    ``sink`` (given to a ``FrameDecoder``) lets the decoder receive each large body straight
    into its place in the message, so a message in pieces is copied once, by the kernel."""

    def __init__(self, bytes_max: int = MESSAGE_BYTES_MAX,
                 open_max: int = MESSAGES_IN_PIECES_MAX):
        self.bytes_max = bytes_max
        self.open_max = open_max
        # id -> [first frame's header, body view, next piece number, bytes filled, kind]
        self._open: dict[int, list] = {}
        self.buffered = 0
        self.announced = 0  # the sizes of the messages in ``_open``, together

    def _start(self, kind: int, header: dict) -> list:
        rid = header.get("id", 0)
        if rid in self._open:
            raise FrameError(f"request {rid} started twice")
        if len(self._open) >= self.open_max:
            raise TooLarge(f"more than {self.open_max} messages arriving in pieces at once "
                           f"(MESSAGES_IN_PIECES_MAX)")
        size = header.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= self.bytes_max:
            raise TooLarge(f"a message announcing {size!r} bytes; at most {self.bytes_max}")
        if self.announced + size > self.bytes_max:
            raise TooLarge(f"a message announcing {size} bytes while {self.announced} bytes of "
                           f"other messages are still arriving on this connection; at most "
                           f"{self.bytes_max} in all (MESSAGE_BYTES_MAX)")
        entry = [header, alloc(size), 1, 0, kind]
        self._open[rid] = entry
        self.announced += size
        return entry

    def sink(self, kind: int, header: dict, blen: int):
        """Where the decoder should receive a body of ``blen`` bytes: a view into the message
        it belongs to, or None (then ``add`` copies it, or refuses it)."""
        rid = header.get("id", 0)
        try:
            if kind == PIECE:
                e = self._open.get(rid)
                if e is None or header.get("seq") != e[2] or e[3] + blen > len(e[1]):
                    return None
                e[2] = -e[2]  # being placed: add() must not copy it again
                return e[1][e[3]:e[3] + blen]
            if not header.get("more"):
                return None
            e = self._start(kind, header)
        except FrameError:
            return None  # add() raises the same error with the frame in hand
        if blen > len(e[1]):
            self._forget(rid)
            return None
        e[2] = -1
        return e[1][:blen]

    def add(self, f: Frame) -> Frame | None:
        """The whole message once its last frame is in; None while pieces are missing."""
        rid = f.request_id
        n = len(f.body)
        if f.kind != PIECE:
            if not f.more:
                return f
            if f.placed:
                e = self._open[rid]
                e[2], e[3] = 1, n
            else:
                e = self._start(f.kind, f.header)
                if n > len(e[1]):
                    self._forget(rid)
                    raise FrameError(f"request {rid}: its first frame exceeds the announced "
                                     f"{len(e[1])} bytes")
                e[1][:n] = f.body
                e[3] = n
            self.buffered += n
            return None
        e = self._open.get(rid)
        if e is None:
            raise FrameError(f"a piece of request {rid}, which has no first frame")
        header, body, seq, filled, kind = e
        if f.placed:
            seq = -seq
        elif f.header.get("seq") != seq:
            raise FrameError(f"piece {f.header.get('seq')!r} of request {rid}; "
                             f"expected piece {seq}")
        elif filled + n > len(body):
            raise FrameError(f"request {rid}: pieces exceed the announced {len(body)} bytes")
        else:
            body[filled:filled + n] = f.body
        filled += n
        self.buffered += n
        if f.more:
            e[2], e[3] = seq + 1, filled
            return None
        self._forget(rid)
        self.buffered -= filled
        if filled != len(body):
            raise FrameError(f"request {rid}: {filled} bytes arrived, {len(body)} announced")
        header = dict(header)
        header.pop("more", None)
        return Frame(kind, header, body)

    def _forget(self, rid: int) -> list | None:
        e = self._open.pop(rid, None)
        if e is not None:
            self.announced -= len(e[1])
        return e

    def drop(self, request_id: int) -> None:
        e = self._forget(request_id)
        if e is not None:
            self.buffered -= e[3]

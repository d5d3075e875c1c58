"""Kuafu's wire format: versioned, length-prefixed frames (pure: no I/O, no clock).

    offset  size  field
    0       2     magic b"KF"
    2       1     version (FRAME_VERSION)
    3       1     kind: REQUEST, RESPONSE, ERROR, PIECE, CANCEL, PING, PONG
    4       4     header length, little-endian u32 (at most HEADER_BYTES_MAX)
    8       4     body length, little-endian u32 (at most BODY_BYTES_MAX)
    12      ...   header: a msgpack map (request id, service, method, deadline, credentials,
                  flags, the body's type, the piece number)
    ...     ...   body: the message bytes

A message larger than BODY_BYTES_MAX travels as a first frame and PIECE frames with the same
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

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from kuafu.errors import FrameError, TooLarge

MAGIC = b"KF"
FRAME_VERSION = 1
PREFIX = struct.Struct("<2sBBII")
HEADER_BYTES_MAX = 64 * 1024
BODY_BYTES_MAX = 4 * 1024 * 1024  # one frame's body; bigger messages go in pieces
MESSAGE_BYTES_MAX = 1024 * 1024 * 1024  # one whole message, all pieces together
MAP_ENTRIES_MAX = 100_000
MESSAGES_IN_PIECES_MAX = 1024  # messages arriving in pieces at once, per connection

REQUEST, RESPONSE, ERROR, PIECE, CANCEL, PING, PONG = range(1, 8)
KINDS = {REQUEST: "REQUEST", RESPONSE: "RESPONSE", ERROR: "ERROR", PIECE: "PIECE",
         CANCEL: "CANCEL", PING: "PING", PONG: "PONG"}
BODY_TYPES = ("bytes", "str", "map", "arrow")


@dataclass
class Frame:
    kind: int
    header: dict = field(default_factory=dict)
    body: Any = b""  # bytes-like

    @property
    def request_id(self) -> int:
        return self.header.get("id", 0)

    @property
    def more(self) -> bool:
        return bool(self.header.get("more", False))


def encode(kind: int, header: dict, body=b"") -> list:
    """The frame as a list of buffers to write (the body is not copied)."""
    if kind not in KINDS:
        raise FrameError(f"frame kind {kind!r}; expected one of {sorted(KINDS)}")
    head = msgpack.packb(header, use_bin_type=True)
    if len(head) > HEADER_BYTES_MAX:
        raise TooLarge(f"frame header of {len(head)} bytes; HEADER_BYTES_MAX is "
                       f"{HEADER_BYTES_MAX}")
    n = memoryview(body).nbytes
    if n > BODY_BYTES_MAX:
        raise TooLarge(f"frame body of {n} bytes; BODY_BYTES_MAX is {BODY_BYTES_MAX} (split "
                       f"bigger messages with encode_message)")
    return [PREFIX.pack(MAGIC, FRAME_VERSION, kind, len(head), n) + head, body]


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
        return bytes(body)
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
    body is over BODY_BYTES_MAX. Pieces are views of the body: nothing is copied."""
    btype, body = pack_body(message)
    view = memoryview(body).cast("B")
    if view.nbytes > MESSAGE_BYTES_MAX:
        raise TooLarge(f"a message of {view.nbytes} bytes; MESSAGE_BYTES_MAX is "
                       f"{MESSAGE_BYTES_MAX}")
    header = dict(header, type=btype)
    if view.nbytes <= BODY_BYTES_MAX:
        return [encode(kind, header, view)]
    frames = []
    rid = header.get("id", 0)
    for seq, start in enumerate(range(0, view.nbytes, BODY_BYTES_MAX)):
        part = view[start:start + BODY_BYTES_MAX]
        more = start + BODY_BYTES_MAX < view.nbytes
        if seq == 0:
            frames.append(encode(kind, dict(header, more=True, size=view.nbytes), part))
        else:
            frames.append(encode(PIECE, {"id": rid, "seq": seq, "more": more}, part))
    return frames


# ------------------------------------------------------------------ decoding

class FrameDecoder:
    """Incremental decoder: ``feed(data)`` returns the frames completed so far."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        while True:
            f = self._next()
            if f is None:
                return out
            out.append(f)

    def _next(self) -> Frame | None:
        buf = self._buf
        if len(buf) < PREFIX.size:
            if buf[:2] and not MAGIC.startswith(bytes(buf[:2])):
                raise FrameError(f"not a Kuafu frame: starts with {bytes(buf[:2])!r}, expected "
                                 f"{MAGIC!r}")
            return None
        magic, version, kind, hlen, blen = PREFIX.unpack_from(buf)
        if magic != MAGIC:
            raise FrameError(f"not a Kuafu frame: starts with {magic!r}, expected {MAGIC!r}")
        if version != FRAME_VERSION:
            raise FrameError(f"frame version {version}; this side speaks {FRAME_VERSION}")
        if kind not in KINDS:
            raise FrameError(f"frame kind {kind}; expected one of {sorted(KINDS)}")
        if hlen > HEADER_BYTES_MAX:
            raise TooLarge(f"a frame header of {hlen} bytes; HEADER_BYTES_MAX is "
                           f"{HEADER_BYTES_MAX}")
        if blen > BODY_BYTES_MAX:
            raise TooLarge(f"a frame body of {blen} bytes; BODY_BYTES_MAX is {BODY_BYTES_MAX}")
        end = PREFIX.size + hlen + blen
        if len(buf) < end:
            return None
        try:
            header = msgpack.unpackb(bytes(buf[PREFIX.size:PREFIX.size + hlen]), raw=False)
        except Exception as e:  # noqa: BLE001 - any decoding failure is a bad frame
            raise FrameError(f"a frame header that is not msgpack ({e})") from None
        if not isinstance(header, dict):
            raise FrameError(f"a frame header is a msgpack map; got {type(header).__name__}")
        body = bytes(buf[PREFIX.size + hlen:end])
        del buf[:end]
        return Frame(kind, header, body)


class Assembler:
    """Joins a message's first frame and its PIECEs, per request id, within bounds."""

    def __init__(self, bytes_max: int = MESSAGE_BYTES_MAX,
                 open_max: int = MESSAGES_IN_PIECES_MAX):
        self.bytes_max = bytes_max
        self.open_max = open_max
        self._open: dict[int, tuple[Frame, bytearray, int]] = {}  # id -> first, body, next seq
        self.buffered = 0

    def add(self, f: Frame) -> Frame | None:
        """The whole message once its last frame is in; None while pieces are missing."""
        if f.kind != PIECE:
            if not f.more:
                return f
            if f.request_id in self._open:
                raise FrameError(f"request {f.request_id} started twice")
            if len(self._open) >= self.open_max:
                raise TooLarge(f"more than {self.open_max} messages arriving in pieces at once "
                               f"(MESSAGES_IN_PIECES_MAX)")
            size = f.header.get("size")
            if not isinstance(size, int) or not 0 <= size <= self.bytes_max:
                raise TooLarge(f"a message announcing {size!r} bytes; at most {self.bytes_max}")
            self._open[f.request_id] = (f, bytearray(f.body), 1)
            self.buffered += len(f.body)
            return None
        entry = self._open.get(f.request_id)
        if entry is None:
            raise FrameError(f"a piece of request {f.request_id}, which has no first frame")
        first, body, seq = entry
        if f.header.get("seq") != seq:
            raise FrameError(f"piece {f.header.get('seq')!r} of request {f.request_id}; "
                             f"expected piece {seq}")
        if len(body) + len(f.body) > first.header["size"]:
            raise FrameError(f"request {f.request_id}: pieces exceed the announced "
                             f"{first.header['size']} bytes")
        body += f.body
        self.buffered += len(f.body)
        if f.more:
            self._open[f.request_id] = (first, body, seq + 1)
            return None
        del self._open[f.request_id]
        self.buffered -= len(body)
        if len(body) != first.header["size"]:
            raise FrameError(f"request {f.request_id}: {len(body)} bytes arrived, "
                             f"{first.header['size']} announced")
        header = dict(first.header)
        header.pop("more", None)
        return Frame(first.kind, header, bytes(body))

    def drop(self, request_id: int) -> None:
        entry = self._open.pop(request_id, None)
        if entry is not None:
            self.buffered -= len(entry[1])

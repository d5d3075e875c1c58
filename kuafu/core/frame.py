"""Kuafu's frame layout (pure: the standard library only; no I/O, no clock).

    offset  size  field
    0       2     magic b"KF"
    2       1     version (FRAME_VERSION)
    3       1     kind: REQUEST, RESPONSE, ERROR, PIECE, CANCEL, PING, PONG
    4       4     header length, little-endian u32 (at most HEADER_BYTES_MAX)
    8       4     body length, little-endian u32 (at most BODY_BYTES_MAX)
    12      ...   header: a msgpack map (request id, service, method, deadline, credentials,
                  flags, the body's type, the piece number)
    ...     ...   body: the message bytes

This module holds what a frame *is*: the prefix struct, kinds, every size limit, the checks a
receiver makes on a prefix before it buffers anything, how a message is cut into pieces, and
what the header's deadline field means. Encoding headers (msgpack) and typed bodies (msgpack
maps, Arrow) lives in ``kuafu.frame``, which builds on this."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

from kuafu.errors import FrameError, TooLarge

MAGIC = b"KF"
FRAME_VERSION = 1
PREFIX = struct.Struct("<2sBBII")
HEADER_BYTES_MAX = 64 * 1024
BODY_BYTES_MAX = 4 * 1024 * 1024  # the largest frame body a receiver accepts
PIECE_BYTES = 1024 * 1024  # senders split messages larger than this into pieces of this size
# (small pieces let a proxy forward a large message while it is still arriving)
MESSAGE_BYTES_MAX = 1024 * 1024 * 1024  # one whole message, all pieces together
MAP_ENTRIES_MAX = 100_000
MESSAGES_IN_PIECES_MAX = 1024  # messages arriving in pieces at once, per connection
DEADLINE_MAX_S = 3600.0        # the longest deadline a request may carry

REQUEST, RESPONSE, ERROR, PIECE, CANCEL, PING, PONG = range(1, 8)
KINDS = {REQUEST: "REQUEST", RESPONSE: "RESPONSE", ERROR: "ERROR", PIECE: "PIECE",
         CANCEL: "CANCEL", PING: "PING", PONG: "PONG"}
BODY_TYPES = ("bytes", "str", "map", "arrow")


@dataclass
class Frame:
    kind: int
    header: dict = field(default_factory=dict)
    body: Any = b""  # bytes-like
    placed: bool = False  # the body was received straight into a buffer its consumer gave

    @property
    def request_id(self) -> int:
        return self.header.get("id", 0)

    @property
    def more(self) -> bool:
        return bool(self.header.get("more", False))


def check_kind(kind) -> None:
    if kind not in KINDS:
        raise FrameError(f"frame kind {kind!r}; expected one of {sorted(KINDS)}")


def check_sizes(header_bytes: int, body_bytes: int) -> None:
    """A sender's check of an encoded header and a body against the frame's limits."""
    if header_bytes > HEADER_BYTES_MAX:
        raise TooLarge(f"frame header of {header_bytes} bytes; HEADER_BYTES_MAX is "
                       f"{HEADER_BYTES_MAX}")
    if body_bytes > BODY_BYTES_MAX:
        raise TooLarge(f"frame body of {body_bytes} bytes; BODY_BYTES_MAX is {BODY_BYTES_MAX} "
                       f"(split bigger messages with encode_message)")


def pack_prefix(kind: int, header_bytes: int, body_bytes: int) -> bytes:
    return PREFIX.pack(MAGIC, FRAME_VERSION, kind, header_bytes, body_bytes)


def check_magic(start: bytes) -> None:
    """The first byte or two of a frame still arriving (fewer than PREFIX.size bytes)."""
    if start and start[0] != MAGIC[0] or len(start) >= 2 and start[1] != MAGIC[1]:
        raise FrameError(f"not a Kuafu frame: starts with {bytes(start[:2])!r}, expected "
                         f"{MAGIC!r}")


def parse_prefix(buf, offset: int = 0, preauth_bytes_max: int | None = None) -> tuple[int, int, int]:
    """(kind, header length, body length) of the prefix at ``buf[offset:]``, checked before
    anything more is buffered: magic, version, kind, and both sizes against their limits (and
    the header against ``preauth_bytes_max`` while a connection is unauthenticated)."""
    magic, version, kind, hlen, blen = PREFIX.unpack_from(buf, offset)
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
    if preauth_bytes_max is not None and hlen > preauth_bytes_max:
        raise TooLarge(f"a frame header of {hlen} bytes before the connection "
                       f"authenticated; at most {preauth_bytes_max} "
                       f"(KUAFU_PREAUTH_FRAME_BYTES_MAX)")
    return kind, hlen, blen


def piece_ranges(message_bytes: int, piece_bytes: int | None = None) -> list[tuple[int, int]]:
    """(start, end) of each frame's part of a message: one range when it fits in a piece,
    else PIECE_BYTES-sized pieces in order. A message over MESSAGE_BYTES_MAX is refused."""
    piece = piece_bytes or PIECE_BYTES
    if message_bytes > MESSAGE_BYTES_MAX:
        raise TooLarge(f"a message of {message_bytes} bytes; MESSAGE_BYTES_MAX is "
                       f"{MESSAGE_BYTES_MAX}")
    if message_bytes <= piece:
        return [(0, message_bytes)]
    return [(s, min(s + piece, message_bytes)) for s in range(0, message_bytes, piece)]


def check_announced_size(size, first_bytes: int) -> bool:
    """Whether a first frame's ``size`` (a message in pieces) is an int between its own body
    length and MESSAGE_BYTES_MAX."""
    return (not isinstance(size, bool) and isinstance(size, int)
            and first_bytes <= size <= MESSAGE_BYTES_MAX)


def timeout_from_header(dl) -> float:
    """Seconds left for a request from its header's ``dl`` (milliseconds), within
    DEADLINE_MAX_S; a missing, non-numeric or non-finite value means DEADLINE_MAX_S."""
    if isinstance(dl, bool) or not isinstance(dl, (int, float)) or not math.isfinite(dl):
        return DEADLINE_MAX_S
    return min(float(dl) / 1000.0, DEADLINE_MAX_S)

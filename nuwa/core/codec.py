"""Compact binary encoding of Raft messages, entries, hard state and snapshots (``struct``).

No pickle: a replica must never execute what arrives on a socket. Every decoder checks each
length against the bytes present, every enum against its known values, and that nothing is
left over; malformed input raises ``ValueError`` saying what was wrong and where.

Layouts (big-endian; ``u64`` unless noted)::

    entry      term, index, kind:u8, data_len:u32, data
    hard state term, vote, commit
    snapshot   index, term, voters_n:u16, voters_n * voter, learners_n:u16,
               learners_n * learner, data_len, data
    snap meta  the same without data_len and data
    message    version:u8, type:u8, frm, to, term, log_term, index, commit, flags:u8,
               reject_hint, context_len:u32, context, [snapshot if flags & 2],
               entries_n:u32, entries_n * entry
"""

from __future__ import annotations

import struct

from nuwa.core.raft_types import ENTRY_KINDS, Entry, HardState, Message, MsgType, Snapshot

__all__ = [
    "encode_message", "decode_message", "encode_entry", "decode_entry", "encode_hard_state",
    "decode_hard_state", "encode_snapshot", "decode_snapshot", "encode_snapshot_meta",
    "decode_snapshot_meta", "MESSAGE_VERSION",
]

MESSAGE_VERSION = 2  # 2: snapshots carry learners
_U64_MAX = (1 << 64) - 1
_VOTERS_MAX = 0xFFFF

_ENTRY_HEAD = struct.Struct(">QQBI")
_HARD_STATE = struct.Struct(">QQQ")
_SNAP_HEAD = struct.Struct(">QQH")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_MSG_HEAD = struct.Struct(">BBQQQQQQBQ")

_FLAG_REJECT = 1
_FLAG_SNAPSHOT = 2
_KIND_CODE = {k: i for i, k in enumerate(ENTRY_KINDS)}
_TYPE_BY_CODE = {t.value: t for t in MsgType}


class _Reader:
    def __init__(self, buf: bytes, what: str) -> None:
        if not isinstance(buf, (bytes, bytearray, memoryview)):
            raise ValueError(f"{what}: expected bytes, got {type(buf).__name__}")
        self.buf = bytes(buf)
        self.off = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n > len(self.buf) - self.off:
            raise ValueError(f"{self.what} truncated: {field} needs {n} bytes at offset "
                             f"{self.off}, only {len(self.buf) - self.off} left")
        out = self.buf[self.off:self.off + n]
        self.off += n
        return out

    def unpack(self, st: struct.Struct, field: str) -> tuple:
        return st.unpack(self.take(st.size, field))

    def done(self) -> None:
        if self.off != len(self.buf):
            raise ValueError(f"{self.what}: {len(self.buf) - self.off} unexpected trailing "
                             f"bytes at offset {self.off}")


def _check_u64(what: str, **values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or not 0 <= v <= _U64_MAX:
            raise ValueError(f"{what}: {name}={v!r} is not an integer in [0, 2**64)")


# ------------------------------------------------------------------ entries
def _write_entry(out: list[bytes], e: Entry) -> None:
    _check_u64("entry", term=e.term, index=e.index)
    if e.kind not in _KIND_CODE:
        raise ValueError(f"entry: kind {e.kind!r} is not one of {ENTRY_KINDS}")
    if len(e.data) > 0xFFFFFFFF:
        raise ValueError(f"entry: data of {len(e.data)} bytes exceeds 4 GiB")
    out.append(_ENTRY_HEAD.pack(e.term, e.index, _KIND_CODE[e.kind], len(e.data)))
    out.append(bytes(e.data))


def _read_entry(r: _Reader, field: str = "entry") -> Entry:
    term, index, kind, n = r.unpack(_ENTRY_HEAD, f"{field} header")
    if kind >= len(ENTRY_KINDS):
        raise ValueError(f"{r.what}: {field} has unknown kind code {kind}")
    data = r.take(n, f"{field} data")
    return Entry(term, index, data, ENTRY_KINDS[kind])


def encode_entry(e: Entry) -> bytes:
    out: list[bytes] = []
    _write_entry(out, e)
    return b"".join(out)


def decode_entry(buf: bytes) -> Entry:
    r = _Reader(buf, "entry")
    e = _read_entry(r)
    r.done()
    return e


# ------------------------------------------------------------------ hard state
def encode_hard_state(hs: HardState) -> bytes:
    _check_u64("hard state", term=hs.term, vote=hs.vote, commit=hs.commit)
    return _HARD_STATE.pack(hs.term, hs.vote, hs.commit)


def decode_hard_state(buf: bytes) -> HardState:
    r = _Reader(buf, "hard state")
    term, vote, commit = r.unpack(_HARD_STATE, "term/vote/commit")
    r.done()
    return HardState(term, vote, commit)


# ------------------------------------------------------------------ snapshots
def _write_snapshot_meta(out: list[bytes], s: Snapshot) -> None:
    _check_u64("snapshot", index=s.index, term=s.term)
    if len(s.voters) > _VOTERS_MAX:
        raise ValueError(f"snapshot: {len(s.voters)} voters exceeds {_VOTERS_MAX}")
    for v in s.voters:
        _check_u64("snapshot", voter=v)
    out.append(_SNAP_HEAD.pack(s.index, s.term, len(s.voters)))
    out.extend(_U64.pack(v) for v in s.voters)
    if len(s.learners) > _VOTERS_MAX:
        raise ValueError(f"snapshot: {len(s.learners)} learners exceeds {_VOTERS_MAX}")
    for v in s.learners:
        _check_u64("snapshot", learner=v)
    out.append(_U16.pack(len(s.learners)))
    out.extend(_U64.pack(v) for v in s.learners)


def _read_snapshot_meta(r: _Reader) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    index, term, n = r.unpack(_SNAP_HEAD, "snapshot header")
    voters = tuple(r.unpack(_U64, f"snapshot voter {i}")[0] for i in range(n))
    (n,) = r.unpack(_U16, "snapshot learner count")
    learners = tuple(r.unpack(_U64, f"snapshot learner {i}")[0] for i in range(n))
    return index, term, voters, learners


def _write_snapshot(out: list[bytes], s: Snapshot) -> None:
    _write_snapshot_meta(out, s)
    out.append(_U64.pack(len(s.data)))
    out.append(bytes(s.data))


def _read_snapshot(r: _Reader) -> Snapshot:
    index, term, voters, learners = _read_snapshot_meta(r)
    (n,) = r.unpack(_U64, "snapshot data length")
    return Snapshot(index, term, voters, r.take(n, "snapshot data"), learners)


def encode_snapshot(s: Snapshot) -> bytes:
    out: list[bytes] = []
    _write_snapshot(out, s)
    return b"".join(out)


def decode_snapshot(buf: bytes) -> Snapshot:
    r = _Reader(buf, "snapshot")
    s = _read_snapshot(r)
    r.done()
    return s


def encode_snapshot_meta(s: Snapshot) -> bytes:
    """Index, term and voters only (the data is stored separately)."""
    out: list[bytes] = []
    _write_snapshot_meta(out, s)
    return b"".join(out)


def decode_snapshot_meta(buf: bytes) -> Snapshot:
    """The metadata as a Snapshot with empty ``data``."""
    r = _Reader(buf, "snapshot meta")
    index, term, voters, learners = _read_snapshot_meta(r)
    r.done()
    return Snapshot(index, term, voters, b"", learners)


# ------------------------------------------------------------------ messages
def encode_message(m: Message) -> bytes:
    _check_u64("message", frm=m.frm, to=m.to, term=m.term, log_term=m.log_term,
               index=m.index, commit=m.commit, reject_hint=m.reject_hint)
    if not isinstance(m.type, MsgType):
        raise ValueError(f"message: type {m.type!r} is not a MsgType")
    if len(m.context) > 0xFFFFFFFF or len(m.entries) > 0xFFFFFFFF:
        raise ValueError("message: context or entries too large")
    flags = (_FLAG_REJECT if m.reject else 0) | (_FLAG_SNAPSHOT if m.snapshot else 0)
    out = [_MSG_HEAD.pack(MESSAGE_VERSION, m.type.value, m.frm, m.to, m.term, m.log_term,
                          m.index, m.commit, flags, m.reject_hint),
           _U32.pack(len(m.context)), bytes(m.context)]
    if m.snapshot is not None:
        _write_snapshot(out, m.snapshot)
    out.append(_U32.pack(len(m.entries)))
    for e in m.entries:
        _write_entry(out, e)
    return b"".join(out)


def decode_message(buf: bytes) -> Message:
    r = _Reader(buf, "message")
    (version, type_code, frm, to, term, log_term, index, commit, flags,
     reject_hint) = r.unpack(_MSG_HEAD, "header")
    if version != MESSAGE_VERSION:
        raise ValueError(f"message: version {version}, expected {MESSAGE_VERSION}")
    mtype = _TYPE_BY_CODE.get(type_code)
    if mtype is None:
        raise ValueError(f"message: unknown type code {type_code}")
    if flags & ~(_FLAG_REJECT | _FLAG_SNAPSHOT):
        raise ValueError(f"message: unknown flag bits {flags:#04x}")
    (n,) = r.unpack(_U32, "context length")
    context = r.take(n, "context")
    snapshot = _read_snapshot(r) if flags & _FLAG_SNAPSHOT else None
    (count,) = r.unpack(_U32, "entry count")
    if count > (len(r.buf) - r.off) // _ENTRY_HEAD.size:
        raise ValueError(f"message: {count} entries cannot fit in the "
                         f"{len(r.buf) - r.off} bytes left")
    entries = tuple(_read_entry(r, f"entry {i}") for i in range(count))
    r.done()
    return Message(mtype, frm, to, term, log_term=log_term, index=index, entries=entries,
                   commit=commit, reject=bool(flags & _FLAG_REJECT), reject_hint=reject_hint,
                   snapshot=snapshot, context=context)

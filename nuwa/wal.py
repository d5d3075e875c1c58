"""A replica's durable state: a write-ahead log of Raft entries and hard states, plus snapshots.

Layout under a replica's directory::

    wal.log            records: [u32 length][u32 crc32][u8 kind][payload]
    snap.bin           the latest snapshot: [u32 crc32][payload] (index, term, voters, data)

``save(hard_state, entries)`` appends and fsyncs once, so a Raft ``Ready`` costs one fsync
however many entries it carries (group commit). Raft may ask to overwrite a conflicting
suffix: an ENTRY record for an index at or below the last one logically truncates the log
there, and recovery replays the same rule.

Recovery reads records until the first one that is incomplete or fails its CRC, which is what
a crash in the middle of an append leaves, and truncates the file there. Anything after the
last fsync was never acknowledged, so dropping it is correct. A corrupt record *followed by
valid ones* cannot come from a torn append and is reported as ``WalCorrupt`` rather than
silently dropping acknowledged data.

``compact(snapshot)`` writes the snapshot (temp file, fsync, rename, fsync the directory),
then rewrites the log without the entries the snapshot covers, the same way.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

from nuwa.codec import decode_entry as _decode_entry
from nuwa.codec import decode_hard_state as _decode_hs
from nuwa.codec import decode_snapshot as _decode_snapshot
from nuwa.codec import encode_entry as _encode_entry
from nuwa.codec import encode_hard_state as _encode_hs
from nuwa.codec import encode_snapshot as _encode_snapshot
from nuwa.raft import Entry, HardState, Snapshot

_HEADER = struct.Struct("<IIB")  # length of payload, crc32 of kind+payload, kind
_KIND_ENTRY = 1
_KIND_HARD_STATE = 2
RECORD_BYTES_MAX = 64 * 1024 * 1024  # one entry is at most a 1 MiB value plus framing


class WalCorrupt(Exception):
    """The log is damaged in a way a crash cannot explain (not just a torn tail)."""


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably: a temp file, fsync, rename, fsync the dir."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


@dataclass
class Recovered:
    """What a restarted replica finds on its disk."""

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)  # after the snapshot, contiguous
    truncated_bytes: int = 0  # a torn tail that was cut off


class Wal:
    def __init__(self, directory: str):
        self.dir = os.path.abspath(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "wal.log")
        self.snap_path = os.path.join(self.dir, "snap.bin")
        self._f = None
        self._hard_state: HardState | None = None
        self._entries: list[Entry] = []  # the live log after the snapshot (kept for compaction)
        self._snapshot: Snapshot | None = None

    # ------------------------------------------------------------ recovery

    def recover(self) -> Recovered:
        """Read the disk; cut a torn tail; open the log for appending."""
        rec = Recovered()
        if os.path.exists(self.snap_path):
            with open(self.snap_path, "rb") as f:
                raw = f.read()
            if len(raw) < 4 or zlib.crc32(raw[4:]) != struct.unpack_from("<I", raw)[0]:
                raise WalCorrupt(f"snapshot {self.snap_path} fails its checksum")
            rec.snapshot = _decode_snapshot(raw[4:])
        entries: list[Entry] = []
        good_end = 0
        data = b""
        if os.path.exists(self.log_path):
            with open(self.log_path, "rb") as f:
                data = f.read()
        off = 0
        while off < len(data):
            if off + _HEADER.size > len(data):
                break
            length, crc, kind = _HEADER.unpack_from(data, off)
            body_at = off + _HEADER.size
            if length > RECORD_BYTES_MAX or body_at + length > len(data):
                break
            payload = data[body_at:body_at + length]
            if zlib.crc32(bytes([kind]) + payload) != crc:
                if self._valid_record_after(data, body_at + length):
                    raise WalCorrupt(f"{self.log_path}: a damaged record at byte {off} is followed "
                                     f"by valid ones; refusing to drop acknowledged entries")
                break
            if kind == _KIND_ENTRY:
                e = _decode_entry(payload)
                while entries and entries[-1].index >= e.index:
                    entries.pop()  # a conflicting suffix was overwritten
                entries.append(e)
            elif kind == _KIND_HARD_STATE:
                rec.hard_state = _decode_hs(payload)
            else:
                raise WalCorrupt(f"{self.log_path}: unknown record kind {kind} at byte {off}")
            off = body_at + length
            good_end = off
        rec.truncated_bytes = len(data) - good_end
        if rec.snapshot is not None:
            entries = [e for e in entries if e.index > rec.snapshot.index]
        rec.entries = entries
        if rec.truncated_bytes:
            with open(self.log_path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        self._hard_state, self._entries, self._snapshot = rec.hard_state, list(entries), rec.snapshot
        self._f = open(self.log_path, "ab")
        return rec

    @staticmethod
    def _valid_record_after(data: bytes, off: int) -> bool:
        """Is there at least one intact record after ``off``? (Distinguishes corruption in
        the middle of the log from a torn final append.)"""
        while off + _HEADER.size <= len(data):
            length, crc, kind = _HEADER.unpack_from(data, off)
            body_at = off + _HEADER.size
            if length <= RECORD_BYTES_MAX and body_at + length <= len(data):
                if zlib.crc32(bytes([kind]) + data[body_at:body_at + length]) == crc:
                    return True
            off += 1
        return False

    # ------------------------------------------------------------ writing

    def save(self, hard_state: HardState | None, entries: list[Entry], sync: bool = True) -> None:
        """Append entries (overwriting a conflicting suffix) and the hard state; one fsync,
        unless ``sync`` is False (a hard state whose term and vote are unchanged: losing a
        commit index in a crash is harmless, Raft learns it again from the leader)."""
        if self._f is None:
            raise RuntimeError("Wal.recover() must be called before save()")
        if not entries and hard_state is None:
            return
        buf = bytearray()
        for e in entries:
            buf += self._record(_KIND_ENTRY, _encode_entry(e))
            while self._entries and self._entries[-1].index >= e.index:
                self._entries.pop()
            self._entries.append(e)
        if hard_state is not None:
            buf += self._record(_KIND_HARD_STATE, _encode_hs(hard_state))
            self._hard_state = hard_state
        self._f.write(buf)
        self._f.flush()
        if sync:
            os.fdatasync(self._f.fileno())

    @staticmethod
    def _record(kind: int, payload: bytes) -> bytes:
        if len(payload) > RECORD_BYTES_MAX:
            raise ValueError(f"WAL record of {len(payload)} bytes exceeds RECORD_BYTES_MAX="
                             f"{RECORD_BYTES_MAX}")
        return _HEADER.pack(len(payload), zlib.crc32(bytes([kind]) + payload), kind) + payload

    def save_snapshot(self, snap: Snapshot) -> None:
        """Persist a snapshot (from our own state machine, or installed from the leader) and
        drop the log entries it covers."""
        payload = _encode_snapshot(snap)
        write_atomic(self.snap_path, struct.pack("<I", zlib.crc32(payload)) + payload)
        self._snapshot = snap
        # Keep what follows the snapshot only if our log agrees with it at its index: an
        # installed snapshot may be ahead of us, or from a leader whose history differs from
        # our uncommitted tail — then every entry after it is stale and the log restarts.
        at = next((e for e in self._entries if e.index == snap.index), None)
        agrees = at is not None and at.term == snap.term
        keep = [e for e in self._entries if e.index > snap.index] if agrees else []
        if keep and keep[0].index != snap.index + 1:
            keep = []
        buf = bytearray()
        for e in keep:
            buf += self._record(_KIND_ENTRY, _encode_entry(e))
        if self._hard_state is not None:
            buf += self._record(_KIND_HARD_STATE, _encode_hs(self._hard_state))
        if self._f is not None:
            self._f.close()
        write_atomic(self.log_path, bytes(buf))
        self._entries = keep
        self._f = open(self.log_path, "ab")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def size_bytes(self) -> int:
        return os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0

"""A replica's durable state: a write-ahead log of Raft entries and hard states, plus snapshots.

Layout under a replica's directory::

    wal.log            a ``base.logfile`` log: a header, then records of kind ENTRY or
                       HARD_STATE, each with a sequence number, CRCs over every byte, and the
                       durable marker ("records up to N were synced")
    snap.bin           the latest snapshot: [u32 crc32][payload] (index, term, voters, data)

``save(hard_state, entries)`` appends and fsyncs once, so a Raft ``Ready`` costs one fsync
however many entries it carries (group commit). Raft may ask to overwrite a conflicting
suffix: an ENTRY record for an index at or below the last one logically truncates the log
there, and recovery replays the same rule.

Damaged logs. Recovery follows ``base.logfile``'s rule (its docstring has the proof): a torn
tail -- bytes written after the last completed fsync, persisted in any order or not at all --
is cut off and the replica starts with every acknowledged entry; damage to anything that had
been synced is corruption: ``recover`` raises ``WalCorrupt`` naming the file and byte offset,
changes nothing on disk, and the replica refuses to start. (It does not rejoin as a non-voter
on its own: its peers hold the data, and an operator rebuilds it from them by moving the
directory aside and starting it again, which ``nuwa.group`` treats as a lost disk: it rejoins
as a non-voter under a new id.) A snapshot failing its checksum is refused the same way.

Failing disks. A write or fsync error raises ``DiskFull`` (ENOSPC) or ``DiskFailed`` (EIO
and the rest); after a failed fsync this ``Wal`` refuses every later save (never fsync the
same file again and trust it). The server treats either as fatal: the replica stops serving
(a leader thereby stops leading) and recovers from disk when restarted. Fault points
``nuwa.io.wal.write`` and ``nuwa.io.wal.fsync`` (``base.faults``) inject them in tests.

``compact(snapshot)`` writes the snapshot (temp file, fsync, rename, fsync the directory),
then rewrites the log without the entries the snapshot covers, the same way.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from dataclasses import dataclass, field

from base import logfile
from base.logfile import LogCorrupt, LogFile
from nuwa.core.codec import decode_entry as _decode_entry
from nuwa.core.codec import decode_hard_state as _decode_hs
from nuwa.core.codec import decode_snapshot as _decode_snapshot
from nuwa.core.codec import encode_entry as _encode_entry
from nuwa.core.codec import encode_hard_state as _encode_hs
from nuwa.core.codec import encode_snapshot as _encode_snapshot
from nuwa.core.raft import Entry, HardState, Snapshot

_HEADER = struct.Struct("<IIB")  # the old (v1) format: length, crc32 of kind+payload, kind
_KIND_ENTRY = 1
_KIND_HARD_STATE = 2
RECORD_BYTES_MAX = 64 * 1024 * 1024  # one entry is at most a 1 MiB value plus framing


class WalCorrupt(LogCorrupt):
    """The log or snapshot is damaged in a way a crash cannot explain (not a torn tail of an
    unsynced write). ``path`` and ``offset`` say where; nothing was changed on disk."""


class DiskFailed(logfile.DiskFailed):
    """The replica's disk refused a WAL write or fsync (``errno``); the replica must stop."""


class DiskFull(DiskFailed, logfile.DiskFull):
    """ENOSPC under the WAL; the replica stops and recovers when restarted with space."""


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably: a temp file, fsync, rename, fsync the dir."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    logfile.fsync_dir(os.path.dirname(path))


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
        self._log = LogFile(self.log_path, "nuwa-wal", "nuwa.io.wal", RECORD_BYTES_MAX,
                            corrupt=WalCorrupt, disk_failed=DiskFailed, disk_full=DiskFull)
        self._open = False
        self._hard_state: HardState | None = None
        self._entries: list[Entry] = []  # the live log after the snapshot (kept for compaction)
        self._snapshot: Snapshot | None = None

    # ------------------------------------------------------------ recovery

    def recover(self) -> Recovered:
        """Read the disk; cut a torn tail; refuse corruption (``WalCorrupt``, nothing
        changed); open the log for appending."""
        rec = Recovered()
        if os.path.exists(self.snap_path):
            with open(self.snap_path, "rb") as f:
                raw = f.read()
            if len(raw) < 4 or zlib.crc32(raw[4:]) != struct.unpack_from("<I", raw)[0]:
                e = WalCorrupt(f"snapshot {self.snap_path} fails its checksum; refusing to "
                               f"start (rebuild this replica from its peers)")
                e.path, e.offset = self.snap_path, 0
                raise e
            rec.snapshot = _decode_snapshot(raw[4:])
        sc = self._log.open(legacy=self._legacy)
        entries: list[Entry] = []
        for kind, payload in sc.records:
            if kind == _KIND_ENTRY:
                e = _decode_entry(payload)
                while entries and entries[-1].index >= e.index:
                    entries.pop()  # a conflicting suffix was overwritten
                entries.append(e)
            elif kind == _KIND_HARD_STATE:
                rec.hard_state = _decode_hs(payload)
            else:
                self._log.close()
                raise WalCorrupt(f"{self.log_path}: unknown record kind {kind}")
        rec.truncated_bytes = sc.torn_bytes
        if rec.snapshot is not None:
            entries = [e for e in entries if e.index > rec.snapshot.index]
        rec.entries = entries
        self._hard_state, self._entries, self._snapshot = rec.hard_state, list(entries), rec.snapshot
        self._open = True
        return rec

    def _legacy(self, data: bytes) -> list[tuple[int, bytes]] | None:
        """Records of a v1 log (before the durable marker), to rewrite in the current format;
        None if ``data`` is not one. v1 had no marker, so only the old rule applies: damage
        followed by an intact record is corruption, otherwise a torn tail."""
        items: list[tuple[int, bytes]] = []
        off = 0
        while off + _HEADER.size <= len(data):
            length, crc, kind = _HEADER.unpack_from(data, off)
            body_at = off + _HEADER.size
            if (length > RECORD_BYTES_MAX or body_at + length > len(data)
                    or zlib.crc32(bytes([kind]) + data[body_at:body_at + length]) != crc
                    or kind not in (_KIND_ENTRY, _KIND_HARD_STATE)):
                break
            items.append((kind, bytes(data[body_at:body_at + length])))
            off = body_at + length
        if data and not items:
            return None
        if off < len(data) and self._valid_v1_record_after(data, off + 1):
            e = WalCorrupt(f"{self.log_path}: a damaged record at byte {off} of this v1 log "
                           f"is followed by valid ones; refusing to drop acknowledged entries")
            e.path, e.offset = self.log_path, off
            raise e
        return items

    @staticmethod
    def _valid_v1_record_after(data: bytes, off: int) -> bool:
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
        commit index in a crash is harmless, Raft learns it again from the leader). Raises
        ``DiskFull``/``DiskFailed``; then nothing of this call is in memory either."""
        if not self._open:
            raise RuntimeError("Wal.recover() must be called before save()")
        if not entries and hard_state is None:
            return
        items = [(_KIND_ENTRY, self._payload(_encode_entry(e))) for e in entries]
        if hard_state is not None:
            items.append((_KIND_HARD_STATE, _encode_hs(hard_state)))
        self._log.append(items, sync=sync)
        for e in entries:
            while self._entries and self._entries[-1].index >= e.index:
                self._entries.pop()
            self._entries.append(e)
        if hard_state is not None:
            self._hard_state = hard_state

    @staticmethod
    def _payload(payload: bytes) -> bytes:
        if len(payload) > RECORD_BYTES_MAX:
            raise ValueError(f"WAL record of {len(payload)} bytes exceeds RECORD_BYTES_MAX="
                             f"{RECORD_BYTES_MAX}")
        return payload

    def save_snapshot(self, snap: Snapshot) -> None:
        """Persist a snapshot (from our own state machine, or installed from the leader) and
        drop the log entries it covers."""
        if self._log.failed is not None:
            raise DiskFailed(self._log.failed.errno, f"{self.log_path}: an earlier fsync "
                             f"failed; this replica must restart before writing again")
        payload = _encode_snapshot(snap)
        try:
            write_atomic(self.snap_path, struct.pack("<I", zlib.crc32(payload)) + payload)
        except OSError as e:
            cls = DiskFull if e.errno == errno.ENOSPC else DiskFailed
            raise cls(e.errno, f"{self.snap_path}: writing the snapshot failed: {e}") from None
        self._snapshot = snap
        # Keep what follows the snapshot only if our log agrees with it at its index: an
        # installed snapshot may be ahead of us, or from a leader whose history differs from
        # our uncommitted tail — then every entry after it is stale and the log restarts.
        at = next((e for e in self._entries if e.index == snap.index), None)
        agrees = at is not None and at.term == snap.term
        keep = [e for e in self._entries if e.index > snap.index] if agrees else []
        if keep and keep[0].index != snap.index + 1:
            keep = []
        items = [(_KIND_ENTRY, _encode_entry(e)) for e in keep]
        if self._hard_state is not None:
            items.append((_KIND_HARD_STATE, _encode_hs(self._hard_state)))
        self._log.rewrite(items)
        self._entries = keep

    def close(self) -> None:
        self._log.close()
        self._open = False

    def size_bytes(self) -> int:
        return os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0

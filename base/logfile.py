"""An append-only log file that never drops a record it acknowledged: the framing and the
recovery rule shared by the Nuwa WAL (``nuwa.io.wal``) and the Pangu master's local journal
(``pangu.io.journal``).

Records
-------
The file starts with a header record (seq 0) and then holds records with consecutive
sequence numbers 1, 2, 3, ...::

    [4s magic "FxR1"][u32 hcrc][u32 length][u64 seq][u64 synced][u8 kind][u32 pcrc][payload]

* ``pcrc`` is the CRC-32 of the payload; ``hcrc`` the CRC-32 of the 25 header bytes after it
  (length, seq, synced, kind, pcrc), seeded with the CRC-32 of the file's random 8-byte id
  ``fid`` (kept in the header record's payload; the header itself uses seed 0). So every byte
  of a record is covered by a checksum over a span of *fixed* length: a damaged length word
  cannot make the reader checksum the wrong span, and CRC-32 detects every burst of up to 32
  bits, i.e. any one flipped bit or byte, always (not "with high probability"). The seed
  makes a record of another file -- or bytes a client smuggled inside a value -- invalid here.
* ``synced`` is the writer's *durable marker*: the seq of the last record that a completed
  fdatasync had made durable when this record was written (0: only the header, which is
  written atomically). Right after every fdatasync returns, the writer appends a payload-less
  MARK record whose ``synced`` names the last record of that batch -- so even the last batch
  is claimed by a record on disk. A file rewritten atomically (temp file, fsync, rename) has
  each record claim its predecessor.

The recovery rule
-----------------
Read records from the start while each is intact and has the next seq. If the file ends
there, it is clean. Otherwise, at the first damaged byte offset ``d`` (the last good seq
being ``L``), scan the rest of the file for intact records; then

* if some intact record claims ``synced > L``, a record the writer had already made durable
  is damaged: **corruption**. Nothing is truncated or rewritten; ``LogCorrupt`` names the
  file and ``d``.
* otherwise it is a **torn tail**: every record at or after ``d`` was written after the last
  completed fdatasync, never acknowledged as durable, and the file is cut at ``d``.

Why this is right, under the crash model "after a crash, the bytes written since the last
completed fdatasync are persisted page by page, in any order, each page new or old/zero, the
file cut anywhere after that point; the bytes before it are intact":

1. *A crash never reads as corruption.* Records up to the last completed sync are intact and
   contiguous, so ``L`` is at least the seq ``S`` of the last record that sync covered, and
   ``d`` lies in the unsynced part. Every record on disk was written before the crash, when
   the newest completed sync covered at most ``S``: each claims ``synced <= S <= L``. Stale
   bytes of an older file fail the seeded checksum. So no record claims more than ``L``.
2. *Damage to a synced record always reads as corruption* (as long as a later record that
   claims it is intact -- after any sync, its MARK is such a record). If a record with seq
   ``j`` is damaged, ``L < j``; the MARK written after the sync that covered ``j`` claims
   ``>= j > L`` and is found by the scan. A damaged header is always corruption: the header
   is written atomically, so it was never torn.
3. *What is kept after a torn tail is a prefix*: the records before ``d`` in order, every
   acknowledged one among them (1.), and nothing after a gap.

Failing disks
-------------
``append`` writes at the known end of the file (``pwrite``). A write that fails leaves the
file cut back to that end; with ENOSPC the log stays usable (``DiskFull``) and the same
append may be retried once space returns. An fdatasync that fails (EIO, or ENOSPC of a file
system that allocates late) is final for this open file (``DiskFailed``, ``failed`` set): the
kernel may already have dropped the dirty pages and marked them clean, so a second fsync
would "succeed" without the data ("fsyncgate", PostgreSQL 2018). The owner must stop writing
and recover by reopening the file from disk (a process restart), which re-reads what is
actually there. Fault points ``<points>.write`` and ``<points>.fsync`` (``base.faults``)
let tests inject these errors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import struct
import time
import zlib
from dataclasses import dataclass, field

from base import faults, metrics

MAGIC = b"FxR1"
_HEAD = struct.Struct("<4sIIQQBI")  # magic, hcrc, length, seq, synced, kind, pcrc
HEAD_BYTES = _HEAD.size
KIND_HEADER = 0
KIND_MARK = 255
FILE_MODE = 0o600
FID_BYTES = 8
FSYNC_SECONDS = metrics.histogram(
    "fuxi_log_fsync_duration_seconds",
    "fdatasync latency of the platform's logs (log=nuwa.io.wal: Nuwa's WAL; pangu: journals).",
    labels=("log",), series_max=16,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))


class LogCorrupt(Exception):
    """Damage before the last synced record: never truncated; ``path`` and ``offset`` say
    where."""

    path: str | None = None
    offset: int | None = None


class DiskFailed(OSError):
    """The disk refused a write or an fdatasync; ``errno`` says why."""


class DiskFull(DiskFailed):
    """ENOSPC: no room on the disk (or quota)."""


@dataclass(frozen=True)
class Record:
    seq: int
    synced: int
    kind: int
    payload: bytes
    offset: int
    end: int


@dataclass
class Scanned:
    """What ``scan`` found: the records to keep (MARKs left out), and where the good part
    ends."""

    fid: bytes
    records: list[tuple[int, bytes]] = field(default_factory=list)  # (kind, payload)
    last_seq: int = 0
    end: int = 0  # byte offset after the last good record
    torn_bytes: int = 0  # bytes after ``end``: a torn tail


def encode(seq: int, synced: int, kind: int, payload: bytes, seed: int) -> bytes:
    body = _HEAD.pack(MAGIC, 0, len(payload), seq, synced, kind, zlib.crc32(payload))
    hcrc = zlib.crc32(body[8:], seed)
    return body[:4] + struct.pack("<I", hcrc) + body[8:] + payload


def _seed(fid: bytes) -> int:
    return zlib.crc32(fid)


def header(fid: bytes, name: str) -> bytes:
    return encode(0, 0, KIND_HEADER, fid + name.encode(), 0)


def parse_at(data: bytes, off: int, seed: int, record_bytes_max: int) -> Record | None:
    """The intact record at ``off``, or None."""
    if off < 0 or off + HEAD_BYTES > len(data):
        return None
    magic, hcrc, length, seq, synced, kind, pcrc = _HEAD.unpack_from(data, off)
    if magic != MAGIC or zlib.crc32(data[off + 8:off + HEAD_BYTES], seed) != hcrc:
        return None
    body = off + HEAD_BYTES
    if length > record_bytes_max or body + length > len(data):
        return None
    payload = bytes(data[body:body + length])
    if zlib.crc32(payload) != pcrc:
        return None
    return Record(seq, synced, kind, payload, off, body + length)


def _corrupt(cls: type, path: str, offset: int, why: str) -> Exception:
    e = cls(f"{path}: damaged at byte {offset}: {why}. This is not a torn tail of an "
            f"unsynced write, so nothing was truncated; restore the file or rebuild this "
            f"replica from its peers")
    e.path, e.offset = path, offset
    return e


def scan(data: bytes, path: str, name: str, record_bytes_max: int,
         corrupt: type = LogCorrupt) -> Scanned:
    """Apply the recovery rule to the bytes of a log file (pure: reads nothing, writes
    nothing). Raises ``corrupt`` (a ``LogCorrupt``) for damage before the last synced
    record."""
    h = parse_at(data, 0, 0, record_bytes_max)
    if (h is None or h.kind != KIND_HEADER or h.seq != 0 or h.synced != 0
            or len(h.payload) < FID_BYTES):
        raise _corrupt(corrupt, path, 0, "the file header is damaged (it is written "
                                         "atomically, so a crash cannot tear it)")
    fid, kind_name = h.payload[:FID_BYTES], h.payload[FID_BYTES:]
    if kind_name != name.encode():
        raise _corrupt(corrupt, path, 0, f"the header names a {kind_name!r} log, expected "
                                         f"{name!r}")
    seed = _seed(fid)
    out = Scanned(fid=fid)
    off, last = h.end, 0
    while off < len(data):
        r = parse_at(data, off, seed, record_bytes_max)
        if r is None or r.seq != last + 1 or not r.synced < r.seq or r.kind == KIND_HEADER:
            break
        last, off = r.seq, r.end
        if r.kind != KIND_MARK:
            out.records.append((r.kind, r.payload))
    out.last_seq, out.end, out.torn_bytes = last, off, len(data) - off
    if off == len(data):
        return out
    pos = off - 1
    while True:
        pos = data.find(MAGIC, pos + 1)
        if pos < 0:
            return out  # a torn tail
        r = parse_at(data, pos, seed, record_bytes_max)
        if r is not None and r.kind != KIND_HEADER and last < r.synced < r.seq:
            raise _corrupt(corrupt, path, off,
                           f"record {last + 1} is missing or damaged, yet the record at "
                           f"byte {pos} says records up to {r.synced} had been made durable")


def fsync_dir(path: str) -> None:
    """Make a rename or create in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LogFile:
    """One log file on disk with the framing and recovery rule above.

    ``open()`` -> the payloads to replay; ``append(items, sync)``; ``rewrite(items)`` (a new
    file, atomically: compaction); ``close()``. ``items`` are ``(kind, payload)`` with
    ``kind`` in 1..254. Error classes are the owner's typed errors (subclasses of
    ``LogCorrupt``, ``DiskFailed``, ``DiskFull``)."""

    def __init__(self, path: str, name: str, points: str, record_bytes_max: int,
                 corrupt: type = LogCorrupt, disk_failed: type = DiskFailed,
                 disk_full: type = DiskFull):
        self.path = os.path.abspath(path)
        self.name = name
        self.points = points
        self.record_bytes_max = record_bytes_max
        self._corrupt, self._disk_failed, self._disk_full = corrupt, disk_failed, disk_full
        self._fd: int | None = None
        self._seed = 0
        self._fid = b""
        self.end = 0  # bytes of good records in the file
        self.synced_bytes = 0  # bytes a completed fdatasync covered
        self.last_seq = 0
        self.synced_seq = 0
        self.failed: OSError | None = None  # an fdatasync failed: this open file is done

    # ------------------------------------------------------------ opening

    def open(self, legacy=None) -> Scanned:
        """Recover: read the file, apply the recovery rule, cut a torn tail, make what is
        kept durable, and open for appending. A missing file is created (header only).
        ``legacy(data) -> list[(kind, payload)] | None`` may read an older format: what it
        returns is rewritten in this format at once."""
        if self.failed is not None:
            return self._reopen_after_failure()
        self.close()
        if not os.path.exists(self.path):
            self._write_new([])
            return Scanned(fid=self._fid)
        with open(self.path, "rb") as f:
            data = f.read()
        if not data.startswith(MAGIC) and legacy is not None:
            items = legacy(data)
            if items is not None:
                self._write_new(items)
                return Scanned(fid=self._fid, records=list(items), last_seq=len(items),
                               end=self.end)
        sc = scan(data, self.path, self.name, self.record_bytes_max, self._corrupt)
        self._fid, self._seed = sc.fid, _seed(sc.fid)
        self._fd = os.open(self.path, os.O_WRONLY)
        if sc.torn_bytes:
            os.ftruncate(self._fd, sc.end)
        self.end = sc.end
        self.last_seq = sc.last_seq
        # What a crashed process left in the page cache may not be on disk yet: make it so
        # before any later record claims it.
        self._sync()
        self._mark()
        return sc

    def _reopen_after_failure(self) -> Scanned:
        """After a failed fdatasync in this process: keep exactly what earlier, successful
        syncs made durable, copied into a new file (new pages, fsynced, renamed), and go on
        with that. The old file's pages are not trusted again (fsyncgate)."""
        with open(self.path, "rb") as f:
            data = f.read(self.synced_bytes)
        sc = scan(data, self.path, self.name, self.record_bytes_max, self._corrupt)
        self._write_new(sc.records)  # raises (and stays failed) if the disk still refuses
        self.failed = None
        return Scanned(fid=self._fid, records=sc.records, last_seq=self.last_seq, end=self.end)

    def _write_new(self, items: list[tuple[int, bytes]]) -> None:
        """A new file holding ``items``: temp file, fsync, rename, fsync the directory."""
        fid = secrets.token_bytes(FID_BYTES)
        seed = _seed(fid)
        buf = bytearray(header(fid, self.name))
        for i, (kind, payload) in enumerate(items, start=1):
            buf += self._encode_checked(i, i - 1, kind, payload, seed)
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            faults.check(self.points + ".write", self.path)
            done = 0
            while done < len(buf):
                done += os.write(fd, buf[done:])
            faults.check(self.points + ".fsync", self.path)
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._typed(e, "writing a new log file") from None
        os.close(fd)
        try:
            os.replace(tmp, self.path)
            fsync_dir(os.path.dirname(self.path))
        except OSError as e:
            raise self._typed(e, "renaming a new log file into place") from None
        self.close()
        self._fid, self._seed = fid, seed
        self._fd = os.open(self.path, os.O_WRONLY)
        self.end = self.synced_bytes = len(buf)
        self.last_seq = self.synced_seq = len(items)
        self._mark()

    # ------------------------------------------------------------ writing

    def _encode_checked(self, seq: int, synced: int, kind: int, payload: bytes,
                        seed: int) -> bytes:
        if not 0 < kind < KIND_MARK:
            raise ValueError(f"record kind {kind}; expected 1..{KIND_MARK - 1}")
        if len(payload) > self.record_bytes_max:
            raise ValueError(f"a log record of {len(payload)} bytes exceeds "
                             f"record_bytes_max={self.record_bytes_max} ({self.path})")
        return encode(seq, synced, kind, payload, seed)

    def _typed(self, e: OSError, doing: str) -> OSError:
        cls = self._disk_full if e.errno in (errno.ENOSPC, errno.EDQUOT) else self._disk_failed
        return cls(e.errno, f"{self.path}: {doing} failed: {e.strerror or e}")

    def append(self, items: list[tuple[int, bytes]], sync: bool = True) -> None:
        """Append ``items``; with ``sync``, make them (and everything before) durable. Raises
        ``DiskFull``/``DiskFailed``; after a failed write the file is as before the call."""
        if self._fd is None:
            raise RuntimeError(f"{self.path}: open() the log before appending")
        if self.failed is not None:
            raise self._typed(self.failed, "an earlier fdatasync")
        if not items:
            return
        seq = self.last_seq
        buf = bytearray()
        for kind, payload in items:
            seq += 1
            buf += self._encode_checked(seq, self.synced_seq, kind, payload, self._seed)
        start, start_seq = self.end, self.last_seq
        self._write(bytes(buf))
        self.last_seq = seq
        if sync:
            try:
                self._sync()
            except OSError:
                # Not durable, and never to be made so by this file: cut it out of what this
                # process reads back, so a reopen does not replay an append that failed.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
                self.end, self.last_seq = start, start_seq
                raise
            self._mark()

    def _write(self, buf: bytes) -> None:
        try:
            faults.check(self.points + ".write", self.path)
            done = 0
            while done < len(buf):
                done += os.pwrite(self._fd, buf[done:], self.end + done)
        except OSError as e:
            try:  # leave no partial record for the next append to follow
                os.ftruncate(self._fd, self.end)
            except OSError as e2:
                self.failed = e2
            raise self._typed(e, "appending") from None
        self.end += len(buf)

    def _sync(self) -> None:
        try:
            faults.check(self.points + ".fsync", self.path)
            t0 = time.perf_counter()
            os.fdatasync(self._fd)
            FSYNC_SECONDS.observe(time.perf_counter() - t0, log=self.points)
        except OSError as e:
            self.failed = e  # never fsync this file again and believe it (fsyncgate)
            raise self._typed(e, "fdatasync") from None
        self.synced_seq, self.synced_bytes = self.last_seq, self.end

    def _mark(self) -> None:
        """Claim the sync that just completed. Best effort: if it cannot be written the data
        is durable all the same; only damage to the last batch goes unrecognised until the
        next sync's mark."""
        if self.synced_seq == 0:
            return  # only the header: it is atomic, nothing to claim
        rec = encode(self.last_seq + 1, self.synced_seq, KIND_MARK, b"", self._seed)
        try:
            self._write(rec)
        except OSError:
            return
        self.last_seq += 1

    def rewrite(self, items: list[tuple[int, bytes]]) -> None:
        """Replace the file with one holding ``items``, atomically (compaction)."""
        if self.failed is not None:
            raise self._typed(self.failed, "an earlier fdatasync")
        self._write_new(items)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def size_bytes(self) -> int:
        return self.end

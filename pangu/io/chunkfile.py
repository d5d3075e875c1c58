"""One chunk replica on a chunkserver's disk, with a checksum per block.

Two files per replica under the server's directory:

    <chunk>.data   the bytes (at most the chunk size)
    <chunk>.sums   one little-endian u32 CRC-32 per BLOCK_BYTES block of .data

Every read verifies each block it touches, in full, and raises ``ChecksumError`` naming the
chunk and block, so the client reads another replica and the master repairs this one. A write
at any offset (random write, append) first verifies the partial blocks at its edges -- never
re-checksum bytes that are already corrupt -- then writes the data and the new sums. A crash
between the two leaves a mismatch that the next read or the scrubber detects; a replica that
missed writes is caught by the chunk version the master keeps, not here.

A disk that refuses a write raises ``DiskFull`` (ENOSPC) or ``DiskFailed``; a write that
failed is cut back to the replica's old length, so space returning is all it takes to write
again. A failed fdatasync raises ``DiskFailed``: the bytes since the last good sync are in
doubt and the chunkserver must not acknowledge them (it stops taking writes; the master
leaves the replica behind at an older version). Fault points ``pangu.chunk.write`` and
``pangu.chunk.fsync`` (``base.faults``) inject these in tests.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import zlib

from base import faults
from pangu.errors import BadRequest, ChecksumError, DiskFailed, DiskFull, NotFound

BLOCK_BYTES = 64 * 1024
_SUM = struct.Struct("<I")
CHUNK_ID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz-_")


def _disk_error(e: OSError, chunk: str, doing: str) -> DiskFailed:
    cls = DiskFull if e.errno in (errno.ENOSPC, errno.EDQUOT) else DiskFailed
    return cls(e.errno, f"chunk {chunk}: {doing} failed: {e.strerror or e}")


def _fdatasync(fd: int, path: str, chunk: str) -> None:
    try:
        faults.check("pangu.chunk.fsync", path)
        os.fdatasync(fd)
    except OSError as e:
        raise _disk_error(e, chunk, "fdatasync") from None


def _check_id(chunk: str) -> str:
    if not chunk or len(chunk) > 64 or not set(chunk) <= CHUNK_ID_CHARS:
        raise BadRequest(f"bad chunk id {chunk!r}; expected 1-64 characters of [0-9a-z-_]")
    return chunk


class ChunkFile:
    def __init__(self, directory: str, chunk: str, capacity_bytes: int):
        if capacity_bytes < 1:
            raise BadRequest(f"chunk capacity must be >= 1 byte, got {capacity_bytes}")
        self.chunk = _check_id(chunk)
        self.capacity_bytes = capacity_bytes
        self.data_path = os.path.join(directory, chunk + ".data")
        self.sums_path = os.path.join(directory, chunk + ".sums")

    # ------------------------------------------------------------ lifecycle
    def create(self) -> "ChunkFile":
        for p in (self.data_path, self.sums_path):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
        return self

    def exists(self) -> bool:
        return os.path.exists(self.data_path) and os.path.exists(self.sums_path)

    def remove(self) -> None:
        for p in (self.data_path, self.sums_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def length(self) -> int:
        try:
            return os.path.getsize(self.data_path)
        except FileNotFoundError:
            raise NotFound(f"chunk {self.chunk} is not on this server") from None

    # ------------------------------------------------------------ reads
    def read(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset`` (fewer at the end of the chunk), verified."""
        return bytes(self.read_view(offset, n))

    def read_view(self, offset: int, n: int) -> memoryview:
        """Like ``read``, without copying out of the read buffer."""
        if offset < 0 or n < 0:
            raise BadRequest(f"read of chunk {self.chunk}: offset {offset} and length {n} "
                             f"must be >= 0")
        length = self.length()
        end = min(offset + n, length)
        if offset >= end:
            return memoryview(b"")
        first, last = offset // BLOCK_BYTES, (end - 1) // BLOCK_BYTES
        lo = first * BLOCK_BYTES
        hi = min((last + 1) * BLOCK_BYTES, length)
        buf = bytearray(hi - lo)
        with open(self.data_path, "rb", buffering=0) as f:
            f.seek(lo)
            got = f.readinto(buf)
        if got != len(buf):
            del buf[got:]
        sums = self._read_sums(first, last)
        if len(buf) != hi - lo:
            raise ChecksumError(f"chunk {self.chunk}: data file shorter than its length",
                                self.chunk, first)
        view = memoryview(buf)
        for i, b in enumerate(range(first, last + 1)):
            blk = view[i * BLOCK_BYTES:(i + 1) * BLOCK_BYTES]
            if i >= len(sums) or zlib.crc32(blk) != sums[i]:
                raise ChecksumError(f"chunk {self.chunk}: block {b} fails its checksum "
                                    f"(bytes {b * BLOCK_BYTES}-{b * BLOCK_BYTES + len(blk) - 1})",
                                    self.chunk, b)
        return view[offset - lo:end - lo]

    def verify(self) -> list[int]:
        """Blocks that fail their checksum (the scrubber's check); [] when all is well."""
        length = self.length()
        blocks = (length + BLOCK_BYTES - 1) // BLOCK_BYTES
        bad = []
        sums = self._read_sums(0, blocks - 1) if blocks else []
        with open(self.data_path, "rb") as f:
            for b in range(blocks):
                blk = f.read(BLOCK_BYTES)
                if b >= len(sums) or zlib.crc32(blk) != sums[b]:
                    bad.append(b)
        return bad

    def _read_sums(self, first: int, last: int) -> list[int]:
        with open(self.sums_path, "rb") as f:
            f.seek(first * _SUM.size)
            raw = f.read((last - first + 1) * _SUM.size)
        return [_SUM.unpack_from(raw, i)[0] for i in range(0, len(raw) - len(raw) % 4, 4)]

    # ------------------------------------------------------------ writes
    def write(self, offset: int, data, *, sync: bool = True, sums: bytes | None = None) -> int:
        """Write ``data`` at ``offset`` (at most the current length: no holes); returns the
        new length. ``sync`` makes it durable (fdatasync) before returning. ``sums`` are the
        touched blocks' checksums as another replica computed them (``checksums``): the
        replicas of a chunk hold the same bytes, so one computation serves all; a replica
        whose own edge bytes differ then fails its checksum on read and is repaired."""
        data = memoryview(data).cast("B")
        length = self.length()
        if offset < 0 or offset > length:
            raise BadRequest(f"write to chunk {self.chunk} at offset {offset}: expected an "
                             f"offset between 0 and its length {length} (no holes)")
        end = offset + len(data)
        if end > self.capacity_bytes:
            raise BadRequest(f"write to chunk {self.chunk} would end at byte {end}, beyond its "
                             f"capacity of {self.capacity_bytes} bytes")
        if not data:
            return length
        first, last = offset // BLOCK_BYTES, (end - 1) // BLOCK_BYTES
        new_length = max(length, end)
        if sums is None:
            sums = self.checksums(offset, data, length)
        elif len(sums) != (last - first + 1) * _SUM.size:
            raise BadRequest(f"write to chunk {self.chunk}: {len(sums)} bytes of checksums for "
                             f"{last - first + 1} blocks")
        dfd = os.open(self.data_path, os.O_WRONLY)
        sfd = os.open(self.sums_path, os.O_WRONLY)
        try:
            try:
                done = 0
                while done < len(data):  # the caller's buffer goes to the file with no copy
                    done += os.pwrite(dfd, data[done:], offset + done)
                faults.check("pangu.chunk.write", self.sums_path)  # the disk fills up midway
                os.pwrite(sfd, sums, first * _SUM.size)
            except OSError as e:
                if end > length:  # leave no half-written tail behind the checksums
                    with contextlib.suppress(OSError):
                        os.ftruncate(dfd, length)
                raise _disk_error(e, self.chunk, "writing") from None
            if sync:
                _fdatasync(dfd, self.data_path, self.chunk)
                _fdatasync(sfd, self.sums_path, self.chunk)
        finally:
            os.close(dfd)
            os.close(sfd)
        return new_length

    def checksums(self, offset: int, data, length: int | None = None) -> bytes:
        """The checksums of the blocks a write of ``data`` at ``offset`` touches. Blocks the
        write covers completely come from the data itself; a partial block at either edge is
        merged with the replica's existing bytes there, read verified (never re-checksum bytes
        that are already corrupt)."""
        data = memoryview(data).cast("B")
        length = self.length() if length is None else length
        end = offset + len(data)
        new_length = max(length, end)
        out = []
        for b in range(offset // BLOCK_BYTES, (end - 1) // BLOCK_BYTES + 1):
            lo, hi = b * BLOCK_BYTES, min((b + 1) * BLOCK_BYTES, new_length)
            if offset <= lo and end >= hi:
                out.append(_SUM.pack(zlib.crc32(data[lo - offset:hi - offset])))
                continue
            old_hi = min(hi, length)
            block = bytearray(self.read_view(lo, old_hi - lo)) if old_hi > lo else bytearray()
            block.extend(b"\0" * (hi - lo - len(block)))
            a, z = max(offset, lo), min(end, hi)
            block[a - lo:z - lo] = data[a - offset:z - offset]
            out.append(_SUM.pack(zlib.crc32(block)))
        return b"".join(out)

    def sync(self) -> None:
        """Make every write so far durable (fdatasync of the data and the sums)."""
        for p in (self.data_path, self.sums_path):
            fd = os.open(p, os.O_RDONLY)
            try:
                _fdatasync(fd, p, self.chunk)
            finally:
                os.close(fd)

    def truncate(self, length: int, *, sync: bool = True) -> None:
        """Cut the replica to ``length`` bytes (a file truncated inside this chunk)."""
        cur = self.length()
        if not 0 <= length <= cur:
            raise BadRequest(f"truncate chunk {self.chunk} to {length}: expected 0..{cur}")
        keep_blocks = (length + BLOCK_BYTES - 1) // BLOCK_BYTES
        tail = length % BLOCK_BYTES
        last_sum = b""
        if tail:
            blk = self.read((keep_blocks - 1) * BLOCK_BYTES, tail)
            last_sum = _SUM.pack(zlib.crc32(blk))
        os.truncate(self.data_path, length)
        with open(self.sums_path, "r+b") as f:
            if last_sum:
                f.seek((keep_blocks - 1) * _SUM.size)
                f.write(last_sum)
            f.truncate(keep_blocks * _SUM.size)
            if sync:
                f.flush()
                _fdatasync(f.fileno(), self.sums_path, self.chunk)

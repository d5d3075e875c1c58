"""The Pangu master's operation log: every namespace command is durable here before the
master acknowledges it, and a restarted or standby master rebuilds the namespace from the
latest checkpoint plus the entries after it.

Two implementations of one small interface (``append``, ``load``, ``checkpoint``):

* ``LocalJournal`` -- a file on the master's disk (the embedded single-machine default): JSON
  entries in a ``base.logfile`` log (sequence numbers, CRCs over every byte, a durable marker
  after each sync), fdatasync per append. On load, a torn tail (the one entry being appended
  when the master crashed, never acknowledged) is cut off; damage to anything synced before it
  is corruption: ``JournalCorrupt`` names the file and byte offset and nothing is truncated --
  a truncation would drop acknowledged changes, and the garbage collector would then delete
  their chunks. ``base.logfile``'s docstring proves the rule. A failed write raises
  ``DiskFull`` (ENOSPC; the file is left as before, appends work again once space returns) or
  ``DiskFailed``; after a failed fdatasync the journal refuses every append until it is
  reopened by a restarted master (fsyncgate: never fsync again and believe it). Fault points
  ``pangu.io.journal.write`` / ``pangu.io.journal.fsync``. Checkpoints are written atomically
  (temp file, fsync, rename) and the log is then restarted (a new file, atomically).
* ``NuwaJournal`` -- entries are Nuwa nodes ``<root>/log/<seq>`` (Raft-replicated), the design
  of HDFS's quorum journal with Nuwa as the quorum. Appending is *create-if-absent* at the next
  sequence number, which fences a deposed master: once a new master has written entry N, the
  old one's write of N fails and it learns it is no longer active (``Deposed``). Checkpoints are
  split into parts of at most CHECKPOINT_PART_BYTES and published by one ``current`` node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import uuid
import zlib
from typing import Any

from base.logfile import LogCorrupt, LogFile
from nuwa.io.wal import write_atomic
from pangu.errors import DiskFailed, DiskFull, PanguError

CHECKPOINT_EVERY = 10_000  # log entries between checkpoints
CHECKPOINT_PART_BYTES = 512 * 1024  # one Nuwa value of a checkpoint
ENTRY_BYTES_MAX = 256 * 1024  # one command, encoded
_HEAD = struct.Struct("<II")  # the old (v1) local format: length, crc32
_KIND_ENTRY = 1
_CKPT_MAGIC = b"PGCK2\n"  # a checkpoint: magic, _CKPT_HEAD, JSON
_CKPT_HEAD = struct.Struct("<II")  # crc32 of the JSON, its length


class Deposed(PanguError):
    """Another master has written to the journal: this one is no longer active."""


class JournalCorrupt(PanguError, LogCorrupt):
    """The journal is damaged in a way a crash cannot explain; ``path`` and ``offset`` (for the
    local journal) say where. The master refuses to start rather than drop acknowledged
    changes."""


def _encode(obj: Any) -> bytes:
    data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    if len(data) > ENTRY_BYTES_MAX:
        raise PanguError(f"a journal entry of {len(data)} bytes exceeds ENTRY_BYTES_MAX="
                         f"{ENTRY_BYTES_MAX}")
    return data


class LocalJournal:
    def __init__(self, directory: str):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.log_path = os.path.join(directory, "journal.log")
        self.ckpt_path = os.path.join(directory, "checkpoint.json")
        self.seq = 0  # last sequence number written or loaded
        self._log = LogFile(self.log_path, "pangu-journal", "pangu.io.journal",
                            ENTRY_BYTES_MAX + 64, corrupt=JournalCorrupt,
                            disk_failed=DiskFailed, disk_full=DiskFull)
        self.fsid: str | None = None

    def _load_fsid(self) -> str:
        """This file system's id, made when the journal is first used; chunkservers holding
        another file system's chunks are not taken over (their chunks would look unknown)."""
        path = os.path.join(self.dir, "fsid")
        try:
            with open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            fsid = uuid.uuid4().hex
            write_atomic(path, fsid.encode())
            return fsid

    def load(self) -> tuple[dict | None, list[dict]]:
        """(checkpoint or None, the commands after it, in order); sets ``seq``. Raises
        ``JournalCorrupt`` (the file unchanged) for damage before the last synced entry."""
        self.fsid = self._load_fsid()
        ckpt, base = self._read_checkpoint()
        sc = self._log.open(legacy=self._legacy)
        entries: list[dict] = []
        for kind, body in sc.records:
            try:
                rec = json.loads(body)
                seq, cmd = int(rec["seq"]), rec["cmd"]
            except (ValueError, KeyError, TypeError):
                self._log.close()
                raise JournalCorrupt(f"{self.log_path}: an entry with a good checksum is not "
                                     f"a journal entry: {body[:80]!r}") from None
            if kind != _KIND_ENTRY:
                self._log.close()
                raise JournalCorrupt(f"{self.log_path}: unknown record kind {kind}")
            if seq > base:
                if seq != base + len(entries) + 1:
                    self._log.close()
                    raise JournalCorrupt(f"{self.log_path}: entry {seq} follows "
                                         f"{base + len(entries)}")
                entries.append(cmd)
        self.seq = base + len(entries)
        return ckpt, entries

    def _read_checkpoint(self) -> tuple[dict | None, int]:
        """(namespace, seq) of the checkpoint, verified; (None, 0) if there is none. Written
        as ``_CKPT_MAGIC [u32 crc32][u32 length] json``; an older one is plain JSON."""
        try:
            with open(self.ckpt_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None, 0
        body = raw
        if raw.startswith(_CKPT_MAGIC):
            at = len(_CKPT_MAGIC)
            crc, n = (_CKPT_HEAD.unpack_from(raw, at) if len(raw) >= at + _CKPT_HEAD.size
                      else (0, -1))
            body = raw[at + _CKPT_HEAD.size:]
            if n != len(body) or zlib.crc32(body) != crc:
                e = JournalCorrupt(f"{self.ckpt_path}: damaged at byte 0: the checkpoint fails "
                                   f"its checksum; refusing to start from it")
                e.path, e.offset = self.ckpt_path, 0
                raise e
        try:
            doc = json.loads(body)
            return doc["namespace"], int(doc["seq"])
        except (ValueError, KeyError, TypeError):
            e = JournalCorrupt(f"{self.ckpt_path}: damaged at byte 0: not a checkpoint; "
                               f"refusing to start from it")
            e.path, e.offset = self.ckpt_path, 0
            raise e from None

    def _legacy(self, raw: bytes) -> list[tuple[int, bytes]] | None:
        """Entries of a v1 journal (no durable marker), to rewrite in the current format; None
        if ``raw`` is not one. Damage followed by an intact entry is corruption."""
        items, pos = [], 0
        while pos + _HEAD.size <= len(raw):
            n, crc = _HEAD.unpack_from(raw, pos)
            body = raw[pos + _HEAD.size: pos + _HEAD.size + n]
            if n > ENTRY_BYTES_MAX + 64 or len(body) < n or zlib.crc32(body) != crc:
                break
            items.append((_KIND_ENTRY, bytes(body)))
            pos += _HEAD.size + n
        if raw and not items:
            return None
        for at in range(pos + 1, len(raw) - _HEAD.size + 1):
            n, crc = _HEAD.unpack_from(raw, at)
            body = raw[at + _HEAD.size: at + _HEAD.size + n]
            if n <= ENTRY_BYTES_MAX + 64 and len(body) == n and zlib.crc32(body) == crc:
                e = JournalCorrupt(f"{self.log_path}: a damaged entry at byte {pos} of this v1 "
                                   f"journal is followed by intact ones; refusing to drop them")
                e.path, e.offset = self.log_path, pos
                raise e
        return items

    async def append(self, cmd: dict) -> int:
        """Make ``cmd`` durable as entry ``seq + 1``. ``DiskFull``/``DiskFailed`` if the disk
        refuses; then the entry is not in the journal (after ``DiskFailed`` it may or may not
        be on disk: the journal takes no more appends until reopened).

        The write and its fdatasync run on a thread, so the master's event loop (heartbeats,
        reads, lease renewals) goes on meanwhile; the caller serialises appends (the master's
        mutation lock), so entries stay in order."""
        body = _encode({"seq": self.seq + 1, "cmd": cmd})
        await asyncio.to_thread(self._log.append, [(_KIND_ENTRY, body)])
        self.seq += 1
        return self.seq

    async def checkpoint(self, namespace_snapshot: dict) -> None:
        """Write the namespace (serialised here, on the caller's loop, so it is the state of
        this moment) and start an empty log; the file writes and fsyncs run on a thread."""
        body = json.dumps({"seq": self.seq, "namespace": namespace_snapshot}).encode()
        await asyncio.to_thread(self._write_checkpoint, body)

    def _write_checkpoint(self, body: bytes) -> None:
        write_atomic(self.ckpt_path,
                     _CKPT_MAGIC + _CKPT_HEAD.pack(zlib.crc32(body), len(body)) + body)
        # Entries up to seq are in the checkpoint; start an empty log, atomically (a crash
        # before this only leaves entries that load() skips).
        self._log.rewrite([])

    @property
    def failed(self) -> OSError | None:
        """The fdatasync error that ended this open journal, if any."""
        return self._log.failed

    def close(self) -> None:
        self._log.close()


class NuwaJournal:
    """The journal in Nuwa (an ``AsyncNuwa`` client), under ``root``.

    Fencing: ``claim`` (called by a master when it becomes active) rewrites ``<root>/epoch``
    and remembers the node's new version; every later write is a Nuwa transaction that first
    checks that version. Once another master has claimed the journal, this one's writes fail
    with ``Deposed`` -- the role of the epoch number in HDFS's quorum journal."""

    def __init__(self, client, root: str = "/pangu", identity: str = "pangu-master"):
        self.client = client
        self.root = root.rstrip("/")
        self.identity = identity
        self.seq = 0
        self.epoch_version: int | None = None
        self.fsid: str | None = None

    def _entry(self, seq: int) -> str:
        return f"{self.root}/log/{seq:012d}"

    async def claim(self) -> None:
        from nuwa import errors as NE

        for d in (self.root, f"{self.root}/log", f"{self.root}/ckpt"):
            try:
                await self.client.create(d + "/", parents=True)
            except NE.NodeExists:
                pass
        try:
            await self.client.create(f"{self.root}/fsid", uuid.uuid4().hex.encode())
        except NE.NodeExists:
            pass
        try:
            stat = await self.client.set(f"{self.root}/epoch", self.identity.encode())
        except NE.NoNode:
            try:
                await self.client.create(f"{self.root}/epoch", self.identity.encode())
            except NE.NodeExists:
                pass
            stat = await self.client.set(f"{self.root}/epoch", self.identity.encode())
        self.epoch_version = int(stat["version"])

    async def _write(self, *ops: dict) -> None:
        from nuwa.core import commands as C
        from nuwa import errors as NE

        if self.epoch_version is None:
            raise Deposed("this master has not claimed the journal (claim() first)")
        try:
            await self.client.txn([C.check(f"{self.root}/epoch", version=self.epoch_version),
                                   *ops])
        except NE.TxnFailed as e:
            if getattr(e, "index", None) == 0:
                self.epoch_version = None
                raise Deposed("another master has claimed the journal; this master is no "
                              "longer active") from None
            raise

    async def load(self) -> tuple[dict | None, list[dict]]:
        from nuwa import errors as NE

        ckpt, base = None, 0
        with contextlib.suppress(NE.NoNode):
            self.fsid = (await self.client.get(f"{self.root}/fsid"))[0].decode()
        try:
            value, _ = await self.client.get(f"{self.root}/current")
            cur = json.loads(value)
            base = int(cur["seq"])
            parts = []
            for k in range(int(cur["parts"])):
                v, _ = await self.client.get(f"{self.root}/ckpt/{base:012d}-{k:06d}")
                parts.append(v)
            ckpt = json.loads(b"".join(parts))
        except NE.NoNode:
            pass
        try:
            names = sorted(n for n in await self.client.list(f"{self.root}/log/") if n.isdigit())
        except NE.NoNode:
            names = []
        entries = []
        for name in names:
            seq = int(name)
            if seq <= base:
                continue
            if seq != base + len(entries) + 1:
                raise JournalCorrupt(f"Nuwa journal {self.root}: entry {seq} follows "
                                     f"{base + len(entries)}")
            v, _ = await self.client.get(self._entry(seq))
            entries.append(json.loads(v))
        self.seq = base + len(entries)
        return ckpt, entries

    async def append(self, cmd: dict) -> int:
        from nuwa.core import commands as C

        await self._write(C.create(self._entry(self.seq + 1), _encode(cmd),
                                   creator=self.identity))
        self.seq += 1
        return self.seq

    async def checkpoint(self, namespace_snapshot: dict) -> None:
        from nuwa.core import commands as C
        from nuwa import errors as NE

        data = json.dumps(namespace_snapshot, separators=(",", ":")).encode()
        seq = self.seq
        parts = [data[i:i + CHECKPOINT_PART_BYTES]
                 for i in range(0, len(data), CHECKPOINT_PART_BYTES)] or [b""]
        for k, part in enumerate(parts):
            path = f"{self.root}/ckpt/{seq:012d}-{k:06d}"
            with contextlib.suppress(NE.NoNode):
                await self.client.delete(path)  # a part left by an interrupted checkpoint
            await self._write(C.create(path, part, creator=self.identity))
        old = None
        try:
            value, _ = await self.client.get(f"{self.root}/current")
            old = json.loads(value)
        except NE.NoNode:
            pass
        cur = json.dumps({"seq": seq, "parts": len(parts)}).encode()
        await self._write(C.create(f"{self.root}/current", cur, creator=self.identity)
                          if old is None else C.set_value(f"{self.root}/current", cur))
        # What the checkpoint covers is no longer needed (fencing does not depend on these
        # entries: it is the epoch check).
        for name in await self.client.list(f"{self.root}/log/"):
            if name.isdigit() and int(name) <= seq:
                with contextlib.suppress(NE.NoNode):
                    await self.client.delete(self._entry(int(name)))
        if old is not None and int(old["seq"]) != seq:
            for k in range(int(old["parts"])):
                with contextlib.suppress(NE.NoNode):
                    await self.client.delete(f"{self.root}/ckpt/{int(old['seq']):012d}-{k:06d}")

    def close(self) -> None:
        pass

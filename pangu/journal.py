"""The Pangu master's operation log: every namespace command is durable here before the
master acknowledges it, and a restarted or standby master rebuilds the namespace from the
latest checkpoint plus the entries after it.

Two implementations of one small interface (``append``, ``load``, ``checkpoint``):

* ``LocalJournal`` -- a file on the master's disk (the embedded single-machine default):
  length- and CRC-framed JSON records, fdatasync per append; a torn last record from a crash is
  ignored on load. Checkpoints are written atomically (temp file, fsync, rename) and the log is
  then restarted.
* ``NuwaJournal`` -- entries are Nuwa nodes ``<root>/log/<seq>`` (Raft-replicated), the design
  of HDFS's quorum journal with Nuwa as the quorum. Appending is *create-if-absent* at the next
  sequence number, which fences a deposed master: once a new master has written entry N, the
  old one's write of N fails and it learns it is no longer active (``Deposed``). Checkpoints are
  split into parts of at most CHECKPOINT_PART_BYTES and published by one ``current`` node.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import uuid
import zlib
from typing import Any

from nuwa.wal import write_atomic
from pangu.errors import PanguError

CHECKPOINT_EVERY = 10_000  # log entries between checkpoints
CHECKPOINT_PART_BYTES = 512 * 1024  # one Nuwa value of a checkpoint
ENTRY_BYTES_MAX = 256 * 1024  # one command, encoded
_HEAD = struct.Struct("<II")  # length, crc32


class Deposed(PanguError):
    """Another master has written to the journal: this one is no longer active."""


class JournalCorrupt(PanguError):
    pass


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
        self._fd: int | None = None
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
        """(checkpoint or None, the commands after it, in order); sets ``seq``."""
        self.fsid = self._load_fsid()
        ckpt, base = None, 0
        if os.path.exists(self.ckpt_path):
            with open(self.ckpt_path) as f:
                doc = json.load(f)
            ckpt, base = doc["namespace"], int(doc["seq"])
        entries: list[dict] = []
        good_bytes = 0
        if os.path.exists(self.log_path):
            with open(self.log_path, "rb") as f:
                raw = f.read()
            pos = 0
            while pos + _HEAD.size <= len(raw):
                n, crc = _HEAD.unpack_from(raw, pos)
                body = raw[pos + _HEAD.size: pos + _HEAD.size + n]
                if len(body) < n or zlib.crc32(body) != crc:
                    break  # a torn write at the tail: the command was never acknowledged
                rec = json.loads(body)
                if rec["seq"] > base:
                    if rec["seq"] != base + len(entries) + 1:
                        raise JournalCorrupt(f"{self.log_path}: entry {rec['seq']} follows "
                                             f"{base + len(entries)}")
                    entries.append(rec["cmd"])
                pos += _HEAD.size + n
                good_bytes = pos
            if good_bytes < len(raw):
                os.truncate(self.log_path, good_bytes)
        self.seq = base + len(entries)
        return ckpt, entries

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return self._fd

    async def append(self, cmd: dict) -> int:
        body = _encode({"seq": self.seq + 1, "cmd": cmd})
        fd = self._open()
        os.write(fd, _HEAD.pack(len(body), zlib.crc32(body)) + body)
        os.fdatasync(fd)
        self.seq += 1
        return self.seq

    async def checkpoint(self, namespace_snapshot: dict) -> None:
        write_atomic(self.ckpt_path,
                     json.dumps({"seq": self.seq, "namespace": namespace_snapshot}).encode())
        # Entries up to seq are in the checkpoint; start an empty log (a crash before this
        # truncation only leaves entries that load() skips).
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with open(self.log_path, "wb") as f:
            os.fsync(f.fileno())
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
        from nuwa import commands as C
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
        from nuwa import commands as C

        await self._write(C.create(self._entry(self.seq + 1), _encode(cmd),
                                   creator=self.identity))
        self.seq += 1
        return self.seq

    async def checkpoint(self, namespace_snapshot: dict) -> None:
        from nuwa import commands as C
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

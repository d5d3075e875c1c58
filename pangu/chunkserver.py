"""The Pangu chunkserver: one async Ray actor per node (several per node in tests), keeping
chunk replicas as checksummed files (``pangu.io.chunkfile``) in a directory of its own.

Directory ownership. A chunkserver adopts the first unclaimed directory under
``<data_dir>/pangu/<kind>/chunks/`` -- claimed by an exclusive ``flock`` that lives as long as the
actor's process -- or makes a new one. Its server id is stored in that directory, so a
chunkserver restarted on the same disk comes back with the same id and the same chunks.

Writes. The master makes one replica of a chunk its *primary* with a lease
(``grant_lease``). A writer sends each write to the primary with the data as a Ray object
reference (put once, read zero-copy by every replica on the node). The primary applies the
writes of a chunk one at a time (a lock per chunk), writing locally and forwarding the same
reference to the secondaries at once, and acknowledges only when every replica has the bytes on
disk (fdatasync). A secondary refuses a write at another version than its own
(``StaleReplica``): a replica that missed writes has been left behind at an older version by the
master, and is never read or written again -- it is deleted and replaced.

Every read verifies the checksums of the blocks it touches; a replica that fails is taken out
of service at once (its files are moved aside) and reported to the master, which repairs it
from another copy. A scrubber verifies idle replicas in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import time

import pyarrow as pa
import ray

from nuwa.io.wal import write_atomic
from pangu.core import access as A
from pangu.core.hotservers import QueueMeter
from pangu.io.chunkfile import BLOCK_BYTES, ChunkFile
from pangu.errors import (BadRequest, ChecksumError, Denied, LeaseExpired, NoSpace, NotActive,
                          NotFound, PanguError, ReplicaWriteFailed, StaleReplica, Unauthenticated)
from pangu.errors import DiskFailed
from pangu.handles import Handles

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0
SCRUB_INTERVAL_S = 2.0  # one idle replica verified per interval
SCRUB_IDLE_S = 5.0  # a replica written this recently is not scrubbed yet
REPLICA_CALL_TIMEOUT_S = 60.0  # primary -> secondary write, or a copy's read from its source
WRITE_ORDER_WAIT_S = 60.0  # a piece waits this long for the writer's previous one
READ_BYTES_MAX = 64 * 1024 * 1024  # one read call
CAPACITY_DEFAULT_BYTES = 1 << 40  # the cap when the disk itself is larger
WRITE_TOKEN_CHARS_MAX = 256  # a writer's lease token (it numbers its pieces under it)
WRITE_SEQ_MAX = 2 ** 62  # a piece's number under that token
MASTERS_NAMED_MAX = 8  # masters a chunkserver heartbeats to


def pangu_root(data_dir: str, kind: str) -> str:
    """Pangu's files under a cluster's data directory. ``kind`` is the master's journal:
    ``local`` (the embedded default, or `fuxi up` without Nuwa) or ``nuwa``. Each kind is a
    separate file system with its own chunks, so one never collects the other's."""
    if kind not in ("local", "nuwa"):
        raise BadRequest(f"Pangu storage kind {kind!r}; expected local or nuwa")
    return os.path.join(data_dir, "pangu", kind)


def chunk_root(data_dir: str, kind: str = "local") -> str:
    return os.path.join(pangu_root(data_dir, kind), "chunks")


def claim_directory(root: str) -> tuple[str, str, int]:
    """(server id, directory, locked fd): adopt an unclaimed directory or create one."""
    os.makedirs(root, exist_ok=True)
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        meta = os.path.join(d, "server.json")
        if not os.path.isfile(meta):
            continue
        fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        with open(meta) as f:
            return json.load(f)["id"], d, fd
    sid = f"cs-{secrets.token_hex(4)}"
    d = os.path.join(root, sid)
    os.makedirs(d)
    fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _write_json(os.path.join(d, "server.json"), {"id": sid, "created": time.time()})
    return sid, d, fd


def _write_json(path: str, doc: dict) -> None:
    write_atomic(path, json.dumps(doc).encode())


class _Replica:
    __slots__ = ("file", "version", "lock", "written_at", "length")

    def __init__(self, file: ChunkFile, version: int, length: int):
        self.file = file
        self.version = version
        self.lock = asyncio.Lock()
        self.written_at = 0.0
        self.length = length


@ray.remote(num_cpus=0, max_restarts=0)
class ChunkServer:
    def __init__(self, cluster: str, data_dir: str, namespace: str,
                 capacity_bytes: int | None = None, heartbeat_s: float = HEARTBEAT_S,
                 scrub_interval_s: float = SCRUB_INTERVAL_S, name: str | None = None,
                 kind: str = "local", auth: dict | None = None):
        from zhongkui.files import private_files
        from zhongkui.shell import make_guard

        private_files()  # chunks: 0600 files under 0700 directories (issue 14)

        self.cluster = cluster
        # Zhongkui: reads and writes carry the master's chunk access tokens, checked here;
        # control calls come only from the platform's own actors.
        self.guard = make_guard(auth, f"chunkserver-{name or '?'}", namespace)
        self.namespace = namespace
        self.sid, self.dir, self._lock_fd = claim_directory(chunk_root(data_dir, kind))
        self.name = name or f"pangu-{self.sid}"
        self.node = ray.get_runtime_context().get_node_id()
        st = os.statvfs(self.dir)
        disk = st.f_blocks * st.f_frsize
        self.capacity_bytes = int(capacity_bytes or min(disk, CAPACITY_DEFAULT_BYTES))
        self.heartbeat_s = heartbeat_s
        self.scrub_interval_s = scrub_interval_s
        self.replicas: dict[str, _Replica] = {}
        self.leases: dict[str, tuple[int, list[str], float]] = {}  # cid -> version, secs, until
        self.corrupt: list[str] = []  # found bad since the last heartbeat
        self.queue = QueueMeter(time.monotonic())  # reads and writes in flight (hot spots)
        with open(os.path.join(self.dir, "server.json")) as f:
            doc = json.load(f)
        self.master_epoch = int(doc.get("master_epoch", 0))  # the newest master term heard
        self.fsid: str | None = doc.get("fsid")  # the file system these chunks belong to
        self._foreign_warned = False
        self.scrubbed = 0
        self.draining = False
        self._handles = Handles(namespace)
        self._order: dict[str, asyncio.Condition] = {}  # cid -> the writer's turn
        self._seq: dict[str, tuple[str, int]] = {}  # cid -> (lease token, last piece applied)
        self._tasks: list[asyncio.Task] = []
        self.disk_failed: OSError | None = None  # a failed fdatasync: no more writes here
        self._load()

    # ------------------------------------------------------------ state on disk
    def _meta_path(self, cid: str) -> str:
        return os.path.join(self.dir, cid + ".meta")

    def _load(self) -> None:
        for name in os.listdir(self.dir):
            if not name.endswith(".meta"):
                continue
            cid = name[:-5]
            try:
                with open(os.path.join(self.dir, name)) as f:
                    meta = json.load(f)
                cf = ChunkFile(self.dir, cid, int(meta["capacity"]))
                if not cf.exists():
                    raise NotFound(cid)
                self.replicas[cid] = _Replica(cf, int(meta["version"]), cf.length())
            except (OSError, ValueError, KeyError, PanguError) as e:
                logger.warning("chunkserver %s: dropping unreadable replica %s (%s)", self.sid,
                               cid, e)
                self._discard_files(cid)

    def _discard_files(self, cid: str) -> None:
        # The .meta first: a short-circuit reader finds no replica rather than a partial one.
        for ext in (".meta", ".data", ".sums"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, cid + ext))

    def _set_meta(self, cid: str, version: int, capacity: int) -> None:
        _write_json(self._meta_path(cid), {"version": version, "capacity": capacity})

    def used_bytes(self) -> int:
        return sum(r.length for r in self.replicas.values())

    def _replica(self, cid: str) -> _Replica:
        r = self.replicas.get(cid)
        if r is None:
            raise NotFound(f"chunk {cid} has no replica on chunkserver {self.sid}")
        return r

    def _room_for(self, grow: int) -> None:
        if grow > 0 and self.used_bytes() + grow > self.capacity_bytes:
            raise NoSpace(f"chunkserver {self.sid} is full: {self.used_bytes()} of "
                          f"{self.capacity_bytes} bytes used, {grow} more asked for")

    def _quarantine(self, cid: str, why: str) -> None:
        """A replica that failed its checksum leaves service at once; the master repairs it."""
        r = self.replicas.pop(cid, None)
        if r is None:
            return
        logger.warning("chunkserver %s: replica %s is corrupt (%s); removed", self.sid, cid, why)
        self._discard_files(cid)
        self.corrupt.append(cid)

    # ------------------------------------------------------------ Zhongkui
    async def zk_set_keys(self, proof: str, doc: dict) -> int:
        """Zhongkui's keys after a rotation (from FuxiMaster)."""
        return self.guard.accept_keys(proof, doc)

    async def _platform(self, cred, what: str) -> None:
        if not self.guard.enabled:
            return
        from zhongkui.errors import BadCredentials

        try:
            who = await self.guard.aidentify(cred)
        except BadCredentials as e:
            raise Unauthenticated(f"{type(e).__name__}: {e}") from None
        if not who.platform:
            self.guard.report_denial(who.user, what, f"chunkserver:{self.name}", "not a platform actor")
            raise Denied(f"user {who.user!r} may not {what}: the platform's own actors only")

    async def _check_access(self, access, cid: str, mode: str, version=None) -> None:
        """A chunk access token for this chunk, in this mode (a write token also reads; it
        writes only at the version of its lease), not expired and signed by the cluster:
        refused otherwise, whoever holds it (``pangu.core.access``)."""
        if not self.guard.enabled:
            return
        from zhongkui.errors import BadCredentials

        try:
            who = await self.guard.aidentify(access)
        except BadCredentials as e:
            raise Unauthenticated(f"chunk {cid}: the access token is refused "
                                  f"({type(e).__name__}: {e}); ask the master again") from None
        if who.platform:
            return
        why = A.refusal(who.scope, cid, mode, version)
        if why is not None:
            self.guard.report_denial(who.user, f"chunk {mode}", f"chunk:{cid}", why)
            raise Denied(f"chunk {cid}: the access token is refused for {mode!r}: {why}")

    # ------------------------------------------------------------ control
    async def start(self, masters: list[str], cred: str | None = None) -> dict:
        """Start heartbeating to ``masters`` (actor names) and scrubbing; returns ``info``.
        The platform's own (deploy) only: whoever names the masters is obeyed by this server
        (their heartbeat replies order deletions)."""
        await self._platform(cred, "name this chunkserver's masters")
        if not isinstance(masters, list) or not 0 < len(masters) <= MASTERS_NAMED_MAX or \
                not all(isinstance(m, str) and 0 < len(m) <= 256 for m in masters):
            raise BadRequest(f"masters {masters!r:.80}: expected a list of 1-"
                             f"{MASTERS_NAMED_MAX} actor names")
        self.masters = list(masters)
        if not self._tasks:
            self._tasks = [asyncio.get_running_loop().create_task(self._heartbeat_loop()),
                           asyncio.get_running_loop().create_task(self._scrub_loop())]
        return self.info()

    def info(self) -> dict:
        return {"id": self.sid, "name": self.name, "node": self.node, "dir": self.dir,
                "capacity_bytes": self.capacity_bytes, "used_bytes": self.used_bytes(),
                "chunks": len(self.replicas), "scrubbed": self.scrubbed}

    def report(self) -> dict:
        return {"id": self.sid, "name": self.name, "node": self.node, "fsid": self.fsid,
                "capacity_bytes": self.capacity_bytes, "used_bytes": self.used_bytes(),
                "chunks": {cid: [r.version, r.length] for cid, r in self.replicas.items()},
                "corrupt": list(self.corrupt), "dir": self.dir,
                "disk_failed": self.disk_failed is not None,
                "queue": self.queue.take(time.monotonic())}

    def _writable(self) -> None:
        """Refuse writes once an fdatasync failed (never fsync again and trust it): the
        master moves this server's data away and a restart on a working disk recovers."""
        if self.disk_failed is not None:
            raise DiskFailed(self.disk_failed.errno, f"chunkserver {self.sid}: its disk "
                             f"failed ({self.disk_failed}); it takes no writes until restarted")

    async def _sync_replica(self, r: _Replica) -> None:
        try:
            await asyncio.to_thread(r.file.sync)
        except DiskFailed as e:
            self.disk_failed = e
            raise

    def _handle(self, name: str):
        return self._handles.get(name)

    async def _heartbeat_loop(self) -> None:
        while True:
            rep = self.report()
            sent_corrupt = list(self.corrupt)
            for m in self.masters:
                try:
                    reply = await asyncio.wait_for(
                        self._handle(m).heartbeat.remote(rep, cred=self.guard.platform_token()),
                        HEARTBEAT_TIMEOUT_S)
                except Exception as e:  # a standby or a dead master: try the others
                    self._handles.forget(m)
                    logger.debug("heartbeat to %s failed: %s", m, e)
                    continue
                if reply and reply.get("active") and not self._same_fs(reply.get("fsid")):
                    continue
                if reply and reply.get("active") and reply.get("epoch", 0) >= self.master_epoch:
                    self._raise_epoch(reply.get("epoch", 0))
                    self.corrupt = [c for c in self.corrupt if c not in sent_corrupt]
                    for cid, version in reply.get("delete", []):
                        await self._delete_one(cid, at_most=version)
            await asyncio.sleep(self.heartbeat_s)

    async def _scrub_loop(self) -> None:
        done: set[str] = set()
        while True:
            await asyncio.sleep(self.scrub_interval_s)
            now = time.monotonic()
            todo = [c for c, r in self.replicas.items()
                    if c not in done and now - r.written_at >= SCRUB_IDLE_S]
            if not todo:
                done.clear()
                continue
            cid = todo[0]
            done.add(cid)
            r = self.replicas.get(cid)
            if r is None or r.lock.locked():
                continue
            async with r.lock:
                try:
                    bad = await asyncio.to_thread(r.file.verify)
                except (OSError, PanguError) as e:
                    bad = [str(e)]
            self.scrubbed += 1
            if bad:
                self._quarantine(cid, f"scrubber: bad blocks {bad[:5]}")

    def _record(self, **fields) -> None:
        """Update this server's ``server.json`` (id, file system, newest master term)."""
        meta = os.path.join(self.dir, "server.json")
        with open(meta) as f:
            doc = json.load(f)
        _write_json(meta, dict(doc, **fields))

    def _same_fs(self, fsid: str | None) -> bool:
        """Adopt the first file system id a master gives; ignore masters of another one."""
        if fsid is None:
            return True
        if self.fsid is None:
            self.fsid = fsid
            self._record(fsid=fsid)
            return True
        if fsid != self.fsid and not self._foreign_warned:
            self._foreign_warned = True
            logger.error("chunkserver %s holds chunks of file system %s; a master of file "
                         "system %s is ignored", self.sid, self.fsid, fsid)
        return fsid == self.fsid

    def _see_epoch(self, epoch: int) -> None:
        """Masters number their terms (the Nuwa journal's epoch). Orders from a master older
        than one already heard from are refused: a deposed master that has not noticed yet
        must not delete chunks or change versions the new one made."""
        if epoch < self.master_epoch:
            raise NotActive(f"chunkserver {self.sid}: an order from a master of epoch {epoch}; "
                            f"epoch {self.master_epoch} is active")
        self._raise_epoch(epoch)

    def _raise_epoch(self, epoch: int) -> None:
        if epoch > self.master_epoch:  # kept on disk: a restart must not forget it
            self.master_epoch = epoch
            self._record(master_epoch=epoch)

    # ------------------------------------------------------------ chunk lifecycle
    async def create_chunk(self, cid: str, version: int, capacity: int, epoch: int = 0,
                           cred: str | None = None) -> dict:
        await self._platform(cred, "create a chunk")
        self._see_epoch(epoch)
        self._writable()
        r = self.replicas.get(cid)
        if r is not None:
            if r.version == version and r.length == 0:
                return {"created": False}
            raise BadRequest(f"chunk {cid} already exists on {self.sid} at version {r.version}")
        cf = ChunkFile(self.dir, cid, capacity)
        cf.remove()
        await asyncio.to_thread(cf.create)
        await asyncio.to_thread(self._set_meta, cid, version, capacity)
        self.replicas[cid] = _Replica(cf, version, 0)
        return {"created": True}

    async def set_version(self, cid: str, version: int, epoch: int = 0,
                          cred: str | None = None) -> int:
        await self._platform(cred, "set a chunk version")
        self._see_epoch(epoch)
        r = self._replica(cid)
        async with r.lock:
            if version < r.version:
                raise BadRequest(f"chunk {cid}: version {version} is older than {r.version}")
            if version != r.version:
                await asyncio.to_thread(self._set_meta, cid, version, r.file.capacity_bytes)
                r.version = version
        return r.version

    async def grant_lease(self, cid: str, version: int, secondaries: list[str],
                          lease_s: float, epoch: int = 0, cred: str | None = None) -> None:
        await self._platform(cred, "grant a lease")
        self._see_epoch(epoch)
        r = self._replica(cid)
        if r.version != version:
            raise StaleReplica(f"chunk {cid} on {self.sid} is at version {r.version}, the lease "
                               f"is for version {version}")
        # A safety margin: the master counts from before it sent the grant.
        self.leases[cid] = (version, list(secondaries), time.monotonic() + lease_s * 0.9)

    async def _delete_one(self, cid: str, at_most: int | None = None) -> None:
        """Delete a replica; with ``at_most``, only if its version is still at most that (the
        master judged it from a report that a newer version may have overtaken)."""
        r = self.replicas.get(cid)
        if r is not None and at_most is not None and r.version > at_most:
            return
        r = self.replicas.pop(cid, None)
        self.leases.pop(cid, None)
        self._order.pop(cid, None)
        self._seq.pop(cid, None)
        if r is not None:
            async with r.lock:
                await asyncio.to_thread(self._discard_files, cid)

    async def delete(self, cids: list[str], epoch: int = 0, cred: str | None = None) -> int:
        await self._platform(cred, "delete chunks")
        self._see_epoch(epoch)
        n = 0
        for cid in cids:
            if cid in self.replicas:
                n += 1
            await self._delete_one(cid)
        return n

    async def truncate(self, cid: str, length: int, version: int, epoch: int = 0,
                       cred: str | None = None) -> int:
        await self._platform(cred, "truncate a chunk")
        self._see_epoch(epoch)
        r = self._replica(cid)
        async with r.lock:
            if r.version >= version:
                raise StaleReplica(f"chunk {cid} on {self.sid} is at version {r.version}; a "
                                   f"truncate to version {version} needs an older one")
            await asyncio.to_thread(r.file.truncate, length)
            await asyncio.to_thread(self._set_meta, cid, version, r.file.capacity_bytes)
            r.version, r.length, r.written_at = version, length, time.monotonic()
        return length

    # ------------------------------------------------------------ writes
    async def _turn(self, cid: str, token: str, seq: int) -> asyncio.Condition:
        """Wait until the writer's previous piece (``seq - 1`` under ``token``) has been
        applied here: pieces of a chunk are applied in the writer's order."""
        cond = self._order.setdefault(cid, asyncio.Condition())
        async with cond:
            if self._seq.get(cid, ("", 0))[0] != token:
                if seq == 1:
                    self._seq[cid] = (token, 0)  # a new lease: numbering starts again
            elif seq <= self._seq[cid][1]:
                raise BadRequest(f"chunk {cid}: piece {seq} of writer {token:.40} was applied "
                                 f"already (a replay); a retry is sent with the next number")
            try:
                await asyncio.wait_for(cond.wait_for(
                    lambda: self._seq.get(cid) == (token, seq - 1)), WRITE_ORDER_WAIT_S)
            except asyncio.TimeoutError:
                raise LeaseExpired(f"chunk {cid}: piece {seq} of writer {token} waited "
                                   f"{WRITE_ORDER_WAIT_S:g}s (WRITE_ORDER_WAIT_S) for piece "
                                   f"{seq - 1}; send them again") from None
        return cond

    async def _done_turn(self, cid: str, cond: asyncio.Condition, token: str, seq: int) -> None:
        async with cond:
            if self._seq.get(cid) == (token, seq - 1):
                self._seq[cid] = (token, seq)
            cond.notify_all()

    async def write(self, cid: str, version: int, offset: int, data: list, token: str = "",
                    seq: int = 1, access: str = "") -> int:
        """See ``_write``; counted in this server's queue (``pangu.core.hotservers``)."""
        self.queue.enter(time.monotonic())
        try:
            return await self._write(cid, version, offset, data, token, seq, access)
        finally:
            self.queue.leave(time.monotonic())

    async def _write(self, cid: str, version: int, offset: int, data: list, token: str = "",
                     seq: int = 1, access: str = "") -> int:
        """The primary's entry point: ``data`` is ``[ObjectRef]`` of a pyarrow Buffer, piece
        ``seq`` of the writer's lease ``token``. Returns the chunk's new length once every
        replica has it on disk.

        Two phases: the bytes are written (not yet synced) at every replica, in the writer's
        order; then every replica syncs. The next piece's writes overlap this one's sync."""
        _check_write_args(cid, version, offset, data, token, seq)
        await self._check_access(access, cid, "w", version)
        lease = self.leases.get(cid)
        if lease is None or lease[0] != version or time.monotonic() > lease[2]:
            raise LeaseExpired(f"chunkserver {self.sid} holds no valid lease on chunk {cid} at "
                               f"version {version}; ask the master for the lease again")
        _, secondaries, _ = lease
        r = self._replica(cid)
        cond = await self._turn(cid, token, seq)
        failed, errors = [], []
        try:
            buf = _bytes_of(await data[0], cid)
            try:  # one checksum computation serves every replica
                sums = await asyncio.to_thread(r.file.checksums, offset, memoryview(buf))
            except ChecksumError as e:
                self._quarantine(cid, str(e))
                raise
            # The secondaries take writes from a primary only (its platform token): a writer
            # cannot bypass the primary's order and lease by writing to one replica.
            fwd = self.guard.platform_token()
            others = [self._handle(s).apply.remote(cid, version, offset, data, sums,
                                                   access=fwd) for s in secondaries]
            length = await self._apply(r, cid, version, offset, data, sums)  # raises: all failed
            live = await self._collect(secondaries, others, failed, errors)
        finally:
            await self._done_turn(cid, cond, token, seq)
        syncs = [self._handle(s).sync.remote(cid, version, access=fwd) for s in live]
        await self._sync_replica(r)
        await self._collect(live, syncs, failed, errors)
        if failed:
            raise ReplicaWriteFailed(f"chunk {cid}: write at {offset} failed on "
                                     f"{', '.join(errors)}", failed)
        return length

    async def _collect(self, names: list[str], refs: list, failed: list, errors: list) -> list:
        ok = []
        for name, ref in zip(names, refs):
            try:
                await asyncio.wait_for(ref, REPLICA_CALL_TIMEOUT_S)
                ok.append(name)
            except Exception as e:  # noqa: BLE001 - any failure makes that replica stale
                failed.append(name)
                errors.append(f"{name}: {_short(e)}")
                if isinstance(e, ray.exceptions.RayActorError):
                    self._handles.forget(name)  # a restarted server gets a new handle
        return ok

    async def apply(self, cid: str, version: int, offset: int, data: list,
                    sums: bytes | None = None, access: str = "") -> int:
        """A secondary's first phase of a write the primary ordered (the bytes, not synced).
        ``access`` is the primary's platform token: nobody else writes to a secondary."""
        await self._platform(access, "write to a secondary replica (primaries only)")
        _check_write_args(cid, version, offset, data)
        return await self._apply(self._replica(cid), cid, version, offset, data, sums)

    async def sync(self, cid: str, version: int, access: str = "") -> None:
        """The second phase: make every write applied so far durable (primaries only)."""
        await self._platform(access, "sync a secondary replica (primaries only)")
        r = self._replica(cid)
        if r.version != version:
            raise StaleReplica(f"chunk {cid} on {self.sid} is at version {r.version}, the "
                               f"write is at version {version}")
        await self._sync_replica(r)

    async def _apply(self, r: _Replica, cid: str, version: int, offset: int, data: list,
                     sums: bytes | None = None) -> int:
        buf = _bytes_of(await data[0], cid)
        async with r.lock:
            if r.version != version:
                raise StaleReplica(f"chunk {cid} on {self.sid} is at version {r.version}, the "
                                   f"write is at version {version}")
            view = memoryview(buf)
            self._writable()
            self._room_for(offset + len(view) - r.length)
            try:
                length = await asyncio.to_thread(r.file.write, offset, view, sync=False,
                                                 sums=sums)
            except ChecksumError as e:
                self._quarantine(cid, str(e))
                raise
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise NoSpace(f"chunkserver {self.sid}: the disk is full ({e})") from None
                raise
            r.length, r.written_at = length, time.monotonic()
            return length

    # ------------------------------------------------------------ reads
    async def read(self, cid: str, version: int, offset: int, n: int,
                   access: str = "") -> pa.Buffer:
        """A read of ``n`` bytes at ``offset``, counted in this server's queue."""
        self.queue.enter(time.monotonic())
        try:
            return await self._read(cid, version, offset, n, access)
        finally:
            self.queue.leave(time.monotonic())

    async def _read(self, cid: str, version: int, offset: int, n: int,
                    access: str = "") -> pa.Buffer:
        await self._check_access(access, cid, "r")
        for what, v in (("version", version), ("offset", offset), ("n", n)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BadRequest(f"read of chunk {cid}: {what}={v!r:.40}; expected an int >= 0")
        if not 0 <= n <= READ_BYTES_MAX:
            raise BadRequest(f"read of {n} bytes; expected 0..READ_BYTES_MAX={READ_BYTES_MAX}")
        r = self._replica(cid)
        if r.version < version:
            raise StaleReplica(f"chunk {cid} on {self.sid} is at version {r.version}, older "
                               f"than {version}")
        try:
            view = await asyncio.to_thread(r.file.read_view, offset, n)
        except ChecksumError:
            # Reads take no lock, so a write into the same block may have been half done:
            # read again while holding the replica's lock before calling it corrupt.
            async with r.lock:
                try:
                    view = await asyncio.to_thread(r.file.read_view, offset, n)
                except ChecksumError as e:
                    self._quarantine(cid, str(e))
                    raise
        return pa.py_buffer(view)

    async def read_all(self, cid: str, cred: str | None = None) -> tuple[int, pa.Buffer]:
        await self._platform(cred, "copy a whole chunk")
        r = self._replica(cid)
        async with r.lock:
            try:
                view = await asyncio.to_thread(r.file.read_view, 0, r.length)
            except ChecksumError as e:
                self._quarantine(cid, str(e))
                raise
            return r.version, pa.py_buffer(view)

    async def replicate(self, cid: str, version: int, capacity: int, source: str,
                        epoch: int = 0, cred: str | None = None) -> int:
        """Copy chunk ``cid`` at ``version`` from the chunkserver named ``source``."""
        await self._platform(cred, "copy a chunk here")
        self._see_epoch(epoch)
        self._writable()
        if cid in self.replicas:
            if self.replicas[cid].version >= version:
                return self.replicas[cid].length
            await self._delete_one(cid)
        src_version, buf = await asyncio.wait_for(self._handle(source).read_all.remote(
            cid, cred=self.guard.platform_token()),
                                                  REPLICA_CALL_TIMEOUT_S)
        if src_version != version:
            raise StaleReplica(f"copy of chunk {cid}: the source {source} is at version "
                               f"{src_version}, expected {version}")
        self._room_for(len(buf))
        cf = ChunkFile(self.dir, cid, capacity)
        await asyncio.to_thread(self._discard_files, cid)

        def make() -> int:  # the .meta is written last: until then no reader sees the copy
            cf.create()
            return cf.write(0, memoryview(buf))

        try:
            length = await asyncio.to_thread(make)
            await asyncio.to_thread(self._set_meta, cid, version, capacity)
        except BaseException:
            await asyncio.to_thread(self._discard_files, cid)
            raise
        self.replicas[cid] = _Replica(cf, version, length)
        self.replicas[cid].written_at = time.monotonic()
        return length

    async def corrupt_for_test(self, cid: str, offset: int, cred: str | None = None) -> str:
        """Flip one bit of a replica's data file behind its checksum (fault tests; the
        platform's own only)."""
        await self._platform(cred, "corrupt a replica (fault tests)")
        r = self._replica(cid)
        with open(r.file.data_path, "r+b") as f:
            f.seek(offset)
            b = f.read(1)
            f.seek(offset)
            f.write(bytes([b[0] ^ 0x01]))
        return r.file.data_path

    def block_bytes(self) -> int:
        return BLOCK_BYTES


def _bytes_of(obj, cid: str):
    """The bytes a write's object reference holds; anything else is refused."""
    if not isinstance(obj, (pa.Buffer, bytes, bytearray, memoryview)):
        raise BadRequest(f"write to chunk {cid}: the object holds a {type(obj).__name__}; "
                         f"expected bytes (a pyarrow Buffer)")
    return obj


def _check_write_args(cid, version, offset, data, token: str = "", seq: int = 1) -> None:
    """Every field of a write a stranger controls, range-checked before it touches state."""
    for what, v, lo, hi in (("version", version, 1, 2 ** 63 - 1),
                            ("offset", offset, 0, 2 ** 63 - 1), ("seq", seq, 1, WRITE_SEQ_MAX)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise BadRequest(f"write to chunk {cid!r:.80}: {what}={v!r:.40}; expected an int "
                             f"in {lo}..{hi}")
    if not isinstance(token, str) or len(token) > WRITE_TOKEN_CHARS_MAX:
        raise BadRequest(f"write to chunk {cid!r:.80}: the writer's token is a str of at most "
                         f"{WRITE_TOKEN_CHARS_MAX} characters (WRITE_TOKEN_CHARS_MAX)")
    if not isinstance(data, list) or len(data) != 1 or \
            not isinstance(data[0], ray.ObjectRef):
        raise BadRequest(f"write to chunk {cid!r:.80}: data is [ObjectRef] of the bytes (one "
                         f"reference put by the writer), got {type(data).__name__}")


def _short(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    e = cause if isinstance(cause, BaseException) else e
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]

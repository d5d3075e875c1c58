"""The Pangu client: ``pangu.open(url, mode)`` and the namespace calls (``ls``, ``stat``,
``mkdir``, ``rm``, ``mv``, ``exists``, ``du``), from any process attached to the cluster's Ray.

URLs: ``pangu://<cluster>/<path>``, ``pangu:///<path>`` (the current cluster: ``FUXI_CLUSTER``,
else the one this Ray program belongs to, else ``default``), or a plain absolute path.

Reads go straight to a chunkserver (one on this node first), verified there; a replica that
fails (unreachable, stale, corrupt) is skipped and reported, and the next one is read. A
reader sees every byte acknowledged before its ``open`` (the lengths it gets then).

Writes are buffered (``WRITE_BUFFER_BYTES``) and sent by ``flush``/``close`` or when the buffer
is full: the data is put in Ray's object store once and its reference goes to the chunk's
primary, which has every replica apply it in the same order; the master then records the new
length. Acknowledged means on disk at every replica of the chunk's current version.
"""

from __future__ import annotations

import builtins
import collections
import io
import json
import os
import random
import time
import uuid
from typing import Any

import pyarrow as pa
import ray

from pangu.core import paths as P
from pangu.io.chunkfile import ChunkFile
from pangu.errors import DiskFailed
from pangu.errors import (BadPath, BadRequest, ChecksumError, LeaseExpired, NoSpace, NotActive,
                          NotFound, PanguError, ReplicaWriteFailed, StaleReplica, Unauthenticated,
                          Unavailable)
from pangu.handles import Handles

MASTERS_MAX = 3  # pangu-master-1 .. -3 are tried
MASTER_WAIT_S = 60.0  # how long a call waits for an active master (covers a failover)
PANGU_CALL_TIMEOUT_S = 60.0
WRITE_BUFFER_BYTES = 8 * 1024 * 1024
READ_AHEAD_BYTES = 8 * 1024 * 1024
RANDOM_READ_MIN_BYTES = 4096
WRITE_RETRIES_MAX = 6
WRITE_INFLIGHT_MAX = 2  # pieces of one file sent and not yet acknowledged
READ_ROUNDS_MAX = 3  # re-locate the file this many times before a read gives up
MASTER_RETRY_BACKOFF_S = 0.2
SHORT_CIRCUIT = os.environ.get("PANGU_SHORT_CIRCUIT", "1") != "0"  # local replicas read directly


_ONCE = frozenset({"mkdir", "rename", "delete", "open_write", "truncate"})  # by request id


def master_name(i: int) -> str:
    return f"pangu-master-{i}"


def parse_url(url: str) -> tuple[str | None, str]:
    """(cluster or None for the current one, normalised path)."""
    if not isinstance(url, str):
        raise BadPath(f"a Pangu path is a str, got {type(url).__name__}")
    if url.startswith("pangu://"):
        rest = url[len("pangu://"):]
        cluster, slash, path = rest.partition("/")
        return (cluster or None), P.normalize("/" + path)
    if "://" in url:
        raise BadPath(f"{url!r} is not a Pangu URL; expected pangu://<cluster>/<path>, "
                      f"pangu:///<path> or an absolute path")
    return None, P.normalize(url)


def current_cluster() -> str:
    env = os.environ.get("FUXI_CLUSTER")
    if env:
        return env
    if ray.is_initialized():
        ns = ray.get_runtime_context().namespace or ""
        if ns.startswith("fuxi-"):
            return ns[len("fuxi-"):]
    return "default"


def _unwrap(e: BaseException) -> BaseException:
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, PanguError) else e


def _get(ref, timeout_s: float = PANGU_CALL_TIMEOUT_S):
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.RayTaskError as e:
        raise _unwrap(e) from None


class Client:
    """Talks to one cluster's Pangu (its actors live in Ray namespace ``fuxi-<cluster>``)."""

    def __init__(self, cluster: str | None = None, token: str | None = None):
        """``token``: what this client presents to a cluster with authentication (Zhongkui);
        default this process's (``zhongkui.creds``)."""
        if not ray.is_initialized():
            from pangu.connect import attach

            attach(cluster or current_cluster())
        self.cluster = cluster or current_cluster()
        self.namespace = f"fuxi-{self.cluster}"
        self.token = token
        self._active: Any = None
        self._servers = Handles(self.namespace)
        self.node = ray.get_runtime_context().get_node_id()

    # ------------------------------------------------------------ master calls
    def _masters(self) -> list:
        out = []
        for i in range(1, MASTERS_MAX + 1):
            try:
                out.append(ray.get_actor(master_name(i), namespace=self.namespace))
            except ValueError:
                continue
        if not out:
            raise Unavailable(f"Pangu is not running in cluster {self.cluster!r} (no actor "
                              f"{master_name(1)} in Ray namespace {self.namespace}); start it "
                              f"with `fuxi up`, or pangu.deploy.start in a Ray program")
        return out

    def call(self, method: str, *args, timeout_s: float = MASTER_WAIT_S,
             fencing: tuple | None = None) -> Any:
        """Call the active master, following failovers. Namespace changes carry a request id,
        the same on every retry, so one whose reply was lost is not applied twice. ``fencing``
        is a Nuwa lock's (path, token): the master refuses the call if it is stale."""
        deadline = time.monotonic() + timeout_s
        last: BaseException | None = None
        kw = {"request_id": uuid.uuid4().hex} if method in _ONCE else {}
        if fencing is not None:
            kw["fencing"] = list(fencing)
        cred = self.cred()
        if cred:
            kw["cred"] = cred
        while True:
            cands = [self._active] if self._active is not None else self._masters()
            for m in cands:
                try:
                    res = _get(getattr(m, method).remote(*args, **kw), PANGU_CALL_TIMEOUT_S)
                    self._active = m
                    return res
                except (NotActive, Unavailable, ray.exceptions.RayActorError,
                        ray.exceptions.GetTimeoutError) as e:
                    last = e
                    self._active = None
            if time.monotonic() > deadline:
                raise Unavailable(f"no active Pangu master answered {method} within "
                                  f"{timeout_s:g}s (MASTER_WAIT_S); last error: {last}") from None
            time.sleep(MASTER_RETRY_BACKOFF_S)

    def cred(self) -> str:
        if self.token is not None:
            return self.token
        from zhongkui import creds

        return creds.token(self.cluster)

    def server(self, name: str):
        return self._servers.get(name)

    def forget(self, name: str) -> None:
        self._servers.forget(name)

    # ------------------------------------------------------------ namespace
    def ls(self, path: str = "/", detail: bool = False) -> list:
        entries = self.call("ls", parse_url(path)[1])
        return entries if detail else [P.name(e["path"]) for e in entries]

    def stat(self, path: str) -> dict:
        return self.call("stat", parse_url(path)[1])

    def exists(self, path: str) -> bool:
        return self.call("exists", parse_url(path)[1])

    def mkdir(self, path: str, parents: bool = False, owner: str | None = None,
              fencing: tuple | None = None) -> dict:
        return self.call("mkdir", parse_url(path)[1], parents, owner or _user(),
                         fencing=fencing)

    def rm(self, path: str, recursive: bool = False, fencing: tuple | None = None) -> dict:
        return self.call("delete", parse_url(path)[1], recursive, fencing=fencing)

    def mv(self, src: str, dst: str, overwrite: bool = False,
           fencing: tuple | None = None) -> dict:
        return self.call("rename", parse_url(src)[1], parse_url(dst)[1], overwrite,
                         fencing=fencing)

    def du(self, path: str = "/") -> dict:
        return self.call("du", parse_url(path)[1])

    def truncate(self, path: str, length: int, fencing: tuple | None = None) -> dict:
        return self.call("truncate", parse_url(path)[1], length, fencing=fencing)

    def fsck(self, path: str = "/") -> dict:
        return self.call("fsck", parse_url(path)[1])

    def status(self) -> dict:
        return self.call("status")

    def open(self, path: str, mode: str = "rb", *, replication: int | None = None,
             chunk_size: int | None = None, fencing: tuple | None = None) -> "PanguFile":
        return PanguFile(self, parse_url(path)[1], mode, replication=replication,
                         chunk_size=chunk_size, fencing=fencing)


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return "anonymous"


_MODES = {"rb": "r", "wb": "w", "xb": "x", "ab": "a", "r+b": "r+", "rb+": "r+", "w+b": "w",
          "wb+": "w", "a+b": "a", "ab+": "a"}


class PanguFile(io.RawIOBase):
    """A standard binary file object over one Pangu file."""

    def __init__(self, client: Client, path: str, mode: str, *, replication: int | None = None,
                 chunk_size: int | None = None, fencing: tuple | None = None):
        """``fencing``: a Nuwa lock's ``(path, token)`` (``Lock.acquire`` returns the token);
        every write of this file carries it, and the master refuses them all
        (``StaleFencingToken``) once a newer token of that lock has been seen."""
        super().__init__()
        self._fencing = tuple(fencing) if fencing is not None else None
        if mode not in _MODES:
            raise BadRequest(f"mode {mode!r}: expected one of rb, wb, xb, ab, r+b (Pangu files are "
                             f"binary; wrap in io.TextIOWrapper for text)")
        self.client, self.path, self.mode = client, path, mode
        self._kind = _MODES[mode]
        self._writer = f"w-{uuid.uuid4().hex[:12]}"
        self._pos = 0
        self._cache: tuple[int, memoryview] | None = None  # file offset, bytes
        self._last_end = -1
        self._buf = bytearray()
        self._buf_start = 0
        self._leases: dict[int, dict] = {}
        self._inflight: collections.deque = collections.deque()
        self._bad: set[str] = set()
        self._dirty = False  # written since the layout in _info was fetched
        self._local: dict[tuple, ChunkFile] = {}  # (chunk, version, dir) -> checked local replica
        try:
            if self._kind == "r":
                self._info = client.call("locate", path)
            else:
                self._info = client.call("open_write", path, self._kind, self._writer, _user(),
                                         replication, chunk_size, fencing=self._fencing)
        except BaseException:
            # Never opened: nothing to flush or hand back, now or when collected (a close
            # then would call the master, maybe after Ray has shut down).
            super().close()
            raise
        self._size = self._info["size"]
        self._cs = self._info["chunk_size"]
        if self._kind == "a":
            self._pos = self._size

    # ------------------------------------------------------------ io.RawIOBase
    def readable(self) -> bool:
        return self._kind in ("r", "r+") or "+" in self.mode

    def writable(self) -> bool:
        return self._kind != "r"

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    @property
    def size(self) -> int:
        return max(self._size, self._buf_start + len(self._buf))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise BadRequest(f"whence {whence!r}: expected 0 (SET), 1 (CUR) or 2 (END)")
        if pos < 0:
            raise BadRequest(f"seek to {pos} in {self.path}: before the start of the file")
        self._pos = pos
        return pos

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed Pangu file {self.path}")

    def readinto(self, b) -> int:
        self._check_open()
        if not self.readable():
            raise io.UnsupportedOperation(f"{self.path} is open for writing ({self.mode}); "
                                          f"open it with rb or r+b to read")
        if self._dirty:  # read our own writes: acknowledge them, then see the new layout
            self.flush()
            self._info = self.client.call("locate", self.path)
            self._size = self._info["size"]
            self._dirty = False
        with memoryview(b) as raw, raw.cast("B") as out:  # no export outlives the call
            n = min(len(out), self.size - self._pos)
            if n <= 0:
                return 0
            done = 0
            while done < n:
                view = self._cached(self._pos + done, n - done)
                out[done:done + len(view)] = view
                done += len(view)
        self._pos += done
        return done

    def readall(self) -> bytes:
        return self.read(-1)

    def read(self, size: int = -1) -> bytes:
        remaining = max(0, self.size - self._pos)
        out = bytearray(remaining if size is None or size < 0 else min(size, remaining))
        n = self.readinto(out)
        return bytes(out) if n == len(out) else bytes(out[:n])

    def _cached(self, pos: int, want: int) -> memoryview:
        if self._cache is not None:
            start, data = self._cache
            if start <= pos < start + len(data):
                return data[pos - start:pos - start + want]
        sequential = pos == self._last_end
        idx, off = divmod(pos, self._cs)
        chunk_end = min(self._cs, self.size - idx * self._cs)
        n = min(chunk_end - off, max(want, READ_AHEAD_BYTES if sequential else
                                     RANDOM_READ_MIN_BYTES))
        data = memoryview(self._fetch(idx, off, n)).cast("B")
        if len(data) < min(n, want):
            raise Unavailable(f"{self.path}: short read at {pos} ({len(data)} of {n} bytes)")
        self._cache = (pos, data)
        self._last_end = pos + len(data)
        return data[:want]

    def _fetch(self, idx: int, off: int, n: int):
        last: BaseException | None = None
        for round_ in range(READ_ROUNDS_MAX):
            chunk = self._info["chunks"][idx] if idx < len(self._info["chunks"]) else None
            if chunk is None:
                raise Unavailable(f"{self.path}: chunk {idx} is not in the file")
            reps = [r for r in chunk["replicas"] if r["name"] not in self._bad]
            random.shuffle(reps)
            reps.sort(key=lambda r: r["node"] != self.client.node)
            if SHORT_CIRCUIT and reps and reps[0]["node"] == self.client.node:
                view = self._local_read(reps[0], chunk, off, n)
                if view is not None and len(view) == n:
                    return view
            for r in reps:
                try:
                    data = _get(self.client.server(r["name"]).read.remote(
                        chunk["id"], chunk["version"], off, n, access=chunk.get("access", "")))
                    if len(data) == n:
                        return data
                    last = Unavailable(f"{r['name']} returned {len(data)} of {n} bytes of "
                                       f"chunk {chunk['id']} at {off}: it is behind")
                except (ChecksumError, StaleReplica, NotFound, Unauthenticated,
                        ray.exceptions.RayError) as e:
                    last = e  # an expired access token is renewed with the locations
                    if isinstance(e, ray.exceptions.RayActorError):
                        self.client.forget(r["name"])  # the name may now be a new actor
                self._bad.add(r["name"])
            # Every replica we knew failed: ask the master again (repairs may have run), and
            # give the ones that failed another chance once the list is fresh.
            time.sleep(MASTER_RETRY_BACKOFF_S * (round_ + 1))
            self._refresh_locations()
            self._bad.clear()
        raise Unavailable(f"{self.path}: no replica of chunk {idx} could be read after "
                          f"{READ_ROUNDS_MAX} rounds; last error: {last}")

    def _local_read(self, r: dict, chunk: dict, off: int, n: int):
        """Short-circuit read (as HDFS's): a replica on this node is read straight from its
        files, verified here. Anything unexpected -- a replica being rewritten, moved, or at
        an older version -- falls back to asking its chunkserver, which reports corruption."""
        d = r.get("dir")
        if not d:
            return None
        try:
            key = (chunk["id"], chunk["version"], d)
            cf = self._local.get(key)
            if cf is None:
                # Checked once per handle and version: a replica's version only grows while
                # it exists, and one deleted since makes read_view fail below.
                with builtins.open(os.path.join(d, chunk["id"] + ".meta")) as f:
                    meta = json.load(f)
                if int(meta["version"]) < chunk["version"]:
                    return None
                cf = self._local[key] = ChunkFile(d, chunk["id"], int(meta["capacity"]))
            return cf.read_view(off, n)
        except (OSError, ValueError, KeyError, PanguError):
            self._local.pop((chunk["id"], chunk["version"], d), None)
            return None

    def _refresh_locations(self) -> None:
        info = self.client.call("locate", self.path)
        known = {c["id"]: c for c in info["chunks"]}
        for i, c in enumerate(self._info["chunks"]):
            fresh = known.get(c["id"])
            if fresh is not None:
                self._info["chunks"][i] = dict(c, replicas=fresh["replicas"],
                                               version=max(c["version"], fresh["version"]),
                                               access=fresh.get("access", ""))

    # ------------------------------------------------------------ writes
    def write(self, b) -> int:
        self._check_open()
        if not self.writable():
            raise io.UnsupportedOperation(f"{self.path} is open for reading ({self.mode}); "
                                          f"open it with wb, ab or r+b to write")
        data = memoryview(b).cast("B")
        self._dirty = True
        if self._kind == "a":
            self._pos = self.size
        if self._pos > self.size:
            raise BadRequest(f"write at {self._pos} in {self.path}, past its end "
                             f"({self.size} bytes): Pangu files have no holes")
        if self._buf and self._pos != self._buf_start + len(self._buf):
            self._send()
        self._cache = None
        if not self._buf and len(data) >= WRITE_BUFFER_BYTES:
            self._send_range(self._pos, data)  # large writes skip the buffer copy
            self._pos += len(data)
            return len(data)
        if not self._buf:
            self._buf_start = self._pos
        self._buf += data
        self._pos += len(data)
        if len(self._buf) >= WRITE_BUFFER_BYTES:
            self._send()
        return len(data)

    def flush(self) -> None:
        """Send what is buffered and record the new length with the master: when this
        returns, every byte written so far is acknowledged (on disk at every replica)."""
        if self.closed or not self.writable():
            return
        self._send()
        self._commit_pending()

    def _send(self) -> None:
        if not self._buf:
            return
        buf, start = self._buf, self._buf_start
        self._buf = bytearray()
        self._send_range(start, memoryview(buf))

    def _send_range(self, start: int, view: memoryview) -> None:
        pos = 0
        while pos < len(view):
            off = start + pos
            idx, coff = divmod(off, self._cs)
            n = min(len(view) - pos, self._cs - coff)
            self._write_piece(idx, coff, view[pos:pos + n])
            pos += n
        self._size = max(self._size, start + len(view))

    def _commit_pending(self) -> None:
        self._settle()
        for idx in sorted(self._leases):
            lease = self._leases[idx]
            if lease["written"] > lease["length"]:
                self.client.call("commit", self.path, self._writer, lease["id"],
                                 lease["version"], lease["written"], fencing=self._fencing)
                lease["length"] = lease["written"]

    def _lease(self, idx: int, fresh: bool = False) -> dict:
        lease = self._leases.get(idx)
        if lease is None or fresh or time.monotonic() > lease["expires"]:
            self._settle()  # pieces in flight finish under the lease they were sent with
            lease = self._leases.get(idx)
            written = lease["written"] if lease is not None else 0
            if lease is not None and not fresh:
                lease = self.client.call("renew_lease", self.path, self._writer, lease["id"],
                                         fencing=self._fencing)
            else:
                self._commit_pending()  # a new chunk needs the ones before it full, on record
                lease = self.client.call("chunk_for_write", self.path, self._writer, idx,
                                         fencing=self._fencing)
            self._install(idx, lease, written)
        return lease

    def _install(self, idx: int, lease: dict, written: int) -> dict:
        lease["expires"] = time.monotonic() + lease["lease_s"]
        lease["written"] = max(written, lease["length"])
        # Pieces sent under this lease are numbered; the primary applies them in this order.
        lease["token"] = f"{self._writer}-{uuid.uuid4().hex[:8]}"
        lease["seq"] = 0
        self._leases[idx] = lease
        return lease

    def _write_piece(self, idx: int, off: int, data: memoryview) -> None:
        """Send one piece (within one chunk) and return without waiting for it, keeping at
        most WRITE_INFLIGHT_MAX pieces in flight: the next piece travels while the previous
        one is being synced to disk."""
        ref = ray.put(pa.py_buffer(data))
        lease = self._lease(idx)
        lease["seq"] += 1
        fut = self.client.server(lease["primary"]).write.remote(
            lease["id"], lease["version"], off, [ref], lease["token"], lease["seq"],
            access=lease.get("access", ""))
        self._inflight.append((fut, idx, off, ref, lease))
        self._settle(WRITE_INFLIGHT_MAX - 1)

    def _settle(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` pieces are in flight. If one failed, the rest are
        waited for and every piece from the failed one on is sent again, in order, one at a
        time (rewriting the same bytes at the same offsets is harmless)."""
        while len(self._inflight) > keep:
            fut, idx, off, ref, lease = self._inflight.popleft()
            try:
                lease["written"] = max(lease["written"], _get(fut))
                continue
            except (PanguError, ray.exceptions.RayError) as e:
                first_error = e
            redo = [(idx, off, ref, lease, first_error)]
            while self._inflight:
                f2, i2, o2, r2, l2 = self._inflight.popleft()
                try:
                    _get(f2)
                except (PanguError, ray.exceptions.RayError):
                    pass
                redo.append((i2, o2, r2, l2, None))
            for i, o, r, l, err in redo:
                self._write_again(i, o, r, l, err)

    def _write_again(self, idx: int, off: int, ref, sent_with: dict, error) -> None:
        lease = self._leases.get(idx, sent_with)
        last = error
        for attempt in range(WRITE_RETRIES_MAX):
            if error is not None:
                lease = self._after_failure(idx, lease, error)
            error = None
            lease["seq"] += 1
            try:
                length = _get(self.client.server(lease["primary"]).write.remote(
                    lease["id"], lease["version"], off, [ref], lease["token"], lease["seq"],
                    access=lease.get("access", "")))
                lease["written"] = max(lease["written"], length)
                return
            except (PanguError, ray.exceptions.RayError) as e:
                error = last = e
            time.sleep(MASTER_RETRY_BACKOFF_S * attempt)
        if isinstance(last, NoSpace):
            raise NoSpace(f"{self.path}: no replica of chunk {idx} has room: {last}")
        raise Unavailable(f"{self.path}: a write to chunk {idx} failed {WRITE_RETRIES_MAX} "
                          f"times (WRITE_RETRIES_MAX); last error: {last}")

    def _after_failure(self, idx: int, lease: dict, error) -> dict:
        if isinstance(error, ReplicaWriteFailed):
            return self._relet(idx, lease, error.failed)
        if isinstance(error, (LeaseExpired, StaleReplica, Unauthenticated)):
            return self._relet(idx, lease, [])  # a fresh lease brings a fresh access token
        if isinstance(error, NotFound):
            # The primary has no such chunk: go on without it, or learn from the master why
            # (the file was replaced, a newer fencing token was seen).
            return self._relet(idx, lease, [lease["primary"]])
        if isinstance(error, ray.exceptions.RayActorError):
            # The primary died, or the cached handle is of an earlier actor of that name (a
            # restarted chunkserver): look it up again, and go on without it meanwhile.
            self.client.forget(lease["primary"])
        if isinstance(error, (ray.exceptions.RayError, NoSpace, DiskFailed, ChecksumError)):
            # The primary is gone (its node died), full, its disk failed, or it found its own
            # copy corrupt (and took it out of service): go on with the other replicas.
            return self._relet(idx, lease, [lease["primary"]])
        raise error  # a refusal that a retry cannot fix (the file was deleted, ...)

    def _relet(self, idx: int, lease: dict, failed: list[str]) -> dict:
        if failed:
            new = self.client.call("write_failed", self.path, self._writer, lease["id"],
                                   lease["version"], list(failed), fencing=self._fencing)
        else:
            new = self.client.call("renew_lease", self.path, self._writer, lease["id"],
                                   fencing=self._fencing)
        new["length"] = max(new["length"], lease["length"])
        return self._install(idx, new, lease["written"])

    def truncate(self, size: int | None = None) -> int:
        self._check_open()
        if not self.writable():
            raise io.UnsupportedOperation(f"{self.path} is open for reading")
        self.flush()
        size = self._pos if size is None else size
        if size > self._size:
            raise BadRequest(f"truncate {self.path} to {size}: longer than its {self._size} "
                             f"bytes (truncate only shortens)")
        self.client.call("truncate", self.path, size, self._writer, fencing=self._fencing)
        self._size = size
        self._leases.clear()
        self._cache = None
        self._dirty = True
        return size

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self.writable():
                try:
                    self.flush()
                finally:
                    self.client.call("close_write", self.path, self._writer)
        finally:
            self._buf = bytearray()
            self._cache = None
            super().close()

    def __repr__(self) -> str:
        return f"<PanguFile {self.client.cluster}:{self.path} mode={self.mode!r}>"


LOCALITY_NODES_MAX = 8  # as many as a file can have replicas (REPLICATION_MAX)


def locality(urls) -> tuple[str, ...]:
    """The Ray nodes holding the most bytes of these Pangu files (at most LOCALITY_NODES_MAX,
    each holding at least half as much as the best), for data-local scheduling."""
    by_node: dict[str, int] = {}
    for url in urls:
        if not str(url).startswith("pangu://"):
            continue
        c, path = _split(url)
        info = c.call("locate", path)
        for ch in info["chunks"]:
            for node in {r["node"] for r in ch["replicas"]}:
                by_node[node] = by_node.get(node, 0) + ch["length"]
    if not by_node:
        return ()
    best = max(by_node.values())
    ranked = sorted(by_node, key=lambda n: (-by_node[n], n))
    return tuple(n for n in ranked[:LOCALITY_NODES_MAX] if by_node[n] * 2 >= best)


_clients: dict[str, Client] = {}


def client(cluster: str | None = None) -> Client:
    key = cluster or current_cluster()
    c = _clients.get(key)
    if c is None or not ray.is_initialized():
        c = _clients[key] = Client(key)
    return c


def _split(url: str) -> tuple[Client, str]:
    cluster, path = parse_url(url)
    return client(cluster), path


def open(url: str, mode: str = "rb", *, replication: int | None = None,  # noqa: A001
         chunk_size: int | None = None, fencing: tuple | None = None) -> PanguFile:
    """``fencing=(lock path, token)``: see ``PanguFile`` and docs/pangu.md, "Fencing tokens"."""
    c, path = _split(url)
    return c.open(path, mode, replication=replication, chunk_size=chunk_size, fencing=fencing)


def ls(url: str = "/", detail: bool = False) -> list:
    c, path = _split(url)
    return c.ls(path, detail)


def stat(url: str) -> dict:
    c, path = _split(url)
    return c.stat(path)


def exists(url: str) -> bool:
    c, path = _split(url)
    return c.exists(path)


def mkdir(url: str, parents: bool = False, fencing: tuple | None = None) -> dict:
    c, path = _split(url)
    return c.mkdir(path, parents, fencing=fencing)


def rm(url: str, recursive: bool = False, fencing: tuple | None = None) -> dict:
    c, path = _split(url)
    return c.rm(path, recursive, fencing=fencing)


def mv(src: str, dst: str, overwrite: bool = False, fencing: tuple | None = None) -> dict:
    c, s = _split(src)
    return c.mv(s, parse_url(dst)[1], overwrite, fencing=fencing)


def du(url: str = "/") -> dict:
    c, path = _split(url)
    return c.du(path)

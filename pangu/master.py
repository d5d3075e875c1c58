"""The Pangu master: namespace, chunk versions, chunkserver registry, leases and self-healing.

One async Ray actor (no CPU) per master. The namespace (``pangu.core.namespace``) changes only
through commands that are made durable in the journal (``pangu.io.journal``) before they are
acknowledged. Replica locations are *not* journaled: chunkservers report their chunks in every
heartbeat (to every master, so a standby's view is warm), as in GFS and HDFS.

High availability (a ``fuxi up`` cluster with Nuwa): two or more masters campaign in a Nuwa
election; the winner claims the Nuwa journal (which fences the previous active master),
replays the checkpoint and the log after it, and serves. Standbys answer ``NotActive`` naming
the active master. Without Nuwa (the embedded default) there is one master with a local
journal.

Leases. A writer holds a lease on the file (one writer per file; a second gets ``Busy``).
For each chunk it writes, the master picks a primary among the chunk's current replicas and
grants it a lease; a new lease on a replica set that changed raises the chunk's version
(journaled first) so a replica that missed writes is left behind at an older version:
*stale*, never read, deleted, replaced.

Maintenance (active master, every ``maintain_s``): chunkservers silent for ``dead_after_s``
are declared dead; lost replicas are re-created most-endangered-first within a byte budget per
second (``repair_bytes_per_s``); replicas beyond the factor are dropped (draining servers
first); then, when nothing needs repair, data moves toward even use (``rebalance``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import time
from typing import Any

import ray

from pangu.core import fencing as F
from pangu.core import paths as P
from pangu.core import placement
from pangu.core.access import chunk_scope, writer_key
from pangu.errors import (BadRequest, Busy, Denied, IsADir, NotActive, NotEnoughServers,
                          NotFound, PanguError, Unauthenticated, Unavailable)
from pangu.errors import DiskFailed
from pangu.handles import Handles
from pangu.chunkserver import pangu_root
from pangu.io.journal import CHECKPOINT_EVERY, LocalJournal, NuwaJournal
from pangu.core.namespace import REPLICATION_MAX, Namespace

logger = logging.getLogger(__name__)

LEASE_S = 30.0  # a primary's lease on a chunk
CHUNK_ACCESS_TTL_S = 600.0  # a chunk access token's life (a reader asks again after it)
WRITER_LEASE_S = 60.0  # a writer's lease on a file, renewed by every call it makes
DEAD_AFTER_S = 10.0
MAINTAIN_S = 1.0
REPAIR_BYTES_PER_S = 256 * 1024 * 1024  # bandwidth cap of re-replication, all servers together
REPAIR_CONCURRENCY = 4  # chunk copies in flight
CONTROL_CALL_TIMEOUT_S = 10.0  # master -> chunkserver control call
COPY_CALL_TIMEOUT_S = 120.0  # one whole-chunk copy (repair, rebalance)
EVENTS_MAX = 1000
NAMESPACE_REQUESTS_REMEMBERED_MAX = 100_000  # request ids kept for retried namespace changes

REBALANCE_THRESHOLD = 0.10  # move data off servers this far above the mean utilisation
ELECTION_RETRY_S = 1.0
SESSION_TTL_S = 4.0  # a dead active master's election entry lapses after this long


def _chunks_changed(cmd: dict, res: dict) -> set[str]:
    """The chunks whose fate a namespace command changed: those it freed (every command that
    drops chunks reports them in ``freed``) and those it re-versioned (a replica at the old
    version would look stale)."""
    out = set(res.get("freed") or ())
    if cmd.get("op") == "bump_version" and isinstance(res.get("chunk"), str):
        out.add(res["chunk"])
    if res.get("cut"):
        out.add(res["cut"]["chunk"])
    return out


class _ServerView:
    __slots__ = ("id", "name", "node", "capacity", "used", "last", "chunks", "draining", "dead",
                 "dir")

    def __init__(self, rep: dict, now: float):
        self.id = rep["id"]
        self.draining = False
        self.dead = False
        self.update(rep, now)

    def update(self, rep: dict, now: float) -> None:
        self.name, self.node, self.dir = rep["name"], rep["node"], rep.get("dir")
        self.capacity, self.used = int(rep["capacity_bytes"]), int(rep["used_bytes"])
        # A replica's version only grows while it exists; a report built before a version
        # change the master made (and saw succeed) must not roll its view back.
        known = getattr(self, "chunks", {})
        self.chunks = {c: (max(int(v), known.get(c, (0, 0))[0]), int(n))
                       for c, (v, n) in rep["chunks"].items()}
        self.last = now
        self.dead = False
        if rep.get("disk_failed"):
            self.draining = True  # its disk failed: no new replicas there, its data moves away

    def as_server(self) -> placement.Server:
        return placement.Server(self.id, self.node, self.capacity, self.used, not self.dead,
                                self.draining)


@ray.remote(num_cpus=0, max_restarts=-1)
class PanguMaster:
    def __init__(self, cluster: str, data_dir: str, namespace: str, name: str,
                 nuwa: list | None = None, settings: dict | None = None,
                 auth: dict | None = None):
        from zhongkui.files import private_files
        from zhongkui.shell import make_guard

        private_files()  # the journal and checkpoints: 0600/0700 from creation (issue 14)
        s = dict(settings or {})
        # Zhongkui: namespace operations are decided on their paths (a file's or directory's
        # owner is who created it); chunk reads and writes carry access tokens signed here
        # and checked by the chunkservers.
        self.guard = make_guard(auth, f"pangu-{name}", namespace)
        self.cluster, self.data_dir, self.namespace, self.name = cluster, data_dir, namespace, name
        self.nuwa_addresses = [tuple(a) for a in nuwa] if nuwa else None
        self.dead_after_s = float(s.get("dead_after_s", DEAD_AFTER_S))
        self.lease_s = float(s.get("lease_s", LEASE_S))
        self.writer_lease_s = float(s.get("writer_lease_s", WRITER_LEASE_S))
        self.maintain_s = float(s.get("maintain_s", MAINTAIN_S))
        self.repair_bytes_per_s = int(s.get("repair_bytes_per_s", REPAIR_BYTES_PER_S))
        self.rebalance = bool(s.get("rebalance", True))
        self.rebalance_threshold = float(s.get("rebalance_threshold", REBALANCE_THRESHOLD))
        self.allow_same_node = bool(s.get("allow_same_node", False))
        self.checkpoint_every = int(s.get("checkpoint_every", CHECKPOINT_EVERY))
        self.session_ttl_s = float(s.get("session_ttl_s", SESSION_TTL_S))
        self.expect_servers = int(s.get("expect_servers", 0))
        self.rng = random.Random(s.get("seed", 0))
        self.ns = Namespace()
        self.journal: Any = None
        self.active = False
        self.active_since = 0.0
        self.servers: dict[str, _ServerView] = {}
        self.file_leases: dict[str, tuple[str, float]] = {}  # path -> writer, until
        self.chunk_leases: dict[str, dict] = {}  # cid -> primary, secondaries, version, until
        self.busy: set[str] = set()  # chunks being re-versioned, truncated or copied
        # Chunks that a namespace change not yet durable freed or re-versioned: the garbage
        # collector leaves them alone until the journal append returns (issue 14, defect 4).
        self.undurable: set[str] = set()
        self.disk_failed: Exception | None = None  # the local journal's disk failed
        self.requests: collections.OrderedDict = collections.OrderedDict()  # id -> result
        self.foreign: set[str] = set()  # chunkservers of another file system
        self.events: collections.deque = collections.deque(maxlen=EVENTS_MAX)
        self.counters = collections.Counter()
        self._mut = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._handles = Handles(namespace)
        self.nuwa = None
        self.election = None

    # ------------------------------------------------------------ start and roles
    async def start(self, cred: str | None = None) -> dict:
        from zhongkui.guard import require_platform

        require_platform(self.guard, cred, "start a Pangu master")  # issue 14, defect 8
        return await self._start()

    async def _start(self) -> dict:
        if self._tasks:
            return self.role()
        loop = asyncio.get_running_loop()
        if self.nuwa_addresses:
            from nuwa.client import AsyncNuwa
            from nuwa.recipes import Election

            self.nuwa = AsyncNuwa(self.nuwa_addresses, creator=self.name,
                                  token=self.guard.platform_token if self.guard.enabled else "")
            self.election = Election(self.nuwa, f"pangu-{self.cluster}", self.name)
            self._tasks.append(loop.create_task(self._campaign()))
        else:
            self.journal = LocalJournal(os.path.join(pangu_root(self.data_dir, "local"),
                                                     "master"))
            ckpt, entries = self.journal.load()
            self._rebuild(ckpt, entries)
            self._become_active()
        self._tasks.append(loop.create_task(self._maintain_loop()))
        return self.role()

    def _rebuild(self, ckpt: dict | None, entries: list[dict]) -> None:
        ns = Namespace.restore(ckpt) if ckpt else Namespace()
        self.requests.clear()
        for cmd in entries:
            res = ns.apply(cmd)  # a journaled command was valid when it was written
            if cmd.get("request_id"):
                self._remember(cmd["request_id"], res)
        self.ns = ns
        self.undurable = set()  # the namespace is exactly what is durable again
        self.disk_failed = None

    def _become_active(self) -> None:
        self.active = True
        self.active_since = time.monotonic()
        self.file_leases.clear()
        self.chunk_leases.clear()
        self._event("active", f"{self.name} is the active master (journal at "
                              f"{self.journal.seq})")

    async def _campaign(self) -> None:
        from nuwa import errors as NE

        while True:
            try:
                if self.nuwa._session is None or self.nuwa._session.expired:
                    self.nuwa._session = await self.nuwa.session(self.session_ttl_s)
                await self.election.campaign()
                journal = NuwaJournal(self.nuwa, f"/pangu/{self.cluster}", self.name)
                await journal.claim()
                ckpt, entries = await journal.load()
                async with self._mut:
                    self.journal = journal
                    self._rebuild(ckpt, entries)
                    self._become_active()
                return
            except asyncio.CancelledError:
                raise
            except (NE.NuwaError, PanguError, OSError) as e:
                logger.warning("%s: campaign failed (%s); retrying", self.name, e)
                with contextlib.suppress(Exception):
                    await self.election.resign()
                await asyncio.sleep(ELECTION_RETRY_S)

    async def _step_down(self, why: str) -> None:
        self.active = False
        self._event("standby", f"{self.name} stepped down: {why}")
        if self.election is not None:
            with contextlib.suppress(Exception):
                await self.election.resign()
            self._tasks.append(asyncio.get_running_loop().create_task(self._campaign()))

    @property
    def epoch(self) -> int:
        """This master's term: the Nuwa journal's epoch (0 with a local journal)."""
        return int(getattr(self.journal, "epoch_version", 0) or 0)

    def role(self) -> dict:
        return {"name": self.name, "active": self.active,
                "journal_seq": self.journal.seq if self.journal else None}

    async def active_master(self) -> str | None:
        if self.active:
            return self.name
        if self.election is not None:
            with contextlib.suppress(Exception):
                return await self.election.leader()
        return None

    async def _need_active(self) -> None:
        if self.disk_failed is not None and not self.active:
            # The local journal's disk failed: try to reopen it (a new file holding what is
            # durable); until that works, every call says why.
            async with self._mut:
                if self.disk_failed is not None and not self.active:
                    try:
                        ckpt, entries = self.journal.load()
                    except DiskFailed:
                        raise DiskFailed(self.disk_failed.errno, f"{self.name}: the journal's "
                                         f"disk failed ({self.disk_failed}); the master serves "
                                         f"nothing until it can write again") from None
                    self._rebuild(ckpt, entries)
                    self._become_active()
        if self.active and self.nuwa is not None and (self.nuwa._session is None
                                                      or self.nuwa._session.expired):
            # Our election entry went with the session: another master may be active now.
            await self._step_down("its Nuwa session expired")
        if not self.active:
            leader = await self.active_master()
            raise NotActive(f"{self.name} is not the active Pangu master"
                            + (f"; the active one is {leader}" if leader else
                               "; no master is active yet (election in progress)"))

    def _event(self, kind: str, message: str) -> None:
        self.events.append({"t": time.time(), "kind": kind, "message": message})
        self.counters[kind] += 1
        logger.info("pangu master %s: %s", self.name, message)

    def _handle(self, name: str):
        return self._handles.get(name)

    # ------------------------------------------------------------ Zhongkui
    async def zk_set_keys(self, proof: str, doc: dict) -> int:
        """Zhongkui's keys after a rotation (from FuxiMaster)."""
        return self.guard.accept_keys(proof, doc)

    async def _who(self, cred):
        from zhongkui.errors import BadCredentials

        try:
            who = await self.guard.aidentify(cred)
        except BadCredentials as e:
            raise Unauthenticated(f"{type(e).__name__}: {e}") from None
        if (who.scope or {}).get("kind") == "chunk":
            # A chunk access token opens one chunk on the chunkservers, nothing here.
            raise Unauthenticated("a chunk access token is not a credential for the master; "
                                  "present the user's token")
        return who

    def _owner_of(self, path: str, nearest: bool = False) -> str | None:
        """The owner of ``path``; with ``nearest``, of its nearest existing ancestor (what a
        create with parents=True is decided on)."""
        try:
            p = P.normalize(path)
        except PanguError:
            return None
        while True:
            n = self.ns.nodes.get(p)
            if n is not None or not nearest or p == "/":
                return n.owner if n is not None else None
            p = P.parent(p)

    async def _authz(self, cred, path, perm: str, owner_path: str | None = None):
        """The verified caller, allowed ``perm`` on ``path`` (owned by ``owner_path``'s
        owner, default the path's own), or Unauthenticated / Denied."""
        from zhongkui.errors import Denied as ZDenied
        from zhongkui.errors import ZhongkuiError

        who = await self._who(cred)
        if not self.guard.enabled:
            return who
        if not isinstance(path, str):
            raise BadRequest(f"path {path!r:.60}: expected a str")
        try:
            await self.guard.acheck(who, "pangu", P.normalize(path), perm,
                                    self._owner_of(owner_path or path, nearest=perm == "create"))
        except ZDenied as e:
            raise Denied(str(e)) from None
        except ZhongkuiError as e:
            raise BadRequest(str(e)) from None
        return who

    async def _platform_only(self, cred, what: str) -> None:
        who = await self._who(cred)
        if self.guard.enabled and not who.platform:
            raise Denied(f"user {who.user!r} may not {what}: the platform's own actors only")

    async def _admin_only(self, cred, what: str) -> None:
        who = await self._who(cred)
        if self.guard.enabled and not who.admin:
            self.guard.report_denial(who.user, what, "pangu", "administrators only")
            raise Denied(f"user {who.user!r} may not {what}: administrators only")

    def _access(self, who, cid: str, mode: str, version: int | None = None) -> str:
        """A chunk access token: user, chunk, mode (r or w), CHUNK_ACCESS_TTL_S; a write
        token also names the lease's version, so it dies with the lease (a writer that lost
        the file, or whose lease moved on, cannot write with it)."""
        if not self.guard.enabled:
            return ""
        return self.guard.keyring.sign(who.user, (), now=time.time(), ttl_s=CHUNK_ACCESS_TTL_S,
                                       scope=chunk_scope(cid, mode, version),
                                       gen=self.guard.chunk_gen(who))  # revoked with its user

    def _writer_key(self, who, writer) -> str:
        return writer_key(who.user if self.guard.enabled else None, writer)

    async def _fence(self, fence: tuple[str, int] | None) -> None:
        """Refuse a stale fencing token; journal a newer one before the write it comes with
        goes on (a failover must not forget it)."""
        if fence is None:
            return
        self.ns.fencing.check(*fence)
        if self.ns.fencing.newer(*fence):
            await self._mutate({"op": "fence", "fencing": list(fence)})

    def _parse_fence(self, fencing) -> tuple[str, int] | None:
        return F.admit(self.ns.fencing, fencing)

    def _owner_name(self, who, given: str) -> str:
        return who.user if self.guard.enabled else given

    async def _call(self, server: str, method: str, *args,
                    timeout_s: float = CONTROL_CALL_TIMEOUT_S):
        sv = self.servers[server]
        kw = {"epoch": self.epoch}
        if self.guard.enabled:
            kw["cred"] = self.guard.platform_token()
        try:
            return await asyncio.wait_for(
                getattr(self._handle(sv.name), method).remote(*args, **kw), timeout_s)
        except Exception:
            self._handles.forget(sv.name)
            raise

    # ------------------------------------------------------------ the journaled namespace
    async def _mutate(self, cmd: dict, request_id: str | None = None) -> dict:
        """Apply one namespace command and make it durable before returning. A command with a
        ``request_id`` already applied (a client retrying after a lost reply or a failover:
        the ids are in the journal) returns the first result instead of applying again."""
        await self._need_active()
        async with self._mut:
            await self._need_active()
            if request_id is not None and request_id in self.requests:
                return self.requests[request_id]
            cmd = dict(cmd, now=time.time())
            if request_id is not None:
                cmd["request_id"] = request_id
            res = self.ns.apply(cmd)  # raises, leaving the namespace unchanged, if invalid
            # Memory is now ahead of the journal: what this change freed is not garbage until
            # the change is durable (a heartbeat may run while the append awaits).
            changed = _chunks_changed(cmd, res)
            self.undurable |= changed
            try:
                await self.journal.append(cmd)
            except Exception as e:  # noqa: BLE001 - memory is now ahead of the journal
                await self._step_down(f"journal write failed ({type(e).__name__}: {e})")
                if self.election is None:  # the local journal: reload what is durable
                    try:
                        ckpt, entries = self.journal.load()
                    except DiskFailed as e2:
                        # The disk still refuses: stay down, with what is durable on disk
                        # untouched; a restart (or the disk coming back) recovers.
                        self.disk_failed = e2
                        raise DiskFailed(e2.errno, f"the Pangu master's journal disk failed "
                                                   f"({e2}); it serves nothing until it can "
                                                   f"write again") from None
                    self._rebuild(ckpt, entries)
                    self._become_active()
                if isinstance(e, DiskFailed):  # typed: this change did not happen
                    raise type(e)(e.errno, f"the Pangu master could not make a change durable "
                                           f"({e}); nothing was changed") from None
                raise Unavailable(f"the Pangu master could not make a change durable "
                                  f"({type(e).__name__}: {e}); retry") from None
            self.undurable -= changed
            if request_id is not None:
                self._remember(request_id, res)
            if self.journal.seq % self.checkpoint_every == 0:
                await self.journal.checkpoint(self.ns.snapshot())
            return res

    def _remember(self, request_id: str, res: dict) -> None:
        self.requests[request_id] = res
        while len(self.requests) > NAMESPACE_REQUESTS_REMEMBERED_MAX:
            self.requests.popitem(last=False)

    # ------------------------------------------------------------ replica views
    def _live(self, sid: str) -> bool:
        sv = self.servers.get(sid)
        return sv is not None and not sv.dead

    def _current(self, cid: str, version: int) -> list[str]:
        """Live servers holding chunk ``cid`` at ``version`` or newer."""
        return sorted(sid for sid, sv in self.servers.items()
                      if not sv.dead and sv.chunks.get(cid, (0, 0))[0] >= version)

    def _file_info(self, path: str) -> dict:
        st = self.ns.stat(path)
        if st["type"] != "file":
            raise IsADir(f"{path} is a directory; expected a file")
        out = []
        for c in self.ns.chunks(path):
            reps = [{"id": sid, "name": self.servers[sid].name, "node": self.servers[sid].node,
                     "dir": self.servers[sid].dir} for sid in self._current(c.id, c.version)]
            out.append({"id": c.id, "version": c.version, "length": c.length, "replicas": reps})
        return dict(st, chunks=out)

    # ------------------------------------------------------------ namespace API
    async def mkdir(self, path: str, parents: bool = False, owner: str = "anonymous",
                    request_id: str | None = None, cred: str | None = None,
                    fencing=None) -> dict:
        who = await self._authz(cred, path, "create", P.parent(P.normalize(path))
                                if isinstance(path, str) and path.startswith("/") else None)
        return await self._mutate(F.with_fence({"op": "mkdir", "path": path, "parents": parents,
                                                "owner": self._owner_name(who, owner)},
                                               self._parse_fence(fencing)), request_id)

    async def stat(self, path: str, cred: str | None = None) -> dict:
        await self._need_active()
        await self._authz(cred, path, "read")
        return self.ns.stat(path)

    async def exists(self, path: str, cred: str | None = None) -> bool:
        await self._need_active()
        await self._authz(cred, path, "read")
        return self.ns.exists(P.normalize(path))

    async def ls(self, path: str, cred: str | None = None) -> list[dict]:
        await self._need_active()
        await self._authz(cred, path, "read")
        return self.ns.ls(path)

    async def du(self, path: str, cred: str | None = None) -> dict:
        await self._need_active()
        await self._authz(cred, path, "read")
        return self.ns.du(path)

    async def locate(self, path: str, cred: str | None = None) -> dict:
        """The file's chunks and replicas, each chunk with a read access token."""
        await self._need_active()
        who = await self._authz(cred, path, "read")
        info = self._file_info(P.normalize(path))
        if self.guard.enabled:
            for c in info["chunks"]:
                c["access"] = self._access(who, c["id"], "r")
        return info

    async def rename(self, src: str, dst: str, overwrite: bool = False,
                     request_id: str | None = None, cred: str | None = None,
                     fencing=None) -> dict:
        await self._authz(cred, src, "delete")
        if isinstance(dst, str) and dst.startswith("/"):
            await self._authz(cred, dst, "create", P.parent(P.normalize(dst)))
        cmd = {"op": "rename", "src": src, "dst": dst, "overwrite": overwrite}
        return await self._mutate(F.with_fence(cmd, self._parse_fence(fencing)), request_id)

    async def delete(self, path: str, recursive: bool = False,
                     request_id: str | None = None, cred: str | None = None,
                     fencing=None) -> dict:
        await self._authz(cred, path, "delete")
        cmd = {"op": "delete", "path": path, "recursive": recursive}
        res = await self._mutate(F.with_fence(cmd, self._parse_fence(fencing)), request_id)
        p = res["path"]
        for fp in [f for f in self.file_leases if P.is_under(f, p)]:
            del self.file_leases[fp]
        for cid in res["freed"]:
            self.chunk_leases.pop(cid, None)
        return res

    # ------------------------------------------------------------ writer leases
    def _check_writer(self, path: str, writer: str, take: bool = False,
                      fence: tuple[str, int] | None = None) -> None:
        """Take or renew ``writer``'s lease on ``path`` (writer, until, fencing token). A
        writer with a newer fencing token of the same lock takes the lease over from one
        holding an older token: the old holder lost the lock."""
        if fence is not None:
            self.ns.fencing.check(*fence)
        now = time.monotonic()
        held = self.file_leases.get(path)
        if held is not None and held[0] != writer and held[1] > now:
            old = held[2] if len(held) > 2 else None
            if fence is not None and old is not None and old[0] == fence[0] \
                    and old[1] < fence[1]:
                self._event("fenced", f"{path}: the writer holding token {old[1]} of lock "
                                      f"{old[0]} is replaced by one holding token {fence[1]}")
                for cid, lease in list(self.chunk_leases.items()):
                    if lease["writer"] == held[0]:
                        del self.chunk_leases[cid]
            else:
                raise Busy(f"{path} is open for writing by another client (its lease ends in "
                           f"{held[1] - now:.0f}s unless renewed); one writer per file")
        if held is None and not take and not self.ns.exists(path):
            raise NotFound(f"{path} no longer exists (deleted or moved while open)")
        if fence is None and held is not None and held[0] == writer and len(held) > 2:
            fence = held[2]  # the same writer renewing: it keeps the token it opened with
        self.file_leases[path] = (writer, now + self.writer_lease_s, fence)

    async def open_write(self, path: str, mode: str, writer: str, owner: str = "anonymous",
                         replication: int | None = None, chunk_size: int | None = None,
                         request_id: str | None = None, cred: str | None = None,
                         fencing=None) -> dict:
        """Take the file's writer lease. ``mode`` is ``w`` (create or truncate), ``x`` (create;
        the file must not exist), ``a`` (append; create if missing) or ``r+`` (update an
        existing file)."""
        path = P.normalize(path)
        await self._need_active()
        if self.ns.exists(path):
            who = await self._authz(cred, path, "write")
        else:
            who = await self._authz(cred, path, "create", P.parent(path))
        owner = self._owner_name(who, owner)
        if mode not in ("w", "x", "a", "r+"):
            raise BadRequest(f"mode {mode!r}; expected w, x, a or r+")
        writer = self._writer_key(who, writer)
        fence = self._parse_fence(fencing)
        self._check_writer(path, writer, take=True, fence=fence)
        try:
            exists = self.ns.exists(path)
            if exists and self.ns.stat(path)["type"] != "file":
                raise IsADir(f"{path} is a directory; cannot open it as a file")
            if mode == "r+" and not exists:
                raise NotFound(f"{path} does not exist (mode r+ needs an existing file)")
            if mode in ("w", "x") or not exists:
                cmd = {"op": "create", "path": path, "overwrite": mode != "x", "owner": owner}
                if replication is not None:
                    cmd["replication"] = replication
                if chunk_size is not None:
                    cmd["chunk_size"] = chunk_size
                res = await self._mutate(F.with_fence(cmd, fence), request_id)
                for cid in res["freed"]:
                    self.chunk_leases.pop(cid, None)
            else:
                await self._fence(fence)
            return self._file_info(path)
        except BaseException:
            if self.file_leases.get(path, ("",))[0] == writer:
                del self.file_leases[path]
            raise

    async def close_write(self, path: str, writer: str, cred: str | None = None) -> None:
        path = P.normalize(path)
        writer = self._writer_key(await self._who(cred), writer)  # only one's own writer
        held = self.file_leases.get(path)
        if held is not None and held[0] == writer:
            del self.file_leases[path]
        for cid, lease in list(self.chunk_leases.items()):
            if lease["writer"] == writer:
                del self.chunk_leases[cid]

    async def chunk_for_write(self, path: str, writer: str, index: int,
                              cred: str | None = None, fencing=None) -> dict:
        """The chunk at ``index`` of the file, created if it is the next one, with a primary
        holding a lease: {id, version, length, capacity, primary, secondaries, lease_s} and a
        write access token."""
        path = P.normalize(path)
        await self._need_active()
        who = await self._authz(cred, path, "write")
        if isinstance(index, bool) or not isinstance(index, int):
            raise BadRequest(f"chunk index {index!r:.40}: expected an int")
        writer, fence = self._writer_key(who, writer), self._parse_fence(fencing)
        self._check_writer(path, writer, fence=fence)
        await self._fence(fence)
        return self._with_access(who, await self._chunk_for_write(path, writer, index))

    def _with_access(self, who, lease: dict) -> dict:
        if self.guard.enabled:
            lease = dict(lease, access=self._access(who, lease["id"], "w", lease["version"]))
        return lease

    async def _chunk_for_write(self, path: str, writer: str, index: int) -> dict:
        self._check_writer(path, writer)
        st = self.ns.stat(path)
        chunks = self.ns.chunks(path)
        if index == len(chunks):
            res = await self._mutate({"op": "add_chunk", "path": path})
            cid = res["chunk"]
            cs = st["chunk_size"]
            try:
                sids = placement.choose([s.as_server() for s in self.servers.values()],
                                        st["replication"], cs, self.rng,
                                        allow_same_node=self.allow_same_node)
            except NotEnoughServers as e:
                sids = self._fewer(st["replication"], cs)
                if not sids:
                    raise NotEnoughServers(f"no chunkserver can take a new chunk of {path}: "
                                           f"{e}") from None
                self._event("under_replicated_write",
                            f"chunk {cid} of {path} starts on {len(sids)} of "
                            f"{st['replication']} replicas ({e})")
            ok = await self._create_on(cid, sids, 1, cs)
            if not ok:
                raise Unavailable(f"no chunkserver could create chunk {cid} of {path}")
            return await self._lease(cid, writer, fresh=ok)
        if not 0 <= index < len(chunks):
            raise BadRequest(f"chunk index {index} of {path}: expected 0..{len(chunks)}")
        return await self._lease(chunks[index].id, writer)

    def _fewer(self, n: int, size: int) -> list[str]:
        for k in range(n - 1, 0, -1):
            try:
                return placement.choose([s.as_server() for s in self.servers.values()], k,
                                        size, self.rng, allow_same_node=self.allow_same_node)
            except NotEnoughServers:
                continue
        return []

    async def _create_on(self, cid: str, sids: list[str], version: int, capacity: int) -> list[str]:
        async def one(sid: str) -> str | None:
            try:
                await self._call(sid, "create_chunk", cid, version, capacity)
                self.servers[sid].chunks[cid] = (version, 0)
                return sid
            except Exception as e:  # noqa: BLE001 - that server is left out
                self._event("create_failed", f"chunk {cid} on {sid}: {e}")
                return None
        return [s for s in await asyncio.gather(*(one(s) for s in sids)) if s]

    async def _lease(self, cid: str, writer: str, fresh: list[str] | None = None,
                     exclude: frozenset = frozenset()) -> dict:
        path, f, i = self.ns._locate(cid)
        c = f.chunks[i]
        now = time.monotonic()
        lease = self.chunk_leases.get(cid)
        reps = fresh or [s for s in self._current(cid, c.version) if s not in exclude]
        if (lease is not None and lease["version"] == c.version and lease["until"] > now + 1
                and lease["writer"] == writer and set(lease["replicas"]) == set(reps)
                and not exclude):
            return self._lease_reply(cid, lease, f)
        if not reps and c.length == 0 and fresh is None:
            # An empty chunk whose creation failed everywhere: create it again.
            sids = self._fewer(f.replication + 1, f.chunk_size)
            fresh = await self._create_on(cid, sids, c.version, f.chunk_size) if sids else []
            reps = fresh
        if not reps:
            raise Unavailable(f"chunk {cid} of {path} has no live current replica to write to "
                              f"(fsck reports it missing until a server holding it returns)")
        version = c.version
        self.busy.add(cid)
        try:
            if fresh is None:
                # A new lease on this replica set: raise the version so any replica outside it
                # (one that missed writes, or the excluded failures) is stale from now on.
                res = await self._mutate({"op": "bump_version", "chunk": cid})
                version = res["version"]
                ok = []
                for sid in reps:
                    try:
                        await self._call(sid, "set_version", cid, version)
                        self.servers[sid].chunks[cid] = (version,
                                                         self.servers[sid].chunks[cid][1])
                        ok.append(sid)
                    except Exception as e:  # noqa: BLE001
                        self._event("stale", f"chunk {cid}: {sid} missed version {version} ({e})")
                reps = ok
                if not reps:
                    raise Unavailable(f"no replica of chunk {cid} took version {version}")
            primary = min(reps, key=lambda s: (self.servers[s].used, s))
            secondaries = [s for s in reps if s != primary]
            lease = {"primary": primary, "replicas": reps, "version": version, "writer": writer,
                     "until": time.monotonic() + self.lease_s}
            await self._call(primary, "grant_lease", cid, version,
                             [self.servers[s].name for s in secondaries], self.lease_s)
            self.chunk_leases[cid] = lease
        finally:
            self.busy.discard(cid)
        return self._lease_reply(cid, lease, f)

    def _lease_reply(self, cid: str, lease: dict, f) -> dict:
        c = next(c for c in f.chunks if c.id == cid)
        return {"id": cid, "version": lease["version"], "length": c.length,
                "capacity": f.chunk_size, "primary": self.servers[lease["primary"]].name,
                "replicas": len(lease["replicas"]), "lease_s": self.lease_s * 0.8}

    async def write_failed(self, path: str, writer: str, cid: str, version: int,
                           failed: list[str], cred: str | None = None, fencing=None) -> dict:
        """Replicas named in ``failed`` missed a write: continue without them (they become
        stale with the next version) and return the new lease. Only for a chunk of ``path``,
        by the writer holding its lease."""
        path = P.normalize(path)
        await self._need_active()
        who = await self._authz(cred, path, "write")
        writer, fence = self._writer_key(who, writer), self._parse_fence(fencing)
        if not isinstance(failed, list) or len(failed) > REPLICATION_MAX or \
                not all(isinstance(n, str) and 0 < len(n) <= 256 for n in failed):
            raise BadRequest(f"failed {failed!r:.80}: expected a list of at most "
                             f"{REPLICATION_MAX} chunkserver names")
        self.ns.chunk_of(path, cid)
        self._check_writer(path, writer, fence=fence)
        await self._fence(fence)
        names = set(failed)
        bad = frozenset(sid for sid, sv in self.servers.items() if sv.name in names)
        self._event("stale", f"chunk {cid}: {sorted(bad)} missed a write at version {version}")
        self.chunk_leases.pop(cid, None)
        return self._with_access(who, await self._lease(cid, writer, exclude=bad))

    async def renew_lease(self, path: str, writer: str, cid: str,
                          cred: str | None = None, fencing=None) -> dict:
        """A fresh lease (and write access token) on chunk ``cid`` of ``path``."""
        path = P.normalize(path)
        await self._need_active()
        who = await self._authz(cred, path, "write")
        writer, fence = self._writer_key(who, writer), self._parse_fence(fencing)
        self.ns.chunk_of(path, cid)
        self._check_writer(path, writer, fence=fence)
        await self._fence(fence)
        return self._with_access(who, await self._lease(cid, writer))

    async def commit(self, path: str, writer: str, cid: str, version: int, length: int,
                     cred: str | None = None, fencing=None) -> dict:
        """Record chunk ``cid`` of ``path`` at ``length`` bytes (the writer's lease holder)."""
        path = P.normalize(path)
        await self._need_active()
        who = await self._authz(cred, path, "write")
        writer, fence = self._writer_key(who, writer), self._parse_fence(fencing)
        self.ns.chunk_of(path, cid)
        self._check_writer(path, writer, fence=fence)
        # The path goes into the command: applied only if the chunk is still that file's.
        return await self._mutate(F.with_fence({"op": "commit", "chunk": cid, "path": path,
                                                "version": version, "length": length}, fence))

    async def truncate(self, path: str, length: int, writer: str | None = None,
                       request_id: str | None = None, cred: str | None = None,
                       fencing=None) -> dict:
        path = P.normalize(path)
        await self._need_active()
        who = await self._authz(cred, path, "write")
        fence = self._parse_fence(fencing)
        self._check_writer(path, self._writer_key(who, writer) if writer is not None
                           else f"truncate-{id(self)}-{time.monotonic()}", fence=fence)
        try:
            res = await self._mutate(F.with_fence({"op": "truncate", "path": path,
                                                   "length": length}, fence), request_id)
            cut = res.get("cut")
            for cid in res["freed"]:
                self.chunk_leases.pop(cid, None)
            if cut:
                cid = cut["chunk"]
                self.chunk_leases.pop(cid, None)
                self.busy.add(cid)
                try:
                    done = 0
                    for sid in self._current(cid, cut["version"] - 1):
                        try:
                            await self._call(sid, "truncate", cid, cut["length"], cut["version"])
                            self.servers[sid].chunks[cid] = (cut["version"], cut["length"])
                            done += 1
                        except Exception as e:  # noqa: BLE001 - it stays behind, stale
                            self._event("stale", f"chunk {cid}: truncate on {sid} failed ({e})")
                    if not done:
                        self._event("missing", f"chunk {cid}: no replica took the truncate")
                finally:
                    self.busy.discard(cid)
            return {"path": path, "size": res["size"]}
        finally:
            if writer is None:
                self.file_leases.pop(path, None)

    # ------------------------------------------------------------ chunkservers
    async def heartbeat(self, rep: dict, cred: str | None = None) -> dict:
        await self._platform_only(cred, "report as a chunkserver")
        if not self._tasks:
            # Ray restarted this actor after its process died: chunkservers' heartbeats bring
            # it back (it recovers from the journal, or campaigns again).
            await self._start()
        fsid = self.journal.fsid if self.journal is not None else None
        if rep.get("fsid") and fsid and rep["fsid"] != fsid:
            self.servers.pop(rep["id"], None)
            if rep["id"] not in self.foreign:
                self.foreign.add(rep["id"])
                self._event("foreign_server", f"chunkserver {rep['id']} holds chunks of file "
                                              f"system {rep['fsid']}, not {fsid}: ignored")
            return {"active": False}
        now = time.monotonic()
        sv = self.servers.get(rep["id"])
        if sv is None:
            sv = self.servers[rep["id"]] = _ServerView(rep, now)
            self._event("server_joined", f"chunkserver {sv.id} ({sv.name}) joined")
        else:
            if sv.dead:
                self._event("server_back", f"chunkserver {sv.id} is heartbeating again")
            if sv.name != rep["name"]:
                self._handles.forget(sv.name)
            sv.update(rep, now)
        for cid in rep.get("corrupt", []):
            self._event("corrupt", f"chunk {cid}: the replica on {sv.id} failed its checksum "
                                   f"and was removed")
        if not self.active:
            return {"active": False}
        return {"active": True, "epoch": self.epoch, "fsid": fsid,
                "delete": self._garbage(sv)}

    def _settling(self) -> bool:
        """Just after becoming active, the replica map is incomplete until the chunkservers
        have reported: no repair or garbage collection until ``dead_after_s`` has passed, or
        every expected chunkserver (``expect_servers``) has reported twice."""
        age = time.monotonic() - self.active_since
        if age >= self.dead_after_s:
            return False
        if self.expect_servers and age >= 2.5:
            live = sum(1 for s in self.servers.values()
                       if not s.dead and s.last > self.active_since)
            return live < self.expect_servers
        return True

    def _garbage(self, sv: _ServerView) -> list[tuple[str, int]]:
        """Replicas on ``sv`` to delete: of chunks no file references, and stale ones that
        have a current copy elsewhere. Never while the master is settling after taking over."""
        if self._settling():
            return []
        out: list[tuple[str, int]] = []
        for cid, (version, _) in list(sv.chunks.items()):
            if cid in self.busy or cid in self.undurable:
                continue
            loc = self.ns.chunk_index.get(cid)
            if loc is None:
                out.append((cid, version))
            else:
                path, i = loc
                cur = self.ns.nodes[path].chunks[i].version
                if version < cur and any(s != sv.id for s in self._current(cid, cur)):
                    out.append((cid, version))  # deleted only if still at this version
        for cid, _ in out:
            sv.chunks.pop(cid, None)
        if out:
            self._event("gc", f"{len(out)} replica(s) on {sv.id} deleted (unreferenced or stale)")
        return out

    async def drain(self, server: str, draining: bool = True, cred: str | None = None) -> dict:
        await self._need_active()
        await self._admin_only(cred, "drain a chunkserver")
        sv = self.servers.get(server)
        if sv is None:
            raise NotFound(f"no chunkserver {server!r}; known: {sorted(self.servers)}")
        sv.draining = draining
        self._event("drain" if draining else "undrain", f"chunkserver {server} "
                    + ("drains: its data moves away" if draining else "takes data again"))
        return {"server": server, "draining": draining, "chunks": len(sv.chunks)}

    # ------------------------------------------------------------ self-healing
    def _chunk_infos(self) -> dict[str, placement.ChunkInfo]:
        holders: dict[str, set[str]] = collections.defaultdict(set)
        for sid, sv in self.servers.items():
            for cid, (v, _) in sv.chunks.items():
                holders[cid].add((sid, v))
        out = {}
        for path, node in self.ns.nodes.items():
            if node.kind != "file":
                continue
            for c in node.chunks:
                reps = frozenset(sid for sid, v in holders.get(c.id, ()) if v >= c.version)
                out[c.id] = placement.ChunkInfo(reps, node.replication,
                                                max(c.length, 1))
        return out

    async def _maintain_loop(self) -> None:
        while True:
            await asyncio.sleep(self.maintain_s)
            if self.active and self.nuwa is not None and (self.nuwa._session is None
                                                          or self.nuwa._session.expired):
                # Paused or cut off past its session: another master may be active. Step
                # down now, not at the next client call (issue 14, the paused-master fault).
                await self._step_down("its Nuwa session expired")
            if not self.active:
                continue
            try:
                await self._maintain_once()
            except Exception as e:  # noqa: BLE001 - one bad round must not stop healing
                logger.exception("pangu maintenance round failed")
                self._event("maintain_error", f"{type(e).__name__}: {e}")

    async def maintain_once(self, cred: str | None = None) -> dict:
        """One maintenance round on demand (tests, operators): the platform only."""
        from zhongkui.guard import require_platform

        require_platform(self.guard, cred, "run Pangu maintenance", admin_ok=True)
        return await self._maintain_once()

    async def _maintain_once(self) -> dict:
        now = time.monotonic()
        for sv in self.servers.values():
            if not sv.dead and now - sv.last > self.dead_after_s:
                sv.dead = True
                self._event("server_dead", f"chunkserver {sv.id} silent for "
                                           f"{now - sv.last:.1f}s: declared dead")
                for cid, lease in list(self.chunk_leases.items()):
                    if sv.id in lease["replicas"]:
                        del self.chunk_leases[cid]
        if self._settling():
            return {"settling": True}  # chunkservers are still reporting to a new master
        infos = self._chunk_infos()
        leased = {cid for cid, l in self.chunk_leases.items() if l["until"] > now}
        quiet = {cid: i for cid, i in infos.items()
                 if cid not in leased and cid not in self.busy and cid not in self.undurable}
        servers = [s.as_server() for s in self.servers.values()]
        budget = int(self.repair_bytes_per_s * self.maintain_s)
        copies, missing = placement.repair_plan(quiet, servers, self.rng, budget_bytes=budget,
                                                allow_same_node=self.allow_same_node)
        done = await self._copy_all([(c.chunk, c.source, c.dest) for c in copies], "repair")
        excess = placement.excess_replicas(quiet, servers) if not copies else []
        for cid, sid in excess:
            with contextlib.suppress(Exception):
                await self._call(sid, "delete", [cid])
                self.servers[sid].chunks.pop(cid, None)
        moved = 0
        if self.rebalance and not copies and not excess:
            moves = placement.rebalance_plan(quiet, servers, self.rng, budget_bytes=budget,
                                             threshold=self.rebalance_threshold)
            ok = await self._copy_all([(m.chunk, m.source, m.dest) for m in moves], "rebalance")
            for cid, src in ok:
                if not self._copy_still_current(cid, moves):
                    continue  # a writer got the chunk meanwhile: keep the source replica
                with contextlib.suppress(Exception):
                    await self._call(src, "delete", [cid])
                    self.servers[src].chunks.pop(cid, None)
                    moved += 1
        return {"repaired": len(done), "missing": len(missing), "excess_dropped": len(excess),
                "moved": moved}

    def _copy_still_current(self, cid: str, moves) -> bool:
        loc = self.ns.chunk_index.get(cid)
        if loc is None or cid in self.chunk_leases or cid in self.busy:
            return False
        path, i = loc
        cur = self.ns.nodes[path].chunks[i].version
        dests = [m.dest for m in moves if m.chunk == cid]
        return all(self.servers[d].chunks.get(cid, (0, 0))[0] >= cur for d in dests)

    async def _copy_all(self, copies: list[tuple[str, str, str]],
                        why: str) -> list[tuple[str, str]]:
        sem = asyncio.Semaphore(REPAIR_CONCURRENCY)
        done: list[tuple[str, str]] = []

        async def one(cid: str, src: str, dest: str) -> None:
            loc = self.ns.chunk_index.get(cid)
            if loc is None:
                return
            path, i = loc
            node = self.ns.nodes[path]
            version = node.chunks[i].version
            async with sem:
                self.busy.add(cid)
                try:
                    length = await self._call(dest, "replicate", cid, version, node.chunk_size,
                                              self.servers[src].name,
                                              timeout_s=COPY_CALL_TIMEOUT_S)
                    self.servers[dest].chunks[cid] = (version, length)
                    done.append((cid, src))
                    self.counters[f"{why}_bytes"] += length
                    self.counters[f"{why}_chunks"] += 1
                except Exception as e:  # noqa: BLE001 - retried next round
                    self._event(f"{why}_failed", f"copy of {cid} {src}->{dest}: {e}")
                finally:
                    self.busy.discard(cid)
        await asyncio.gather(*(one(*c) for c in copies))
        if done:
            self._event(why, f"{len(done)} chunk copies made ({why})")
        return done

    # ------------------------------------------------------------ reports
    async def fsck(self, path: str = "/", cred: str | None = None) -> dict:
        await self._need_active()
        await self._admin_only(cred, "check the file system (fsck)")
        root = P.normalize(path)
        infos = self._chunk_infos()
        files = under = 0
        report: dict[str, list] = {"under_replicated": [], "missing": [], "stale_only": []}
        for p, node in sorted(self.ns.nodes.items()):
            if node.kind != "file" or not P.is_under(p, root):
                continue
            files += 1
            for c in node.chunks:
                live = [s for s in infos[c.id].replicas if self._live(s)]
                if not live and c.length == 0:
                    continue  # nothing was ever acknowledged in it: nothing to lose
                if not live:
                    stale = [sid for sid, sv in self.servers.items()
                             if not sv.dead and c.id in sv.chunks]
                    report["stale_only" if stale else "missing"].append(
                        {"path": p, "chunk": c.id, "version": c.version})
                elif len(live) < node.replication:
                    under += 1
                    report["under_replicated"].append(
                        {"path": p, "chunk": c.id, "live": len(live), "target": node.replication})
        chunks = sum(len(n.chunks) for p, n in self.ns.nodes.items()
                     if n.kind == "file" and P.is_under(p, root))
        return {"path": root, "files": files, "chunks": chunks,
                "corrupt_found": self.counters["corrupt"],
                "healthy": not (report["under_replicated"] or report["missing"]
                                or report["stale_only"]), **report}

    async def status(self, any_role: bool = False, cred: str | None = None) -> dict:
        """The active master's view (a standby answers NotActive, so clients reach the
        active one); ``any_role`` asks this master whatever its role (debugging)."""
        if not any_role:
            await self._need_active()
        await self._who(cred)
        now = time.monotonic()
        return {"master": self.name, "active": self.active, "epoch": self.epoch,
                "fsid": self.journal.fsid if self.journal else None,
                "foreign_servers": sorted(self.foreign),
                "journal_seq": self.journal.seq if self.journal else None,
                "servers": [{"id": s.id, "name": s.name, "node": s.node, "dead": s.dead,
                             "draining": s.draining, "capacity_bytes": s.capacity,
                             "used_bytes": s.used, "chunks": len(s.chunks),
                             "last_heartbeat_s": round(now - s.last, 2)}
                            for s in sorted(self.servers.values(), key=lambda s: s.id)],
                "files": sum(1 for n in self.ns.nodes.values() if n.kind == "file"),
                "chunks": len(self.ns.chunk_index), "writers": len(self.file_leases),
                "counters": dict(self.counters), "events": list(self.events)[-50:]}

    async def stop(self, cred: str | None = None) -> None:
        from zhongkui.guard import require_platform

        require_platform(self.guard, cred, "stop a Pangu master")
        for t in self._tasks:
            t.cancel()
        if self.journal is not None:
            self.journal.close()
        if self.nuwa is not None:
            with contextlib.suppress(Exception):
                await self.election.resign()
            with contextlib.suppress(Exception):
                await self.nuwa.close()

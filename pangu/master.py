"""The Pangu master: one async Ray actor (no CPU) per master, a shell composed of one part per
responsibility:

* ``pangu.mastership``: its role (active or standby, a Nuwa election), the journal, and the
  namespace (``pangu.core.namespace``) made durable through it before a change is
  acknowledged;
* ``pangu.authz``: who may do what (Zhongkui), chunk access tokens;
* ``pangu.fleet``: the chunkservers (heartbeats, replica locations, the calls to them);
* ``pangu.writes``: writers' and primaries' leases (``pangu.core.leases``), the write path;
* ``pangu.healing``: dead servers, repair, excess replicas, rebalance and garbage
  (``pangu.core.repair`` plans them).

This class holds the settings, composes the parts and is the actor's API (the namespace
operations, which are a check and a journaled command each, are here).
"""

from __future__ import annotations

import random
import time

import ray

from pangu.authz import MasterAuth
from pangu.core import fencing as F
from pangu.core import paths as P
from pangu.core.leases import Leases
from pangu.eventlog import EventLog
from pangu.fleet import Fleet
from pangu.healing import Healer
from pangu.io.journal import CHECKPOINT_EVERY
from pangu.mastership import Mastership
from pangu.observe import MasterMetrics
from pangu.writes import Writes

LEASE_S = 30.0  # a primary's lease on a chunk
WRITER_LEASE_S = 60.0  # a writer's lease on a file, renewed by every call it makes
DEAD_AFTER_S = 10.0
MAINTAIN_S = 1.0
REPAIR_BYTES_PER_S = 256 * 1024 * 1024  # bandwidth cap of re-replication, all servers together
REBALANCE_THRESHOLD = 0.10  # move data off servers this far above the mean utilisation
SESSION_TTL_S = 4.0  # a dead active master's election entry lapses after this long
STATUS_EVENTS_MAX = 50  # the latest events a status shows


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
        self.name = name
        self.rng = random.Random(s.get("seed", 0))  # placement's draws: seeded by the settings
        self.events = EventLog(name)
        self.leases = Leases()
        self.mastership = Mastership(
            name, cluster, data_dir, [tuple(a) for a in nuwa] if nuwa else None, self.guard,
            self.leases, self.events,
            checkpoint_every=int(s.get("checkpoint_every", CHECKPOINT_EVERY)),
            session_ttl_s=float(s.get("session_ttl_s", SESSION_TTL_S)))
        self.auth = MasterAuth(self.guard, self.mastership)
        self.fleet = Fleet(namespace, self.events, self.auth, self.mastership)
        allow_same_node = bool(s.get("allow_same_node", False))
        self.writes = Writes(self.mastership, self.fleet, self.auth, self.leases, self.events,
                             self.rng, lease_s=float(s.get("lease_s", LEASE_S)),
                             writer_lease_s=float(s.get("writer_lease_s", WRITER_LEASE_S)),
                             allow_same_node=allow_same_node, replication=s.get("replication"))
        self.observer = MasterMetrics()
        self.healer = Healer(
            self.mastership, self.fleet, self.leases, self.events, self.rng,
            maintain_s=float(s.get("maintain_s", MAINTAIN_S)),
            dead_after_s=float(s.get("dead_after_s", DEAD_AFTER_S)),
            repair_bytes_per_s=int(s.get("repair_bytes_per_s", REPAIR_BYTES_PER_S)),
            rebalance=bool(s.get("rebalance", True)),
            rebalance_threshold=float(s.get("rebalance_threshold", REBALANCE_THRESHOLD)),
            allow_same_node=allow_same_node, expect_servers=int(s.get("expect_servers", 0)))

    # ------------------------------------------------------------ start, roles, stop
    async def start(self, cred: str | None = None) -> dict:
        self.auth.require_platform(cred, "start a Pangu master")  # issue 14, defect 8
        return await self._start()

    async def _start(self) -> dict:
        if self.mastership.tasks:
            return self.role()
        self.mastership.start()
        self.mastership.spawn(self.healer.loop())
        return self.role()

    @property
    def epoch(self) -> int:
        """This master's term: the Nuwa journal's epoch (0 with a local journal)."""
        return self.mastership.epoch

    def role(self) -> dict:
        return self.mastership.role()

    async def active_master(self) -> str | None:
        return await self.mastership.active_master()

    async def stop(self, cred: str | None = None) -> None:
        self.auth.require_platform(cred, "stop a Pangu master")
        await self.mastership.stop()

    async def zk_set_keys(self, proof: str, doc: dict) -> int:
        """Zhongkui's keys after a rotation (from FuxiMaster)."""
        return self.guard.accept_keys(proof, doc)

    # ------------------------------------------------------------ namespace API
    async def mkdir(self, path: str, parents: bool = False, owner: str = "anonymous",
                    request_id: str | None = None, cred: str | None = None,
                    fencing=None) -> dict:
        who = await self.auth.authz(cred, path, "create", P.parent(P.normalize(path))
                                    if isinstance(path, str) and path.startswith("/") else None)
        cmd = {"op": "mkdir", "path": path, "parents": parents,
               "owner": self.auth.owner_name(who, owner)}
        return await self.mastership.mutate(
            F.with_fence(cmd, self.mastership.admit_fence(fencing)), request_id)

    async def _read(self, cred, path) -> None:
        await self.mastership.need_active()
        await self.auth.authz(cred, path, "read")

    async def stat(self, path: str, cred: str | None = None) -> dict:
        await self._read(cred, path)
        return self.mastership.ns.stat(path)

    async def exists(self, path: str, cred: str | None = None) -> bool:
        await self._read(cred, path)
        return self.mastership.ns.exists(P.normalize(path))

    async def ls(self, path: str, cred: str | None = None) -> list[dict]:
        await self._read(cred, path)
        return self.mastership.ns.ls(path)

    async def du(self, path: str, cred: str | None = None) -> dict:
        await self._read(cred, path)
        return self.mastership.ns.du(path)

    async def locate(self, path: str, cred: str | None = None) -> dict:
        """The file's chunks and replicas, each chunk with a read access token."""
        await self.mastership.need_active()
        who = await self.auth.authz(cred, path, "read")
        info = self.fleet.file_info(P.normalize(path))
        if self.auth.enabled:
            for c in info["chunks"]:
                c["access"] = self.auth.access(who, c["id"], "r")
        return info

    async def rename(self, src: str, dst: str, overwrite: bool = False,
                     request_id: str | None = None, cred: str | None = None,
                     fencing=None) -> dict:
        await self.auth.authz(cred, src, "delete")
        if isinstance(dst, str) and dst.startswith("/"):
            await self.auth.authz(cred, dst, "create", P.parent(P.normalize(dst)))
        cmd = {"op": "rename", "src": src, "dst": dst, "overwrite": overwrite}
        return await self.mastership.mutate(
            F.with_fence(cmd, self.mastership.admit_fence(fencing)), request_id)

    async def delete(self, path: str, recursive: bool = False,
                     request_id: str | None = None, cred: str | None = None,
                     fencing=None) -> dict:
        await self.auth.authz(cred, path, "delete")
        cmd = {"op": "delete", "path": path, "recursive": recursive}
        res = await self.mastership.mutate(
            F.with_fence(cmd, self.mastership.admit_fence(fencing)), request_id)
        self.leases.drop_under(res["path"])
        self.leases.drop_chunks(res["freed"])
        return res

    # ------------------------------------------------------------ the write path
    async def open_write(self, path: str, mode: str, writer: str, owner: str = "anonymous",
                         replication: int | None = None, chunk_size: int | None = None,
                         request_id: str | None = None, cred: str | None = None,
                         fencing=None) -> dict:
        """Take the file's writer lease. ``mode`` is ``w`` (create or truncate), ``x`` (create;
        the file must not exist), ``a`` (append; create if missing) or ``r+`` (update an
        existing file)."""
        return await self.writes.open_write(path, mode, writer, owner, replication,
                                            chunk_size, request_id, cred, fencing)

    async def close_write(self, path: str, writer: str, cred: str | None = None) -> None:
        await self.writes.close_write(path, writer, cred)

    async def chunk_for_write(self, path: str, writer: str, index: int,
                              cred: str | None = None, fencing=None) -> dict:
        """The chunk at ``index`` of the file, created if it is the next one, with a primary
        holding a lease: {id, version, length, capacity, primary, secondaries, lease_s} and a
        write access token."""
        return await self.writes.chunk_for_write(path, writer, index, cred, fencing)

    async def write_failed(self, path: str, writer: str, cid: str, version: int,
                           failed: list[str], cred: str | None = None, fencing=None) -> dict:
        """Replicas named in ``failed`` missed a write: continue without them (they become
        stale with the next version) and return the new lease. Only for a chunk of ``path``,
        by the writer holding its lease."""
        return await self.writes.write_failed(path, writer, cid, version, failed, cred,
                                              fencing)

    async def renew_lease(self, path: str, writer: str, cid: str,
                          cred: str | None = None, fencing=None) -> dict:
        """A fresh lease (and write access token) on chunk ``cid`` of ``path``."""
        return await self.writes.renew_lease(path, writer, cid, cred, fencing)

    async def commit(self, path: str, writer: str, cid: str, version: int, length: int,
                     cred: str | None = None, fencing=None) -> dict:
        """Record chunk ``cid`` of ``path`` at ``length`` bytes (the writer's lease holder)."""
        return await self.writes.commit(path, writer, cid, version, length, cred, fencing)

    async def truncate(self, path: str, length: int, writer: str | None = None,
                       request_id: str | None = None, cred: str | None = None,
                       fencing=None) -> dict:
        return await self.writes.truncate(path, length, writer, request_id, cred, fencing)

    # ------------------------------------------------------------ chunkservers
    async def heartbeat(self, rep: dict, cred: str | None = None) -> dict:
        await self.auth.platform_only(cred, "report as a chunkserver")
        if not self.mastership.tasks:
            # Ray restarted this actor after its process died: chunkservers' heartbeats bring
            # it back (it recovers from the journal, or campaigns again).
            await self._start()
        fsid = self.mastership.fsid
        sv = self.fleet.report(rep, fsid, time.monotonic())
        if sv is None or not self.mastership.active:
            return {"active": False}
        return {"active": True, "epoch": self.epoch, "fsid": fsid,
                "delete": self.healer.garbage(sv)}

    async def drain(self, server: str, draining: bool = True, cred: str | None = None) -> dict:
        await self.mastership.need_active()
        await self.auth.admin_only(cred, "drain a chunkserver")
        return self.fleet.drain(server, draining)

    async def maintain_once(self, cred: str | None = None) -> dict:
        """One maintenance round on demand (tests, operators): the platform only."""
        self.auth.require_platform(cred, "run Pangu maintenance", admin_ok=True)
        return await self.healer.maintain_once()

    async def events_since(self, seq: int = 0, cred: str | None = None) -> dict:
        """This process's events after ``seq`` (FuxiMaster's event log pulls them)."""
        from base import events

        self.auth.require_platform(cred, "read a Pangu master's events", admin_ok=True)
        return events.report(seq)

    # ------------------------------------------------------------ reports
    async def fsck(self, path: str = "/", cred: str | None = None) -> dict:
        await self.mastership.need_active()
        await self.auth.admin_only(cred, "check the file system (fsck)")
        return self.healer.fsck(P.normalize(path))

    async def status(self, any_role: bool = False, cred: str | None = None) -> dict:
        """The active master's view (a standby answers NotActive, so clients reach the
        active one); ``any_role`` asks this master whatever its role (debugging)."""
        if not any_role:
            await self.mastership.need_active()
        await self.auth.who(cred)
        return self._status()

    async def metrics(self) -> str:
        """This master's metrics as Prometheus text (numbers only: no cred needed)."""
        active = bool(self.mastership.active)
        return self.observer.render(active, self.epoch, self._status() if active else None,
                                    self.healer)

    def _status(self) -> dict:
        ms, ns = self.mastership, self.mastership.ns
        return {"master": self.name, "active": ms.active, "epoch": self.epoch,
                "fsid": ms.fsid, "foreign_servers": sorted(self.fleet.foreign),
                "journal_seq": ms.journal_seq,
                "servers": self.fleet.status(time.monotonic()),
                "files": sum(1 for n in ns.nodes.values() if n.kind == "file"),
                "chunks": len(ns.chunk_index), "writers": len(self.leases.files),
                "counters": dict(self.events.counters),
                "events": self.events.last(STATUS_EVENTS_MAX)}

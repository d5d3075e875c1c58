"""The Pangu master's write path: writers' leases on files, primaries' leases on chunks, new
chunks placed and created, commits and truncation.

A writer holds a lease on the file (one writer per file; a second gets ``Busy``). For each
chunk it writes, the master picks a primary among the chunk's current replicas and grants it
a lease; a new lease on a replica set that changed raises the chunk's version (journaled
first) so a replica that missed writes is left behind at an older version: *stale*, never
read, deleted, replaced. The bookkeeping is ``pangu.core.leases``; this shell journals, calls
the chunkservers and keeps the time.
"""

from __future__ import annotations

import asyncio
import time

from pangu.core import fencing as F
from pangu.core import paths as P
from pangu.core import placement
from pangu.core.leases import ChunkLease, Leases, choose_primary
from pangu.core.namespace import REPLICATION_MAX
from pangu.errors import BadRequest, IsADir, NotEnoughServers, NotFound, Unavailable
from pangu.eventlog import EventLog

SERVER_NAME_CHARS_MAX = 256  # a chunkserver name a writer reports as failed


class Writes:
    def __init__(self, mastership, fleet, auth, leases: Leases, log: EventLog, rng: placement.Rng,
                 *, lease_s: float, writer_lease_s: float, allow_same_node: bool,
                 replication: int | None = None):
        self.mastership, self.fleet, self.auth = mastership, fleet, auth
        self.leases, self.log, self.rng = leases, log, rng
        self.lease_s = lease_s
        self.writer_lease_s = writer_lease_s
        self.allow_same_node = allow_same_node
        self.replication = replication  # the cluster's default (`fuxi up`: pangu.replication)

    @property
    def ns(self):
        return self.mastership.ns

    def check_writer(self, path: str, writer: str, take: bool = False,
                     fence: tuple[str, int] | None = None) -> None:
        """Take or renew ``writer``'s lease on ``path``. A writer with a newer fencing token
        of the same lock takes the lease over from one holding an older token: the old
        holder lost the lock."""
        if fence is not None:
            self.ns.fencing.check(*fence)
        held = self.leases.files.get(path)
        exists = held is not None or take or self.ns.exists(path)
        over = self.leases.take_file(path, writer, time.monotonic(), self.writer_lease_s,
                                     fence=fence, take=take, exists=exists)
        if over is not None:
            self.log.record("fenced", f"{path}: the writer holding token {over.old_token} of "
                                      f"lock {over.lock} is replaced by one holding token "
                                      f"{over.new_token}")

    async def open_write(self, path: str, mode: str, writer: str, owner: str,
                         replication: int | None, chunk_size: int | None,
                         request_id: str | None, cred, fencing) -> dict:
        path = P.normalize(path)
        await self.mastership.need_active()
        if self.ns.exists(path):
            who = await self.auth.authz(cred, path, "write")
        else:
            who = await self.auth.authz(cred, path, "create", P.parent(path))
        owner = self.auth.owner_name(who, owner)
        if mode not in ("w", "x", "a", "r+"):
            raise BadRequest(f"mode {mode!r}; expected w, x, a or r+")
        writer = self.auth.writer_key(who, writer)
        fence = self.mastership.admit_fence(fencing)
        self.check_writer(path, writer, take=True, fence=fence)
        try:
            exists = self.ns.exists(path)
            if exists and self.ns.stat(path)["type"] != "file":
                raise IsADir(f"{path} is a directory; cannot open it as a file")
            if mode == "r+" and not exists:
                raise NotFound(f"{path} does not exist (mode r+ needs an existing file)")
            if mode in ("w", "x") or not exists:
                cmd = {"op": "create", "path": path, "overwrite": mode != "x", "owner": owner}
                rf = replication if replication is not None else self.replication
                if rf is not None:
                    cmd["replication"] = rf
                if chunk_size is not None:
                    cmd["chunk_size"] = chunk_size
                res = await self.mastership.mutate(F.with_fence(cmd, fence), request_id)
                self.leases.drop_chunks(res["freed"])
            else:
                await self.mastership.fence(fence)
            return self.fleet.file_info(path)
        except BaseException:
            self.leases.release_file(path, writer)
            raise

    async def close_write(self, path: str, writer: str, cred) -> None:
        path = P.normalize(path)
        writer = self.auth.writer_key(await self.auth.who(cred), writer)  # only one's own
        self.leases.close(path, writer)

    async def _writer_call(self, path: str, writer: str, cred, fencing):
        """What every call of a writer on an open file checks first: the master is active,
        the caller may write ``path``; (who, the writer's key, its fencing token)."""
        await self.mastership.need_active()
        who = await self.auth.authz(cred, path, "write")
        writer, fence = self.auth.writer_key(who, writer), self.mastership.admit_fence(fencing)
        return who, writer, fence

    async def chunk_for_write(self, path: str, writer: str, index: int, cred, fencing) -> dict:
        path = P.normalize(path)
        await self.mastership.need_active()
        who = await self.auth.authz(cred, path, "write")
        if isinstance(index, bool) or not isinstance(index, int):
            raise BadRequest(f"chunk index {index!r:.40}: expected an int")
        writer, fence = self.auth.writer_key(who, writer), self.mastership.admit_fence(fencing)
        self.check_writer(path, writer, fence=fence)
        await self.mastership.fence(fence)
        return self.with_access(who, await self._chunk_for_write(path, writer, index))

    def with_access(self, who, lease: dict) -> dict:
        if self.auth.enabled:
            lease = dict(lease, access=self.auth.access(who, lease["id"], "w", lease["version"]))
        return lease

    async def _chunk_for_write(self, path: str, writer: str, index: int) -> dict:
        self.check_writer(path, writer)
        st = self.ns.stat(path)
        chunks = self.ns.chunks(path)
        if index == len(chunks):
            res = await self.mastership.mutate({"op": "add_chunk", "path": path})
            cid = res["chunk"]
            # Busy until the lease is granted: a repair must not copy the new, still empty
            # chunk while its first writer fills it at the same version (see Healer.copyable).
            self.fleet.busy.add(cid)
            try:
                return await self._new_chunk(path, writer, cid, st)
            finally:
                self.fleet.busy.discard(cid)
        if not 0 <= index < len(chunks):
            raise BadRequest(f"chunk index {index} of {path}: expected 0..{len(chunks)}")
        return await self.lease(chunks[index].id, writer)

    async def _new_chunk(self, path: str, writer: str, cid: str, st: dict) -> dict:
        cs = st["chunk_size"]
        try:
            sids = placement.choose(self.fleet.as_servers(), st["replication"], cs,
                                    self.rng, allow_same_node=self.allow_same_node)
        except NotEnoughServers as e:
            sids = self.fewer(st["replication"], cs)
            if not sids:
                raise NotEnoughServers(f"no chunkserver can take a new chunk of {path}: "
                                       f"{e}") from None
            self.log.record("under_replicated_write",
                            f"chunk {cid} of {path} starts on {len(sids)} of "
                            f"{st['replication']} replicas ({e})")
        ok = await self.create_on(cid, sids, 1, cs)
        if not ok:
            raise Unavailable(f"no chunkserver could create chunk {cid} of {path}")
        return await self.lease(cid, writer, fresh=ok)

    def fewer(self, n: int, size: int) -> list[str]:
        """Servers for as many replicas as possible below ``n`` (at least one), or none."""
        for k in range(n - 1, 0, -1):
            try:
                return placement.choose(self.fleet.as_servers(), k, size, self.rng,
                                        allow_same_node=self.allow_same_node)
            except NotEnoughServers:
                continue
        return []

    async def create_on(self, cid: str, sids: list[str], version: int,
                        capacity: int) -> list[str]:
        async def one(sid: str) -> str | None:
            try:
                await self.fleet.call(sid, "create_chunk", cid, version, capacity)
                self.fleet.set_replica(sid, cid, version, 0)
                return sid
            except Exception as e:  # noqa: BLE001 - that server is left out
                self.log.record("create_failed", f"chunk {cid} on {sid}: {e}")
                return None
        return [s for s in await asyncio.gather(*(one(s) for s in sids)) if s]

    async def lease(self, cid: str, writer: str, fresh: list[str] | None = None,
                    exclude: frozenset = frozenset()) -> dict:
        path, f, i = self.ns.locate_chunk(cid)
        c = f.chunks[i]
        reps = fresh or [s for s in self.fleet.current(cid, c.version) if s not in exclude]
        lease = None if exclude else self.leases.reusable(cid, c.version, writer, reps,
                                                          time.monotonic())
        if lease is not None:
            return self._lease_reply(cid, lease, f)
        if not reps and c.length == 0 and fresh is None:
            # An empty chunk whose creation failed everywhere: create it again.
            sids = self.fewer(f.replication + 1, f.chunk_size)
            fresh = await self.create_on(cid, sids, c.version, f.chunk_size) if sids else []
            reps = fresh
        if not reps:
            raise Unavailable(f"chunk {cid} of {path} has no live current replica to write to "
                              f"(fsck reports it missing until a server holding it returns)")
        version = c.version
        self.fleet.busy.add(cid)
        try:
            if fresh is None:
                # A new lease on this replica set: raise the version so any replica outside it
                # (one that missed writes, or the excluded failures) is stale from now on.
                res = await self.mastership.mutate({"op": "bump_version", "chunk": cid})
                version = res["version"]
                ok = []
                for sid in reps:
                    try:
                        await self.fleet.call(sid, "set_version", cid, version)
                        self.fleet.set_replica(sid, cid, version)
                        ok.append(sid)
                    except Exception as e:  # noqa: BLE001
                        self.log.record("stale", f"chunk {cid}: {sid} missed version "
                                                 f"{version} ({e})")
                reps = ok
                if not reps:
                    raise Unavailable(f"no replica of chunk {cid} took version {version}")
            primary = choose_primary(reps, self.fleet.used_bytes())
            secondaries = [s for s in reps if s != primary]
            until = time.monotonic() + self.lease_s
            try:
                await self.fleet.call(primary, "grant_lease", cid, version,
                                      [self.fleet.servers[s].name for s in secondaries],
                                      self.lease_s)
            except Exception as e:  # noqa: BLE001 - that primary is gone: lease the others
                self.log.record("stale", f"chunk {cid}: primary {primary} refused the lease "
                                         f"at version {version} ({e})")
                lost = primary
            else:
                lost = None
                lease = self.leases.grant(cid, primary, reps, version, writer, until)
        finally:
            self.fleet.busy.discard(cid)
        if lost is not None:
            # Its node died between the version bump and the lease (seen in CI): a new
            # version on the replicas left, so the lost one is stale if it ever comes back.
            # Each retry excludes one more server: at most a replica set's worth.
            return await self.lease(cid, writer, exclude=exclude | {lost})
        return self._lease_reply(cid, lease, f)

    def _lease_reply(self, cid: str, lease: ChunkLease, f) -> dict:
        c = next(c for c in f.chunks if c.id == cid)
        return {"id": cid, "version": lease.version, "length": c.length,
                "capacity": f.chunk_size, "primary": self.fleet.servers[lease.primary].name,
                "replicas": len(lease.replicas), "lease_s": self.lease_s * 0.8}

    async def write_failed(self, path: str, writer: str, cid: str, version: int,
                           failed: list[str], cred, fencing) -> dict:
        path = P.normalize(path)
        who, writer, fence = await self._writer_call(path, writer, cred, fencing)
        if not isinstance(failed, list) or len(failed) > REPLICATION_MAX or \
                not all(isinstance(n, str) and 0 < len(n) <= SERVER_NAME_CHARS_MAX
                        for n in failed):
            raise BadRequest(f"failed {failed!r:.80}: expected a list of at most "
                             f"{REPLICATION_MAX} chunkserver names")
        self.ns.chunk_of(path, cid)
        self.check_writer(path, writer, fence=fence)
        await self.mastership.fence(fence)
        names = set(failed)
        bad = frozenset(sid for sid, sv in self.fleet.servers.items() if sv.name in names)
        self.log.record("stale", f"chunk {cid}: {sorted(bad)} missed a write at version "
                                 f"{version}")
        self.leases.drop_chunks([cid])
        return self.with_access(who, await self.lease(cid, writer, exclude=bad))

    async def renew_lease(self, path: str, writer: str, cid: str, cred, fencing) -> dict:
        path = P.normalize(path)
        who, writer, fence = await self._writer_call(path, writer, cred, fencing)
        self.ns.chunk_of(path, cid)
        self.check_writer(path, writer, fence=fence)
        await self.mastership.fence(fence)
        return self.with_access(who, await self.lease(cid, writer))

    async def commit(self, path: str, writer: str, cid: str, version: int, length: int,
                     cred, fencing) -> dict:
        path = P.normalize(path)
        _, writer, fence = await self._writer_call(path, writer, cred, fencing)
        self.ns.chunk_of(path, cid)
        self.check_writer(path, writer, fence=fence)
        # The path goes into the command: applied only if the chunk is still that file's.
        return await self.mastership.mutate(F.with_fence(
            {"op": "commit", "chunk": cid, "path": path, "version": version,
             "length": length}, fence))

    async def truncate(self, path: str, length: int, writer: str | None,
                       request_id: str | None, cred, fencing) -> dict:
        path = P.normalize(path)
        await self.mastership.need_active()
        who = await self.auth.authz(cred, path, "write")
        fence = self.mastership.admit_fence(fencing)
        self.check_writer(path, self.auth.writer_key(who, writer) if writer is not None
                          else f"truncate-{id(self)}-{time.monotonic()}", fence=fence)
        try:
            res = await self.mastership.mutate(F.with_fence(
                {"op": "truncate", "path": path, "length": length}, fence), request_id)
            cut = res.get("cut")
            self.leases.drop_chunks(res["freed"])
            if cut:
                await self._cut(cut)
            return {"path": path, "size": res["size"]}
        finally:
            if writer is None:
                self.leases.release_file(path)

    async def _cut(self, cut: dict) -> None:
        """Cut the replicas of the chunk a truncate shortened to its new length and version;
        a replica that fails stays behind, stale."""
        cid = cut["chunk"]
        self.leases.drop_chunks([cid])
        self.fleet.busy.add(cid)
        try:
            done = 0
            for sid in self.fleet.current(cid, cut["version"] - 1):
                try:
                    await self.fleet.call(sid, "truncate", cid, cut["length"], cut["version"])
                    self.fleet.set_replica(sid, cid, cut["version"], cut["length"])
                    done += 1
                except Exception as e:  # noqa: BLE001 - it stays behind, stale
                    self.log.record("stale", f"chunk {cid}: truncate on {sid} failed ({e})")
            if not done:
                self.log.record("missing", f"chunk {cid}: no replica took the truncate")
        finally:
            self.fleet.busy.discard(cid)

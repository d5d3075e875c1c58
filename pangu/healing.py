"""The Pangu master's self-healing, run by the active master every ``maintain_s``: silent
chunkservers are declared dead; lost replicas are re-created most-endangered-first within a
byte budget per second (``repair_bytes_per_s``); replicas beyond the factor are dropped
(draining servers first); then, when nothing needs repair, data moves toward even use
(``rebalance``). Garbage (replicas of no file, stale ones) is deleted through the heartbeat
replies. The plans are ``pangu.core.repair``'s; this shell gathers their inputs, carries them
out, and keeps the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from pangu.core import placement
from pangu.core import repair
from pangu.core.leases import Leases
from pangu.eventlog import EventLog
from pangu.observe import REREPLICATED

logger = logging.getLogger(__name__)

REPAIR_CONCURRENCY = 4  # chunk copies in flight
COPY_CALL_TIMEOUT_S = 120.0  # one whole-chunk copy (repair, rebalance)
LEASE_END_MARGIN_S = 1.0  # no copy of a chunk whose lease ended less than this ago
SETTLE_REPORTS_S = 2.5  # after taking over, the expected servers have reported twice by now


class Healer:
    def __init__(self, mastership, fleet, leases: Leases, log: EventLog, rng: placement.Rng,
                 *, maintain_s: float, dead_after_s: float, repair_bytes_per_s: int,
                 rebalance: bool, rebalance_threshold: float, allow_same_node: bool,
                 expect_servers: int):
        self.mastership, self.fleet, self.leases, self.log, self.rng = (
            mastership, fleet, leases, log, rng)
        self.maintain_s = maintain_s
        self.dead_after_s = dead_after_s
        self.repair_bytes_per_s = repair_bytes_per_s
        self.rebalance = rebalance
        self.rebalance_threshold = rebalance_threshold
        self.allow_same_node = allow_same_node
        self.expect_servers = expect_servers

    def files(self) -> list[repair.FileChunks]:
        return [repair.FileChunks(path, node.replication,
                                  tuple(repair.ChunkState(c.id, c.version, c.length)
                                        for c in node.chunks))
                for path, node in self.mastership.ns.nodes.items() if node.kind == "file"]

    def settling(self) -> bool:
        """Just after becoming active, the replica map is incomplete until the chunkservers
        have reported: no repair or garbage collection until ``dead_after_s`` has passed, or
        every expected chunkserver (``expect_servers``) has reported twice."""
        since = self.mastership.active_since
        age = time.monotonic() - since
        if age >= self.dead_after_s:
            return False
        if self.expect_servers and age >= SETTLE_REPORTS_S:
            return self.fleet.live_since(since) < self.expect_servers
        return True

    def garbage(self, sv) -> list[tuple[str, int]]:
        """Replicas on ``sv`` to delete: of chunks no file references, and stale ones that
        have a current copy elsewhere. Never while the master is settling after taking over."""
        if self.settling():
            return []
        ns = self.mastership.ns
        version_of = {}
        for cid in sv.chunks:
            loc = ns.chunk_index.get(cid)
            if loc is not None:
                version_of[cid] = ns.nodes[loc[0]].chunks[loc[1]].version
        out = repair.garbage(sv.id, dict(sv.chunks), version_of,
                             self.fleet.held(live_only=True),
                             skip=self.fleet.busy | self.mastership.undurable)
        for cid, _ in out:
            self.fleet.forget_replica(sv.id, cid)
        if out:
            self.log.record("gc", f"{len(out)} replica(s) on {sv.id} deleted (unreferenced or "
                                  f"stale)")
        return out

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.maintain_s)
            if self.mastership.active and self.mastership.session_expired():
                # Paused or cut off past its session: another master may be active. Step
                # down now, not at the next client call (issue 14, the paused-master fault).
                await self.mastership.step_down("its Nuwa session expired")
            if not self.mastership.active:
                continue
            try:
                await self.maintain_once()
            except Exception as e:  # noqa: BLE001 - one bad round must not stop healing
                logger.exception("pangu maintenance round failed")
                self.log.record("maintain_error", f"{type(e).__name__}: {e}")

    async def maintain_once(self) -> dict:
        now = time.monotonic()
        for sid in self.fleet.declare_dead(now, self.dead_after_s):
            self.leases.drop_server(sid)
        if self.settling():
            return {"settling": True}  # chunkservers are still reporting to a new master
        infos = repair.chunk_infos(self.files(), self.fleet.held())
        skip = self.leases.leased(now) | self.fleet.busy | self.mastership.undurable
        budget = int(self.repair_bytes_per_s * self.maintain_s)
        plan = repair.plan(infos, self.fleet.as_servers(), self.rng, budget_bytes=budget,
                           allow_same_node=self.allow_same_node, rebalance=self.rebalance,
                           threshold=self.rebalance_threshold, skip=skip)
        done = await self.copy_all([(c.chunk, c.source, c.dest) for c in plan.copies],
                                   "repair")
        for cid, sid in plan.excess:
            with contextlib.suppress(Exception):
                await self.fleet.call(sid, "delete", [cid])
                self.fleet.forget_replica(sid, cid)
        moved = 0
        if plan.moves:
            ok = await self.copy_all([(m.chunk, m.source, m.dest) for m in plan.moves],
                                     "rebalance")
            for cid, src in ok:
                if not self.copy_still_current(cid, plan.moves):
                    continue  # a writer got the chunk meanwhile: keep the source replica
                with contextlib.suppress(Exception):
                    await self.fleet.call(src, "delete", [cid])
                    self.fleet.forget_replica(src, cid)
                    moved += 1
        return {"repaired": len(done), "missing": len(plan.missing),
                "excess_dropped": len(plan.excess), "moved": moved}

    def copyable(self, cid: str) -> bool:
        """A copy of ``cid`` may start now: the chunk still exists, nothing else is changing
        its replicas (a lease being granted, a truncate, another copy) and no lease on it
        ended less than ``LEASE_END_MARGIN_S`` ago (its primary's clock started later than
        ours, so it may still take a write)."""
        if cid not in self.mastership.ns.chunk_index or cid in self.fleet.busy:
            return False
        lease = self.leases.chunks.get(cid)
        return lease is None or lease.until + LEASE_END_MARGIN_S < time.monotonic()

    def copy_still_current(self, cid: str, moves) -> bool:
        ns = self.mastership.ns
        loc = ns.chunk_index.get(cid)
        if loc is None or cid in self.leases.chunks or cid in self.fleet.busy:
            return False
        path, i = loc
        cur = ns.nodes[path].chunks[i].version
        dests = [m.dest for m in moves if m.chunk == cid]
        return all(self.fleet.servers[d].chunks.get(cid, (0, 0))[0] >= cur for d in dests)

    async def copy_all(self, copies: list[tuple[str, str, str]],
                       why: str) -> list[tuple[str, str]]:
        sem = asyncio.Semaphore(REPAIR_CONCURRENCY)
        done: list[tuple[str, str]] = []

        async def one(cid: str, src: str, dest: str) -> None:
            async with sem:
                # Checked when the copy starts, not when it was planned: a writer may have
                # leased the chunk meanwhile. A copy that overlapped writes at the chunk's
                # version would be a replica at that version missing bytes — current in the
                # master's eyes, and a primary that refuses the next append (a hole). A
                # lease started later bumps the version, which makes this copy stale instead.
                if not self.copyable(cid):
                    return
                ns = self.mastership.ns
                path, i = ns.chunk_index[cid]
                node = ns.nodes[path]
                version = node.chunks[i].version
                self.fleet.busy.add(cid)
                try:
                    length = await self.fleet.call(dest, "replicate", cid, version,
                                                   node.chunk_size, self.fleet.servers[src].name,
                                                   timeout_s=COPY_CALL_TIMEOUT_S)
                    self.fleet.set_replica(dest, cid, version, length)
                    done.append((cid, src))
                    self.log.count(f"{why}_bytes", length)
                    REREPLICATED.inc(length, why=why)
                    self.log.count(f"{why}_chunks")
                except Exception as e:  # noqa: BLE001 - retried next round
                    self.log.record(f"{why}_failed", f"copy of {cid} {src}->{dest}: {e}")
                finally:
                    self.fleet.busy.discard(cid)
        await asyncio.gather(*(one(*c) for c in copies))
        if done:
            self.log.record(why, f"{len(done)} chunk copies made ({why})")
        return done

    def fsck(self, root: str) -> dict:
        report = repair.health(self.files(), self.fleet.held(live_only=True), root)
        return {"path": root, "files": report["files"], "chunks": report["chunks"],
                "corrupt_found": self.log.counters["corrupt"],
                "healthy": not (report["under_replicated"] or report["missing"]
                                or report["stale_only"]),
                "under_replicated": report["under_replicated"], "missing": report["missing"],
                "stale_only": report["stale_only"]}

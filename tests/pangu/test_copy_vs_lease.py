"""A repair copy must never overlap writes at the chunk's version.

CI once failed the model-based stress test with "write to chunk c…23 at offset 6680: expected
an offset between 0 and its length 0 (no holes)": a chunk created on fewer replicas than its
factor was copied by the repair loop while its first writer filled it, so the copy held the
chunk's version with none of its bytes, counted as current, and became the next lease's
primary. The checks under test: a copy starts only when nothing changes the chunk (no lease,
no lease ended just now, not busy), read when the copy starts rather than when it was planned.
"""

from __future__ import annotations

import asyncio
import random
import time
from types import SimpleNamespace

from pangu import healing
from pangu.core.leases import Leases
from pangu.eventlog import EventLog


class FakeFleet:
    """The Fleet's surface the healer uses; ``call`` records copies and may block on a gate."""

    def __init__(self, gate: asyncio.Event | None = None):
        self.busy: set[str] = set()
        self.servers = {s: SimpleNamespace(name=f"cs-{s}", chunks={}) for s in ("a", "b", "c")}
        self.copies: list[tuple[str, str, int]] = []
        self.gate = gate

    async def call(self, sid, method, cid, version, *rest, timeout_s=None):
        assert method == "replicate"
        if self.gate is not None:
            await self.gate.wait()
        self.copies.append((sid, cid, version))
        return 0

    def set_replica(self, sid, cid, version, length=None):
        self.servers[sid].chunks[cid] = (version, length or 0)


def make(fleet: FakeFleet, chunks: dict[str, int]) -> tuple[healing.Healer, Leases]:
    nodes = {f"/f/{cid}": SimpleNamespace(chunk_size=1024,
                                          chunks=[SimpleNamespace(id=cid, version=v)])
             for cid, v in chunks.items()}
    ns = SimpleNamespace(nodes=nodes, chunk_index={cid: (f"/f/{cid}", 0) for cid in chunks})
    leases = Leases()
    h = healing.Healer(SimpleNamespace(ns=ns), fleet, leases, EventLog("t"),
                       random.Random(1),
                       maintain_s=1.0, dead_after_s=5.0, repair_bytes_per_s=1 << 20,
                       rebalance=False, rebalance_threshold=0.1, allow_same_node=True,
                       expect_servers=0)
    return h, leases


def test_a_leased_busy_or_just_released_chunk_is_not_copied():
    fleet = FakeFleet()
    h, leases = make(fleet, {"c1": 1, "c2": 1, "c3": 1, "c4": 1})
    now = time.monotonic()
    leases.grant("c1", "a", ["a", "b"], 1, "w", now + 30)  # a writer holds it
    leases.grant("c2", "a", ["a", "b"], 1, "w", now - 0.1)  # ended a moment ago
    fleet.busy.add("c3")  # a lease being granted, a truncate
    done = asyncio.run(h.copy_all([(c, "a", "c") for c in ("c1", "c2", "c3", "c4")], "repair"))
    assert [c for _, c, _ in fleet.copies] == ["c4"]
    assert done == [("c4", "a")]
    assert "c1" not in fleet.servers["c"].chunks and "c3" not in fleet.servers["c"].chunks


def test_a_lease_granted_while_a_copy_waits_for_its_turn_stops_that_copy():
    async def run():
        gate = asyncio.Event()
        fleet = FakeFleet(gate)
        cids = [f"c{i}" for i in range(healing.REPAIR_CONCURRENCY + 1)]
        h, leases = make(fleet, {c: 1 for c in cids})
        task = asyncio.ensure_future(h.copy_all([(c, "a", "c") for c in cids], "repair"))
        await asyncio.sleep(0.01)  # the first copies hold every slot; the last one waits
        last = cids[-1]
        # A writer leases the waiting chunk (the version stays: a new chunk's first lease).
        leases.grant(last, "a", ["a", "b"], 1, "w", time.monotonic() + 30)
        gate.set()
        await task
        return fleet, last
    fleet, last = asyncio.run(run())
    copied = {c for _, c, _ in fleet.copies}
    assert last not in copied, "a copy started under a live lease"
    assert len(copied) == healing.REPAIR_CONCURRENCY


def test_the_version_copied_is_read_when_the_copy_starts():
    async def run():
        gate = asyncio.Event()
        fleet = FakeFleet(gate)
        cids = [f"c{i}" for i in range(healing.REPAIR_CONCURRENCY + 1)]
        h, _ = make(fleet, {c: 1 for c in cids})
        task = asyncio.ensure_future(h.copy_all([(c, "a", "c") for c in cids], "repair"))
        await asyncio.sleep(0.01)
        h.mastership.ns.nodes[f"/f/{cids[-1]}"].chunks[0].version = 2  # a lease came and went
        gate.set()
        await task
        return fleet, cids[-1]
    fleet, last = asyncio.run(run())
    assert (("c", last, 2)) in fleet.copies


def test_a_deleted_chunk_is_not_copied():
    fleet = FakeFleet()
    h, _ = make(fleet, {"c1": 1})
    del h.mastership.ns.chunk_index["c1"]
    assert asyncio.run(h.copy_all([("c1", "a", "c")], "repair")) == []
    assert fleet.copies == []

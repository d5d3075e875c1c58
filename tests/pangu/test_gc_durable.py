"""Pangu GC deletes only the chunks of changes that are durable (issue 14, defect 4).

The master object runs in this process (its Ray actor class unwrapped; no chunkservers,
heartbeats are called directly). The journal append of a delete / overwrite / truncate is
made to fail with the fault layer, and it awaits before writing -- as the Nuwa journal does
on its network round trip -- so a chunkserver heartbeat arrives while memory is ahead of the
journal. The heartbeat must not order the freed chunks deleted, and after a restart the file
is still there with its chunks.
"""

from __future__ import annotations

import asyncio

import pytest

from base import faults
from pangu.errors import DiskFailed, DiskFull
from pangu.master import PanguMaster

Master = PanguMaster.__ray_metadata__.modified_class
SETTINGS = {"dead_after_s": 0.0, "maintain_s": 3600.0}
CHUNK = 64 * 1024
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _clean():
    faults.disarm()
    yield
    faults.disarm()


async def _master(data_dir: str):
    m = Master("c", data_dir, "ns", "m1", settings=SETTINGS)
    await m.start()
    return m


def _report(m, chunks: dict) -> dict:
    return {"id": "cs-1", "name": "pangu-cs-1", "node": "n1", "capacity_bytes": 1 << 30,
            "used_bytes": 0, "chunks": chunks, "fsid": m.mastership.journal.fsid}


async def _file_with_two_chunks(m) -> list[str]:
    await m.mastership.mutate({"op": "create", "path": "/f", "chunk_size": CHUNK, "replication": 1})
    cids = []
    for length in (CHUNK, 10):
        cid = (await m.mastership.mutate({"op": "add_chunk", "path": "/f"}))["chunk"]
        await m.mastership.mutate({"op": "commit", "chunk": cid, "version": 1, "length": length})
        cids.append(cid)
    return cids


def _slow_journal(m) -> None:
    append = m.mastership.journal.append

    async def slow(cmd):
        await asyncio.sleep(0.2)  # a journal round trip: the event loop runs meanwhile
        return await append(cmd)
    m.mastership.journal.append = slow


CHANGES = {
    "delete": lambda m: m.delete("/f"),
    "overwrite": lambda m: m.mastership.mutate({"op": "create", "path": "/f", "overwrite": True,
                                      "chunk_size": CHUNK}),
    "truncate": lambda m: m.truncate("/f", 5),
}
FAULTS = [("pangu.io.journal.fsync", "EIO", DiskFailed), ("pangu.io.journal.write", "ENOSPC", DiskFull)]


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("point,err,typed", FAULTS)
def test_chunks_freed_by_a_change_whose_journal_write_fails_are_never_deleted(
        tmp_path, change, point, err, typed):
    async def main():
        m = await _master(str(tmp_path))
        cids = await _file_with_two_chunks(m)
        held = {cid: (1, CHUNK) for cid in cids}
        assert (await m.heartbeat(_report(m, held)))["delete"] == []
        _slow_journal(m)
        faults.arm(point, err, under=str(tmp_path))
        task = asyncio.ensure_future(CHANGES[change](m))
        await asyncio.sleep(0.05)  # the change is applied in memory, its append in flight
        during = await m.heartbeat(_report(m, held))
        assert during.get("delete", []) == [], "GC ordered chunks of a non-durable change deleted"
        with pytest.raises(typed):
            await task
        after = await m.heartbeat(_report(m, held))
        assert after.get("delete", []) == []
        faults.disarm()
        await m.stop()
        # Restarted from its journal: the file is there, whole, and nothing is garbage.
        m2 = await _master(str(tmp_path))
        info = m2.fleet.file_info("/f")
        assert [c["id"] for c in info["chunks"]] == cids and info["size"] == CHUNK + 10
        assert (await m2.heartbeat(_report(m2, held)))["delete"] == []
        await m2.stop()
    asyncio.run(main())


def test_chunks_of_a_durable_delete_are_collected(tmp_path):
    """The guard is not a blanket stop: once the change is durable its chunks go."""
    async def main():
        m = await _master(str(tmp_path))
        cids = await _file_with_two_chunks(m)
        held = {cid: (1, CHUNK) for cid in cids}
        _slow_journal(m)
        task = asyncio.ensure_future(m.delete("/f"))
        await asyncio.sleep(0.05)
        assert (await m.heartbeat(_report(m, held)))["delete"] == []
        await task
        assert sorted(c for c, _ in (await m.heartbeat(_report(m, held)))["delete"]) == sorted(cids)
        await m.stop()
    asyncio.run(main())


def test_a_master_whose_journal_disk_keeps_failing_serves_nothing_until_it_works(tmp_path):
    async def main():
        m = await _master(str(tmp_path))
        await _file_with_two_chunks(m)
        faults.arm("pangu.io.journal.fsync", "EIO", under=str(tmp_path))
        with pytest.raises(DiskFailed):
            await m.mkdir("/a")
        with pytest.raises(DiskFailed):
            await m.stat("/f")
        hb = await m.heartbeat(_report(m, {}))
        assert hb == {"active": False}
        faults.disarm()
        assert (await m.stat("/f"))["size"] == CHUNK + 10  # the disk works again
        await m.mkdir("/a")
        await m.stop()
        m2 = await _master(str(tmp_path))
        assert m2.mastership.ns.exists("/a") and m2.mastership.ns.exists("/f")
        await m2.stop()
    asyncio.run(main())

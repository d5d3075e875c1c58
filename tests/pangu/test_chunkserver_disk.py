"""A chunkserver on a failing or full disk (issue 14, disk faults), in this process: the actor
class unwrapped, one replica, no secondaries (only Ray's node-id lookup is stubbed so no Ray
instance starts). A full disk refuses the write with a typed error and the replica takes
writes again once space returns; a failed fdatasync is never acknowledged, and the server
takes no more writes (and tells the master, which moves its data away)."""

from __future__ import annotations

import asyncio

import pytest

from base import faults
from pangu import chunkserver as cs_mod
from pangu.errors import DiskFailed, NoSpace

pytestmark = pytest.mark.timeout(60)
CAP = 256 * 1024


class _Ctx:
    def get_node_id(self) -> str:
        return "node-test"


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.setattr(cs_mod.ray, "get_runtime_context", lambda: _Ctx())
    # Without Ray, the bytes come as an awaitable future where the writer would pass an
    # ObjectRef (the write's argument check asks for one).
    monkeypatch.setattr(cs_mod.ray, "ObjectRef", asyncio.Future)
    faults.disarm()
    yield
    faults.disarm()


def _server(tmp_path):
    cls = cs_mod.ChunkServer.__ray_metadata__.modified_class
    return cls("c", str(tmp_path), "ns", capacity_bytes=1 << 30, name="cs-a")


def _ref(data: bytes):
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(data)
    return [fut]


async def _write(s, cid, off, data, seq):
    return await s.write(cid, 1, off, _ref(data), token="t", seq=seq)


def test_a_full_disk_refuses_the_write_and_space_returning_is_enough(tmp_path):
    async def main():
        s = _server(tmp_path)
        await s.create_chunk("c1", 1, CAP)
        await s.grant_lease("c1", 1, [], 30.0)
        assert await _write(s, "c1", 0, b"a" * 1000, 1) == 1000
        with faults.armed("pangu.chunk.write", "ENOSPC", under=s.dir):
            with pytest.raises(NoSpace):
                await _write(s, "c1", 1000, b"b" * 70000, 2)
        assert s.replicas["c1"].file.length() == 1000 and not s.report()["disk_failed"]
        assert await _write(s, "c1", 1000, b"b" * 70000, 3) == 71000
        assert s.replicas["c1"].file.read(0, 10**6) == b"a" * 1000 + b"b" * 70000
    asyncio.run(main())


def test_a_failed_fdatasync_is_not_acknowledged_and_stops_writes(tmp_path):
    async def main():
        s = _server(tmp_path)
        await s.create_chunk("c1", 1, CAP)
        await s.grant_lease("c1", 1, [], 30.0)
        await _write(s, "c1", 0, b"a" * 1000, 1)
        with faults.armed("pangu.chunk.fsync", "EIO", under=s.dir):
            with pytest.raises(DiskFailed):
                await _write(s, "c1", 1000, b"b" * 10, 2)
        assert s.report()["disk_failed"]
        # The disk answers again, but what it lost after the failed sync cannot be known:
        # no more writes here until the server restarts (the master drains it meanwhile).
        with pytest.raises(DiskFailed, match="no writes until restarted"):
            await _write(s, "c1", 1000, b"b" * 10, 3)
        with pytest.raises(DiskFailed):
            await s.create_chunk("c2", 1, CAP)
        assert (await s.read("c1", 1, 0, 1000)).to_pybytes() == b"a" * 1000  # reads go on
    asyncio.run(main())


def test_the_master_drains_a_server_whose_disk_failed():
    from pangu.fleet import ServerView

    rep = {"id": "cs-1", "name": "n", "node": "x", "capacity_bytes": 10, "used_bytes": 0,
           "chunks": {}}
    sv = ServerView(rep, 0.0)
    assert not sv.draining
    sv.update(dict(rep, disk_failed=True), 1.0)
    assert sv.draining and sv.as_server().draining

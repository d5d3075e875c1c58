"""A Nuwa leader whose disk fails (issue 14, disk faults), in a real 3-replica group in one
process (asyncio servers, real WAL and sockets, no Ray): its WAL fsync returns EIO (or its
writes ENOSPC). It stops leading and serving, another replica takes over, every write that
was acknowledged is there, and the failed replica recovers from its disk once it works."""

from __future__ import annotations

import asyncio

import pytest

from base import faults
from nuwa import errors as E
from nuwa.client import AsyncNuwa
from nuwa.core.raft import Role
from tests.nuwa.test_group_local import LocalGroup

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _clean():
    faults.disarm()
    yield
    faults.disarm()


async def _serving_leader(group: LocalGroup, timeout_s: float = 10.0,
                          not_: int | None = None) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        leaders = [rid for rid, s in group.servers.items()
                   if not s.stopped and s.node.status()["role"] == Role.LEADER and rid != not_]
        if len(leaders) == 1:
            return leaders[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no single serving leader within {timeout_s}s")


@pytest.mark.parametrize("point,err", [("nuwa.io.wal.fsync", "EIO"), ("nuwa.io.wal.write", "ENOSPC")])
def test_a_leader_whose_wal_fails_steps_down_and_nothing_acknowledged_is_lost(
        tmp_path, point, err):
    group = LocalGroup(tmp_path)

    async def main():
        await group.start_all()
        try:
            old = await _serving_leader(group)
            c = AsyncNuwa(list(group.addresses.values()), timeout_s=5, creator="alice")
            await c.create("/app/", parents=True)
            acked, unknown = [], []
            for i in range(20):
                await c.create(f"/app/k{i}", f"v{i}".encode())
                acked.append(i)
            faults.arm(point, err, under=str(tmp_path / f"r{old}"))
            for i in range(20, 60):
                try:
                    await c.create(f"/app/k{i}", f"v{i}".encode())
                    acked.append(i)
                except (E.OutcomeUnknown, E.Unavailable, E.NotLeader, E.Timeout):
                    unknown.append(i)  # may or may not have happened: not counted
                except E.NodeExists:
                    acked.append(i)  # an earlier try of the same create had landed
            assert faults.fired(point) >= 1, "the fault never fired: the test tested nothing"
            dead = group.servers[old]
            assert dead.stopped, "the leader went on serving on a failed disk"
            assert dead.status()["role"] != Role.LEADER
            new = await _serving_leader(group, not_=old)
            assert new != old
            assert len(acked) > 20, "no write was acknowledged after the failure"
            names = set(await c.list("/app/"))
            missing = [i for i in acked if f"k{i}" not in names]
            assert not missing, f"acknowledged writes lost: {missing}"
            for i in acked[::7]:
                assert (await c.get(f"/app/k{i}"))[0] == f"v{i}".encode()
            # The disk works again: the replica restarts from what is on it and catches up.
            faults.disarm()
            await group.stop(old)
            await group.start(old)
            group.publish()
            await c.create("/app/after", b"x")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            back = group.servers[old]
            while loop.time() < deadline and not back.tree.exists("/app/after"):
                await asyncio.sleep(0.05)
            assert back.tree.exists("/app/after"), "the restarted replica did not catch up"
            assert all(back.tree.exists(f"/app/k{i}") for i in acked)
            await c.close()
        finally:
            await group.close()

    asyncio.run(asyncio.wait_for(main(), 100))

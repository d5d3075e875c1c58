"""Fencing tokens end to end (issue 14, defect 16): a real Nuwa lock, Pangu on Ray, real
chunkservers. Writer A holds the lock and has the file open; its session is lost (it does not
notice: a pause, a partition); B takes the lock with a newer token and rewrites the file. A's
next write is refused, the file holds only B's data, and after the master's process is
killed and restarted by Ray (it replays its journal) A is still refused and B goes on."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from pangu import client as PC
from pangu import deploy
from pangu import errors as PE
from tests.integration.jobhelpers import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

CLUSTER = "pfence"
CS = 64 * 1024
LOCK = "/locks/report/"
WAIT_S = 60.0


class _Loop:
    """An event loop in a thread: the Nuwa sessions keep alive while the test blocks."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=WAIT_S)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def test_a_stale_lock_holder_cannot_write(ray_cluster, tmp_path):
    import ray

    from nuwa.client import AsyncNuwa
    from nuwa.group import start_group
    from nuwa.recipes import Lock

    g = start_group(1, str(tmp_path / "nuwa"), namespace=f"nuwa-pfence-{time.time_ns()}")
    loop = _Loop()
    clients = []
    try:
        here = ray.get_runtime_context().get_node_id()
        deploy.start(CLUSTER, str(tmp_path / "data"), nodes=[here], per_node=2,
                     settings={"allow_same_node": True, "rebalance": False, "maintain_s": 0.5},
                     heartbeat_s=0.5, capacity_bytes=64 << 20)
        c = PC.Client(CLUSTER)
        c.mkdir("/fence", parents=True)

        async def take():
            n = AsyncNuwa(g.client_addresses(), timeout_s=10)
            clients.append(n)
            lock = Lock(n, "report")
            return n, await lock.acquire(timeout_s=30)

        na, t1 = loop.run(take())
        fa = c.open("/fence/out", "wb", replication=2, chunk_size=CS, fencing=(LOCK, t1))
        fa.write(b"A" * 1000)
        fa.flush()  # acknowledged while A held the lock
        loop.run(na._session.close())  # A's session is gone; A does not know
        nb, t2 = loop.run(take())
        assert t2 > t1
        b_data = b"B" * (CS + 3000)  # two chunks
        with c.open("/fence/out", "wb", replication=2, chunk_size=CS,
                    fencing=(LOCK, t2)) as fb:  # A's writer lease is taken over, not Busy
            fb.write(b_data)
        with pytest.raises(PE.StaleFencingToken):
            fa.write(b"A" * 500)
            fa.flush()
        with contextlib.suppress(PE.PanguError):
            fa.close()
        with pytest.raises(PE.StaleFencingToken):
            c.rm("/fence/out", fencing=(LOCK, t1))
        with c.open("/fence/out", "rb") as f:
            assert f.read() == b_data

        # The master's process dies; Ray restarts it and it replays its journal.
        ns = f"fuxi-{CLUSTER}"
        ray.kill(ray.get_actor("pangu-master-1", namespace=ns), no_restart=False)
        wait_for(lambda: _answers(c), WAIT_S, "the restarted master to answer")
        for call in (lambda: c.open("/fence/out", "ab", fencing=(LOCK, t1)),
                     lambda: c.open("/fence/new", "wb", fencing=(LOCK, t1)),
                     lambda: c.truncate("/fence/out", 0, fencing=(LOCK, t1)),
                     lambda: c.mv("/fence/out", "/fence/moved", fencing=(LOCK, t1))):
            with pytest.raises(PE.StaleFencingToken):
                call()
        with c.open("/fence/out", "ab", fencing=(LOCK, t2)) as fb:
            fb.write(b"C" * 10)
        with c.open("/fence/out", "rb") as f:
            assert f.read() == b_data + b"C" * 10
        assert not c.exists("/fence/new")
    finally:
        for n in clients:
            with contextlib.suppress(Exception):
                loop.run(n.close())
        loop.stop()
        try:
            deploy.stop(CLUSTER)
        finally:
            g.stop()


def _answers(c) -> bool:
    try:
        return bool(c.call("status", timeout_s=5)["active"])
    except (PE.PanguError, Exception):  # noqa: BLE001 - not yet
        time.sleep(0.3)
        return False

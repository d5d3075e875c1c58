"""``fuxi.shells.offloop``: blocking calls awaited off the event loop, one bounded pool per
dependency (no clocks: the blocked calls wait on events the test sets)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from fuxi.io.store import MemoryStore
from fuxi.shells.offloop import AsyncStore, OffLoop


def test_the_loop_runs_while_a_blocking_call_waits():
    pool = OffLoop("t", 1)
    release = threading.Event()

    async def main():
        slow = asyncio.ensure_future(pool.run(release.wait))
        await asyncio.sleep(0)
        ran = await asyncio.wait_for(asyncio.sleep(0, result="loop ran"), 30)
        assert not slow.done()  # still blocked: the loop answered anyway
        release.set()
        assert await asyncio.wait_for(slow, 30) is True
        return ran

    try:
        assert asyncio.run(main()) == "loop ran"
    finally:
        release.set()
        pool.shutdown()


def test_a_full_pool_does_not_hold_up_another_dependency():
    store_pool, gcs_pool = OffLoop("store", 2), OffLoop("gcs", 1)
    release = threading.Event()

    async def main():
        stuck = [asyncio.ensure_future(store_pool.run(release.wait)) for _ in range(3)]
        nodes = await asyncio.wait_for(gcs_pool.run(lambda: ["n1"]), 30)
        assert not any(f.done() for f in stuck)
        release.set()
        await asyncio.wait_for(asyncio.gather(*stuck), 30)
        return nodes

    try:
        assert asyncio.run(main()) == ["n1"]
    finally:
        release.set()
        store_pool.shutdown()
        gcs_pool.shutdown()


def test_async_store_does_what_the_store_does():
    pool = OffLoop("store", 2)
    store = AsyncStore(MemoryStore(), pool)

    async def main():
        await store.put("/jobs/a/status", {"state": "running"})
        assert await store.get("/jobs/a/status") == {"state": "running"}
        assert await store.get("/jobs/b/status", "none") == "none"
        assert await store.list("/jobs/") == ["/jobs/a/status"]
        assert await store.call(store.sync.get, "/jobs/a/status") == {"state": "running"}
        assert await store.delete("/jobs/a/status") is True
        assert await store.delete("/jobs/a/status") is False

    try:
        asyncio.run(main())
    finally:
        pool.shutdown()


@pytest.mark.parametrize("threads_max", [0, -1, 1.5, None])
def test_a_pool_has_at_least_one_thread(threads_max):
    with pytest.raises(ValueError, match="threads_max"):
        OffLoop("t", threads_max)

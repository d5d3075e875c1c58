"""Blocking calls, awaited off an actor's event loop (issue 14, defect 11).

FuxiMaster is an async actor: every method, sync or not, runs on its one event loop, so a
blocking call inside it (a Nuwa store call while Nuwa elects a leader, ``ray.nodes()`` asking
the GCS, starting a Kuafu proxy) would stall every other caller -- JobMasters' heartbeats,
``status``, ``cluster_info``. The calls that have no async form run here instead: on a small
thread pool of their own, awaited.

One ``OffLoop`` per dependency (a bulkhead): the store's pool and the Ray control-plane pool
are separate, so a Nuwa group that does not answer fills only the store's threads and the node
view (``cluster_info``, slot grants) still refreshes.

    gcs = OffLoop("fuxi-gcs", GCS_THREADS_MAX)
    nodes = await gcs.run(ray.nodes)
    store = AsyncStore(FileStore(root), OffLoop("fuxi-store", STORE_THREADS_MAX))
    await store.put("/jobs/x/status", {...})

Calls queued beyond ``threads_max`` wait (awaited, on the loop) for a free thread; how many
can wait is bounded by the actor's own ``max_concurrency`` and its background loops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any, Callable

STORE_THREADS_MAX = 4  # store calls (Nuwa, files) in flight at once, per FuxiMaster
GCS_THREADS_MAX = 2    # Ray control-plane calls (node table, named actors) in flight at once


class OffLoop:
    """A bounded thread pool for one blocking dependency, awaited from the event loop."""

    def __init__(self, name: str, threads_max: int):
        if not (isinstance(threads_max, int) and threads_max >= 1):
            raise ValueError(f"threads_max={threads_max!r}: expected an int >= 1")
        self.name = name
        self._pool = concurrent.futures.ThreadPoolExecutor(threads_max, thread_name_prefix=name)

    async def run(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on this pool; the event loop goes on meanwhile."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class AsyncStore:
    """A ``StateStore`` (``fuxi.io.store``: Nuwa, files or memory) with awaited calls: each runs
    on the store's own ``OffLoop``. ``sync`` is the blocking store itself, for code that runs
    before the loop serves (a constructor) or already off it."""

    def __init__(self, store, offloop: OffLoop):
        self.sync = store
        self.offloop = offloop

    async def put(self, key: str, value: Any) -> None:
        await self.offloop.run(self.sync.put, key, value)

    async def get(self, key: str, default: Any = None) -> Any:
        return await self.offloop.run(self.sync.get, key, default)

    async def delete(self, key: str) -> bool:
        return await self.offloop.run(self.sync.delete, key)

    async def list(self, prefix: str) -> list[str]:
        return await self.offloop.run(self.sync.list, prefix)

    async def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Any other blocking call on the store's dependency (the Nuwa client's ``get`` of a
        path outside the store's root), on the same pool."""
        return await self.offloop.run(fn, *args, **kwargs)

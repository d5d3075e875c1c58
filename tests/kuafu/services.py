"""A test service used by the Kuafu tests with and without Ray (importable by Ray workers)."""

from __future__ import annotations

import asyncio
import threading
import time

import kuafu


class Svc:
    def __init__(self, tag: str = "s"):
        self.tag = tag
        self.cancelled = threading.Event()
        self.ran = 0

    @kuafu.method(idempotent=True)
    async def echo(self, m):
        return m

    @kuafu.method
    async def who(self, m):
        self.ran += 1
        return self.tag

    @kuafu.method(idempotent=True)
    async def who_idem(self, m):
        await asyncio.sleep(float(m or 0))
        return self.tag

    @kuafu.method(idempotent=True)
    async def lag(self, m):
        """Slow only on the replica tagged "slow": a straggler for backup requests."""
        if self.tag == "slow":
            await asyncio.sleep(float(m))
        return self.tag

    @kuafu.method
    async def sleep(self, m):
        try:
            await asyncio.sleep(float(m))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return self.tag

    @kuafu.method
    def slow(self, m):
        time.sleep(0.05)
        return b"ok"

    @kuafu.method
    def blocking(self, m):
        time.sleep(float(m))
        return "slept"

    @kuafu.method
    def boom(self, m):
        raise KeyError(f"no {m}")

    @kuafu.method
    def bad_result(self, m):
        return 42

    @kuafu.method
    async def remaining(self, m):
        return f"{kuafu.context().remaining_s():.3f}"

    @kuafu.method
    async def nested(self, m):
        """Call m["uri"]'s sleep(m["arg"]) asking for 60 s: the caller's deadline wins."""
        c = kuafu.aconnect(m["uri"])
        try:
            return await c.acall("sleep", m["arg"], timeout_s=60)
        finally:
            await c.close()

    def _private(self, m):  # not exposed: other methods are marked
        return m

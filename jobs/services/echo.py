"""A versioned echo service: the smallest useful service, used by the tests and benchmark.

    fuxi service register jobs/services/echo.yaml
    fuxi call nuwa://default/echo echo --data hi
"""

from __future__ import annotations

import asyncio
import os
import time

import kuafu

ECHO_SLEEP_S_MAX = 10.0  # the longest `sleep` call the echo service takes


class Echo:
    def __init__(self, tag: str = "v1", healthy: bool = True, start_delay_s: float = 0.0,
                 ledger: str | None = None):
        time.sleep(start_delay_s)  # a slow constructor: the replica is not an endpoint yet
        self.tag = tag
        self.healthy = healthy
        self.ledger = ledger  # a file `record` appends to: calls counted across replicas
        self._one_at_a_time = asyncio.Lock()  # `serial`: a replica whose latency grows with load

    @kuafu.method(idempotent=True)
    async def echo(self, msg):
        return msg

    @kuafu.method(idempotent=True)
    async def sleep(self, msg):
        """Answer after ``msg`` seconds (a number, or its text): load for the autoscaler."""
        try:
            secs = float(msg.decode() if isinstance(msg, bytes) else msg)
        except (TypeError, ValueError, UnicodeDecodeError):
            raise ValueError(f"sleep: got {msg!r:.40}, expected seconds as a number") from None
        if not 0.0 <= secs <= ECHO_SLEEP_S_MAX:
            raise ValueError(f"sleep: {secs!r} s, expected 0..{ECHO_SLEEP_S_MAX:g}")
        await asyncio.sleep(secs)
        return b"slept"

    @kuafu.method(idempotent=True)
    async def serial(self, msg):
        """Like ``sleep``, but one call at a time per replica: calls queue behind each other,
        so the latency a caller sees grows with the calls in flight (load for a latency
        target)."""
        async with self._one_at_a_time:
            return await self.sleep(msg)

    @kuafu.method(idempotent=True)
    async def version(self, msg):
        return self.tag

    @kuafu.method
    async def pid(self, msg):
        return str(os.getpid())

    @kuafu.method(idempotent=True)
    async def caller(self, msg):
        """Who called, as the proxy verified it (Zhongkui); "" without access control."""
        return kuafu.context().caller or ""

    @kuafu.method(idempotent=False)
    async def record(self, msg):
        """Append ``msg`` (a call id, up to 200 bytes) as one line to the ledger file: never
        idempotent, so tests count each call exactly once across replicas."""
        if self.ledger is None:
            raise ValueError("record: this replica has no ledger (config ledger: <path>)")
        text = msg.decode() if isinstance(msg, bytes) else str(msg)
        if len(text) > 200 or "\n" in text:
            raise ValueError(f"record: got {text!r:.40}, expected one line of <= 200 chars")
        fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (text + "\n").encode())
        finally:
            os.close(fd)
        return b"recorded"

    def check_health(self) -> bool:
        return self.healthy

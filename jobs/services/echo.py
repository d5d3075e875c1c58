"""A versioned echo service: the smallest useful service, used by the tests and benchmark.

    fuxi service register jobs/services/echo.yaml
    fuxi call nuwa://default/echo echo --data hi
"""

from __future__ import annotations

import os
import time

import kuafu


class Echo:
    def __init__(self, tag: str = "v1", healthy: bool = True, start_delay_s: float = 0.0):
        time.sleep(start_delay_s)  # a slow constructor: the replica is not an endpoint yet
        self.tag = tag
        self.healthy = healthy

    @kuafu.method(idempotent=True)
    async def echo(self, msg):
        return msg

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

    def check_health(self) -> bool:
        return self.healthy

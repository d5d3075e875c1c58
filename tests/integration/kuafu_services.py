"""Services and helper actors for the Kuafu integration tests (importable by Ray workers)."""

from __future__ import annotations

import asyncio
import os

import ray

import kuafu
from tests.kuafu.services import Svc


@ray.remote(num_cpus=0)
class ServerActor:
    async def __init__(self, cluster: str, service: str, tag: str, max_concurrency: int = 16,
                       queue_max: int = 1024):
        from kuafu.deploy import local_proxy

        self.server = kuafu.Server(max_concurrency=max_concurrency, queue_max=queue_max)
        self.server.add(service, Svc(tag))
        address = await asyncio.get_running_loop().run_in_executor(None, local_proxy, cluster)
        self.endpoints = await self.server.attach(address)

    async def info(self) -> dict:
        return {"endpoints": self.endpoints, "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id()}

    async def stats(self) -> dict:
        return self.server.stats()

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.server.stop(grace_s)


@ray.remote(num_cpus=0)
class CallerActor:
    """A client on a chosen node."""

    def call(self, uri: str, method: str, message, timeout_s: float = 10.0):
        with kuafu.connect(uri) as c:
            return c.call(method, message, timeout_s=timeout_s)

    def call_and_address(self, uri: str, method: str, message):
        with kuafu.connect(uri) as c:
            out = c.call(method, message, timeout_s=10.0)
            return out, c.stats()["address"]

"""The Ray Serve twin of ``tests.integration.counting.Counter`` for bench_upgrade_once (a
module of its own so Serve's replicas import it without the benchmark's driver code)."""

from __future__ import annotations

import asyncio
import os


class ServeCounter:
    def __init__(self, log_dir: str, tag: str, work_s: float = 0.005):
        os.makedirs(log_dir, exist_ok=True)
        self.tag, self.work_s = tag, work_s
        self.path = os.path.join(log_dir, f"{tag}-{os.getpid()}.log")

    async def __call__(self, request):
        rid = (await request.body()).decode()
        await asyncio.sleep(self.work_s)  # the same 5 ms of work
        with open(self.path, "a") as f:
            f.write(rid + "\n")
        return self.tag

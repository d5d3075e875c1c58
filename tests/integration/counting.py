"""A service that counts each call it runs by the request id the caller sent, in a file of
its own (replicas are separate processes and are stopped by drains), for the tests of
upgrades that must never run a non-idempotent call twice (importable by Ray workers)."""

from __future__ import annotations

import os
import threading
import time

import kuafu


class Counter:
    def __init__(self, log_dir: str, tag: str = "v1", work_s: float = 0.005):
        os.makedirs(log_dir, exist_ok=True)
        self.tag, self.work_s = tag, work_s
        self.path = os.path.join(log_dir, f"{tag}-{os.getpid()}.log")
        self.lock = threading.Lock()

    @kuafu.method(idempotent=False)  # never idempotent: Kuafu must never run it twice
    def count(self, msg):
        rid = msg.decode() if isinstance(msg, (bytes, bytearray, memoryview)) else str(msg)
        time.sleep(self.work_s)  # long enough for drains to find calls in flight
        with self.lock, open(self.path, "a") as f:
            f.write(rid + "\n")
        return self.tag

    @kuafu.method(idempotent=True)
    async def version(self, msg):
        return self.tag


def counted(log_dir: str) -> dict[str, int]:
    """Request id -> how many times some replica ran it."""
    out: dict[str, int] = {}
    for name in os.listdir(log_dir):
        with open(os.path.join(log_dir, name)) as f:
            for line in f:
                rid = line.strip()
                if rid:
                    out[rid] = out.get(rid, 0) + 1
    return out

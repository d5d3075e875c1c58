"""Event loops Kuafu runs on its own threads: uvloop when it is installed (it roughly halves
the per-message cost of the loop), else asyncio's default."""

from __future__ import annotations

import asyncio
import threading

LOOP_START_TIMEOUT_S = 10.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional in spirit
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    """An event loop running forever on a daemon thread."""

    def __init__(self, name: str):
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro, timeout_s: float):
        """Run ``coro`` on the loop and wait at most ``timeout_s`` for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call(self, fn, timeout_s: float, *args):
        """Run the plain function ``fn(*args)`` on the loop's thread and return its result."""
        async def go():
            return fn(*args)
        return self.run(go(), timeout_s)

    def alive(self) -> bool:
        return self.thread.is_alive() and not self.loop.is_closed()

    def stop(self, timeout_s: float = LOOP_START_TIMEOUT_S) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout_s)

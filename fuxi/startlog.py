"""Saying what a command is doing while it starts, and how long each step took.

``runtime.connect(..., progress=fn)`` calls ``fn`` with one short line per step ("starting
Ray… 2.1 s", "FuxiMaster ready 0.4 s"); the CLI sends them to stderr so stdout stays the
job's. ``FUXI_TRACE_START=1`` adds the finer steps (imports, each actor's readiness)."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator

TRACE_ENV = "FUXI_TRACE_START"


def tracing() -> bool:
    return os.environ.get(TRACE_ENV, "").strip() not in ("", "0")


class StartLog:
    """Timed steps of a command's start, reported to ``sink`` (None: kept only)."""

    def __init__(self, sink: Callable[[str], None] | None = None):
        self.sink = sink
        self.trace = tracing()
        self.steps: list[tuple[str, float]] = []

    def say(self, line: str, fine: bool = False) -> None:
        if self.sink is not None and (not fine or self.trace):
            self.sink(line)

    @contextlib.contextmanager
    def step(self, name: str, fine: bool = False) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - t0
            self.steps.append((name, took))
            self.say(f"{name} {took:.1f} s", fine)

    def mark(self, name: str, since: float, fine: bool = False) -> None:
        """A step that began at ``since`` (``time.perf_counter()``) and ends now."""
        took = time.perf_counter() - since
        self.steps.append((name, took))
        self.say(f"{name} {took:.1f} s", fine)

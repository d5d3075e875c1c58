"""The Pangu master's record of what it did: the last EVENTS_MAX events (shown by ``status``)
and a counter per kind, each also logged."""

from __future__ import annotations

import collections
import logging
import time

logger = logging.getLogger("pangu.master")

EVENTS_MAX = 1000


class EventLog:
    def __init__(self, name: str):
        self.name = name
        self.events: collections.deque = collections.deque(maxlen=EVENTS_MAX)
        self.counters: collections.Counter = collections.Counter()

    def record(self, kind: str, message: str) -> None:
        self.events.append({"t": time.time(), "kind": kind, "message": message})
        self.counters[kind] += 1
        logger.info("pangu master %s: %s", self.name, message)

    def count(self, kind: str, n: int = 1) -> None:
        """Count without an event (bytes and chunks copied)."""
        self.counters[kind] += n

    def last(self, n: int) -> list[dict]:
        return list(self.events)[-n:]

    def __iter__(self):
        return iter(self.events)

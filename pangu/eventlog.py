"""The Pangu master's record of what it did: the last EVENTS_MAX events (shown by ``status``)
and a counter per kind, each also logged and reported to the process's ``base.events`` and
``base.metrics``."""

from __future__ import annotations

import collections
import logging
import time

from base import events, metrics

logger = logging.getLogger("pangu.master")

EVENTS_MAX = 1000
MASTER_EVENTS = metrics.counter("pangu_master_events_total",
                                "What Pangu masters did (repairs, copies, GC, elections...), by kind.",
                                labels=("kind",))


class EventLog:
    def __init__(self, name: str):
        self.name = name
        self.events: collections.deque = collections.deque(maxlen=EVENTS_MAX)
        self.counters = metrics.CountsDict(MASTER_EVENTS)

    def record(self, kind: str, message: str) -> None:
        self.events.append({"t": time.time(), "kind": kind, "message": message})
        self.counters[kind] += 1
        events.emit("pangu", kind, message, master=self.name)
        logger.info("pangu master %s: %s", self.name, message)

    def count(self, kind: str, n: int = 1) -> None:
        """Count without an event (bytes and chunks copied)."""
        self.counters[kind] += n

    def last(self, n: int) -> list[dict]:
        return list(self.events)[-n:]

    def __iter__(self):
        return iter(self.events)

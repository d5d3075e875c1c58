"""Hot chunkservers (issue 20 part 2; pure): a chunkserver whose disk is filled, or whose
request queue stands, well above its peers' is flagged by the one detector
(``base.hotspots``) and new replicas go elsewhere while enough other nodes qualify
(``pangu.core.placement.choose`` prefers servers not ``hot``).

Two signals, each its own rule; a server is hot while either flags it:

* disk use (used / capacity, from each heartbeat): under ``DISK_USE`` hot above 1.5x its
  peers' median and above ``HOT_DISK_USE_FLOOR``; clears at 1.2x or at the floor. Placement
  already weighs nodes by free bytes; the flag makes a server that fills far faster than the
  rest (one small disk, a skewed write stream) take nothing new while others can.
* queue (the time-weighted mean of its reads and writes in flight since its last heartbeat,
  ``QueueMeter``): under ``QUEUE`` hot above 3x its peers' median and above
  ``HOT_QUEUE_FLOOR`` requests; clears at 1.5x or at ``HOT_QUEUE_CLEAR_FLOOR``. A slow disk
  or a crowd of readers on one server shows here first: its calls pile up while its peers'
  do not. Only the time inside the chunkserver's methods counts (calls waiting in Ray's
  transport are not seen), and a server whose reads hold its event loop serves about one at
  a time: there the mean is its busy fraction, 0.94 under a crowd of 16 readers (measured),
  hence a floor of 0.5 -- busy at least half the time, three times as busy as its peers.

Dead and draining servers are not judged (they get nothing new anyway).
"""

from __future__ import annotations

from typing import Iterable

from base.hotspots import Change, HotRule, HotSpots

HOT_DISK_USE_FLOOR = 0.5  # a disk less than half full is never hot
DISK_USE = HotRule("chunkserver disk use", factor=1.5, floor=HOT_DISK_USE_FLOOR,
                   clear_factor=1.2)
HOT_QUEUE_FLOOR = 0.5  # reads and writes in flight on average, below which never hot
HOT_QUEUE_CLEAR_FLOOR = 0.2  # ... and at or below which the flag clears
QUEUE = HotRule("chunkserver queue", factor=3.0, floor=HOT_QUEUE_FLOOR, clear_factor=1.5,
                clear_floor=HOT_QUEUE_CLEAR_FLOOR)
QUEUE_REPORTED_MAX = 1e6  # a queue length one heartbeat may claim


class QueueMeter:
    """Requests in flight on a chunkserver, averaged over time: ``enter(now)`` and
    ``leave(now)`` around each read and write, ``take(now)`` at each heartbeat gives the
    time-weighted mean since the previous ``take`` (times in seconds, from one clock)."""

    def __init__(self, now: float):
        self.inflight = 0
        self.since = self.changed = now
        self.area = 0.0  # request-seconds since ``since``

    def _advance(self, now: float) -> None:
        if now > self.changed:
            self.area += self.inflight * (now - self.changed)
            self.changed = now

    def enter(self, now: float) -> None:
        self._advance(now)
        self.inflight += 1

    def leave(self, now: float) -> None:
        self._advance(now)
        self.inflight = max(0, self.inflight - 1)

    def take(self, now: float) -> float:
        self._advance(now)
        span = now - self.since
        mean = self.area / span if span > 0 else float(self.inflight)
        self.since, self.area = now, 0.0
        return min(mean, QUEUE_REPORTED_MAX)


class HotServers:
    def __init__(self, disk: HotRule = DISK_USE, queue: HotRule = QUEUE):
        self.disk = HotSpots(disk)
        self.queue = HotSpots(queue)
        self.signal: dict[str, str] = {}  # a hot server -> the signal(s) that flag it

    def update(self, servers: Iterable) -> Change:
        """``servers``: ``placement.Server``-like (id, capacity_bytes, used_bytes, queue,
        alive, draining). ``flagged``: ``(id, load, peers' median, signal)``; ``cleared``:
        ``(id, None, None)`` once no signal flags it any more."""
        judged = [s for s in servers if s.alive and not s.draining]
        before = self.hot
        d = self.disk.update({s.id: s.used_bytes / s.capacity_bytes for s in judged
                              if s.capacity_bytes > 0})
        q = self.queue.update({s.id: getattr(s, "queue", 0.0) for s in judged})
        hot = frozenset(d.hot | q.hot)
        self.signal = {m: ", ".join(n for n, c in (("disk use", d), ("queue", q)) if m in c.hot)
                       for m in hot}
        flagged = [(m, v, med, "disk use") for m, v, med in d.flagged if m not in before] + \
                  [(m, v, med, "queue") for m, v, med in q.flagged if m not in before]
        seen, once = set(), []
        for f in flagged:  # both signals at once: one event
            if f[0] not in seen:
                seen.add(f[0])
                once.append(f)
        return Change(hot, once, [(m, None, None) for m in sorted(before - hot)],
                      d.ignored + q.ignored)

    @property
    def hot(self) -> frozenset:
        return frozenset(self.disk.hot | self.queue.hot)

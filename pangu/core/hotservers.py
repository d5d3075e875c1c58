"""Hot chunkservers (issue 20 part 2; pure): a chunkserver whose disk is filled well above its
peers' is flagged by the one detector (``base.hotspots``) and new replicas go elsewhere while
enough other nodes qualify (``pangu.core.placement.choose`` prefers servers not ``hot``).

The signal is disk use (used / capacity, from each heartbeat): under ``DISK_USE`` a server is
hot above 1.5x its peers' median and above ``HOT_DISK_USE_FLOOR``; the flag clears at 1.2x or
at the floor. Placement already weighs nodes by free bytes; the flag makes a server that fills
far faster than the rest (one small disk, a skewed write stream) take nothing new while
others can, instead of merely less. Dead and draining servers are not judged (they get
nothing new anyway).
"""

from __future__ import annotations

from typing import Iterable

from base.hotspots import Change, HotRule, HotSpots

HOT_DISK_USE_FLOOR = 0.5  # a disk less than half full is never hot
DISK_USE = HotRule("chunkserver disk use", factor=1.5, floor=HOT_DISK_USE_FLOOR,
                   clear_factor=1.2)


class HotServers:
    def __init__(self, rule: HotRule = DISK_USE):
        self.detector = HotSpots(rule)

    def update(self, servers: Iterable) -> Change:
        """``servers``: ``placement.Server``-like (id, capacity_bytes, used_bytes, alive,
        draining)."""
        loads = {s.id: s.used_bytes / s.capacity_bytes for s in servers
                 if s.alive and not s.draining and s.capacity_bytes > 0}
        return self.detector.update(loads)

    @property
    def hot(self) -> frozenset:
        return frozenset(self.detector.hot)

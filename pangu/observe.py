"""The Pangu master's metrics: gauges set from its own state each time ``metrics()`` is asked
(capacity and use of its chunkservers, files and chunks, chunk health), and the counters it
keeps as it works (``pangu_master_events_total``, ``pangu_rereplication_bytes_total``).

Chunk health (under-replicated, missing, stale-only) walks every file's chunks, like ``fsck``;
it is recomputed at most every ``HEALTH_TTL_S`` however often Prometheus scrapes."""

from __future__ import annotations

import time

from base import metrics

HEALTH_TTL_S = 5.0  # chunk health is recomputed at most this often for metrics

REREPLICATED = metrics.counter("pangu_rereplication_bytes_total",
                               "Bytes of chunk replicas copied, by why (repair, rebalance).",
                               labels=("why",), series_max=8)
_G = {name: metrics.gauge(f"pangu_{name}", help) for name, help in (
    ("master_active", "1 if this Pangu master is the active one."),
    ("epoch", "The active master's epoch (fencing)."),
    ("files", "Files in the namespace."),
    ("chunks", "Chunks in the namespace."),
    ("writers", "Files open for writing."),
    ("capacity_bytes", "Disk capacity of the live chunkservers."),
    ("used_bytes", "Bytes the live chunkservers hold."),
    ("chunks_under_replicated", "Chunks with fewer live replicas than their factor."),
    ("chunks_missing", "Chunks with no live replica."),
    ("chunks_stale_only", "Chunks whose live replicas are all of an older version."),
    ("health_age_seconds", "Age of the chunk health figures."))}
CHUNKSERVERS = metrics.gauge("pangu_chunkservers", "Chunkservers by state.", labels=("state",),
                             series_max=8)


class MasterMetrics:
    def __init__(self):
        self._health: dict | None = None
        self._health_at = 0.0

    def render(self, active: bool, epoch: int, status: dict | None, healer) -> str:
        """The process's metrics; ``status`` is the master's status (None on a standby)."""
        _G["master_active"].set(1 if active else 0)
        if status is not None:
            _G["epoch"].set(epoch)
            for key in ("files", "chunks", "writers"):
                _G[key].set(status.get(key, 0))
            servers = status.get("servers") or []
            live = [s for s in servers if not s.get("dead")]
            _G["capacity_bytes"].set(sum(s.get("capacity_bytes", 0) for s in live))
            _G["used_bytes"].set(sum(s.get("used_bytes", 0) for s in live))
            states = {("live",): 0, ("dead",): 0, ("draining",): 0}
            for s in servers:
                st = "dead" if s.get("dead") else "draining" if s.get("draining") else "live"
                states[(st,)] += 1
            CHUNKSERVERS.replace(states)
            now = time.monotonic()
            if self._health is None or now - self._health_at > HEALTH_TTL_S:
                self._health, self._health_at = healer.fsck("/"), now
            for key in ("under_replicated", "missing", "stale_only"):
                v = self._health.get(key)
                _G[f"chunks_{key}"].set(len(v) if isinstance(v, (list, dict, set)) else v or 0)
            _G["health_age_seconds"].set(now - self._health_at)
        return metrics.REGISTRY.render()

"""What a proxy says when a replica turns hot or cools down (issue 20 part 2): an event
(``base.events``, kind ``hot_replica`` / ``hot_replica_cleared``) and two metrics --
``kuafu_hot_replica_changes_total{change}`` and ``kuafu_hot_replicas{service}``, the endpoints
of a service this proxy steers calls away from now. The decisions are
``kuafu.core.hotroute``'s."""

from __future__ import annotations

from base import events, metrics

HOT_SERIES_MAX = 1000  # services with a hot-replica gauge series

HOT_CHANGES = metrics.counter(
    "kuafu_hot_replica_changes_total",
    "Replicas a Kuafu proxy flagged hot (well slower than their peers) or cleared.",
    labels=("change",))
HOT_REPLICAS = metrics.gauge(
    "kuafu_hot_replicas", "Replicas of a service this proxy steers new calls away from now.",
    labels=("service",), series_max=HOT_SERIES_MAX)


def report(changes: list[dict], hot) -> None:
    """``changes`` from ``HotEndpoints.changes``; ``hot`` the ``HotEndpoints`` (for counts)."""
    touched = set()
    for c in changes:
        touched.add(c["service"])
        HOT_CHANGES.inc(change=c["change"])
        ms = "?" if c["latency_s"] is None else f"{c['latency_s'] * 1000:.1f} ms"
        peers = "?" if c["peers_median_s"] is None else f"{c['peers_median_s'] * 1000:.1f} ms"
        if c["change"] == "flagged":
            events.emit("kuafu", "hot_replica", f"{c['service']}: endpoint {c['endpoint']} "
                        f"answers in {ms}, its peers in {peers}: new calls steered away",
                        severity="warning", service=c["service"], endpoint=c["endpoint"],
                        latency_s=c["latency_s"], peers_median_s=c["peers_median_s"])
        else:
            events.emit("kuafu", "hot_replica_cleared", f"{c['service']}: endpoint "
                        f"{c['endpoint']} is back in line ({ms}, peers {peers})",
                        service=c["service"], endpoint=c["endpoint"])
    for svc in touched:
        s = hot.services.get(svc)
        HOT_REPLICAS.set(len(s.detector.hot) if s is not None else 0, service=svc)

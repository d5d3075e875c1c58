"""Hot replicas in Kuafu routing (issue 20 part 2; pure: the proxy passes ``now`` and its
``random.Random``).

The proxy records how long each endpoint took to answer (``record``). Per service, an
exponentially weighted mean per endpoint is its load; every ``HOT_CHECK_S`` the service's
endpoints go through ``base.hotspots`` (``REPLICA_LATENCY``: 3x the peers' median and above
``HOT_LATENCY_FLOOR_S``, cleared at 1.5x). ``avoid`` names the hot endpoints a call should not
go to; ``routing.choose`` drops them from its candidates while any other is left. A share of
calls (``HOT_PROBE_SHARE``) still reaches a hot endpoint, so its mean follows it back down and
the flag can clear. ``changes`` hands the shell what was flagged or cleared, for its event
and metric.
"""

from __future__ import annotations

from collections import OrderedDict

from base.hotspots import HotRule, HotSpots

HOT_CHECK_S = 0.5            # how often a service's endpoints are judged again
HOT_LATENCY_FLOOR_S = 0.02   # a replica answering faster than this is never hot
HOT_SAMPLES_MIN = 5          # replies from an endpoint before its mean counts
HOT_EWMA_WEIGHT = 0.2        # weight of the newest reply in an endpoint's mean
HOT_PROBE_SHARE = 0.05       # calls that still go to a hot endpoint (to see it recover)
HOT_SERVICES_MAX = 4096      # services whose endpoints are tracked (least recent evicted)
HOT_CHANGES_MAX = 1000       # flag changes kept for the shell between two reads
REPLICA_LATENCY = HotRule("replica latency", factor=3.0, floor=HOT_LATENCY_FLOOR_S,
                          clear_factor=1.5)


class _Service:
    __slots__ = ("means", "counts", "detector", "checked_at")

    def __init__(self, rule: HotRule):
        self.means: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.detector = HotSpots(rule)
        self.checked_at = float("-inf")


class HotEndpoints:
    def __init__(self, rule: HotRule = REPLICA_LATENCY, services_max: int = HOT_SERVICES_MAX):
        self.rule = rule
        self.services_max = services_max
        self.services: OrderedDict[str, _Service] = OrderedDict()
        self.pending: list[dict] = []  # flag changes not yet read by the shell

    def record(self, svc: str, endpoint: str, seconds: float) -> None:
        """One reply of ``endpoint`` (of service ``svc``) after ``seconds``."""
        if not isinstance(seconds, (int, float)) or not seconds >= 0:
            return  # a clock gone backwards says nothing about the replica
        s = self.services.get(svc)
        if s is None:
            s = self.services[svc] = _Service(self.rule)
            while len(self.services) > self.services_max:
                self.services.popitem(last=False)
        else:
            self.services.move_to_end(svc)
        old = s.means.get(endpoint)
        s.means[endpoint] = seconds if old is None else \
            old + HOT_EWMA_WEIGHT * (seconds - old)
        s.counts[endpoint] = s.counts.get(endpoint, 0) + 1

    def forget(self, svc: str, endpoint: str) -> None:
        """An endpoint gone: its mean is not another's."""
        s = self.services.get(svc)
        if s is not None:
            s.means.pop(endpoint, None)
            s.counts.pop(endpoint, None)

    def judge(self, svc: str, now: float, live=None) -> frozenset:
        """The hot endpoints of ``svc``, judged again when ``HOT_CHECK_S`` has passed. ``live``:
        a callable giving the names of the endpoints that exist now (others are forgotten)."""
        s = self.services.get(svc)
        if s is None:
            return frozenset()
        if now - s.checked_at >= HOT_CHECK_S:
            s.checked_at = now
            if live is not None:
                names = live()
                for gone in [e for e in s.means if e not in names]:
                    self.forget(svc, gone)
            loads = {e: m for e, m in s.means.items() if s.counts.get(e, 0) >= HOT_SAMPLES_MIN}
            change = s.detector.update(loads)
            for kind, rows in (("flagged", change.flagged), ("cleared", change.cleared)):
                for ep, load, med in rows:
                    if len(self.pending) < HOT_CHANGES_MAX:
                        self.pending.append({"change": kind, "service": svc, "endpoint": ep,
                                             "latency_s": load, "peers_median_s": med})
        return frozenset(s.detector.hot)

    def avoid(self, svc: str, now: float, rng, live=None) -> frozenset:
        """The endpoints a call of ``svc`` should not go to now (empty for a probe call)."""
        hot = self.judge(svc, now, live)
        if not hot or rng.random() < HOT_PROBE_SHARE:
            return frozenset()
        return hot

    def changes(self) -> list[dict]:
        """Flag changes since the last call (oldest first)."""
        out, self.pending = self.pending, []
        return out

    def snapshot(self) -> dict:
        """Per service: each endpoint's mean reply time, samples and whether it is hot."""
        return {svc: {e: {"mean_s": round(m, 6), "samples": s.counts.get(e, 0),
                          "hot": e in s.detector.hot} for e, m in s.means.items()}
                for svc, s in self.services.items()}

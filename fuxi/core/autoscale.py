"""The autoscaler's policy (pure: no Ray, no I/O, no clock of its own).

A service whose spec has an ``autoscaling:`` block (``fuxi.core.service_spec.AutoscalingSpec``)
gets one ``Autoscaler``. Each time the service manager has fresh per-replica numbers from
Kuafu (``kuafu.io.server.Server.stats``: calls running and queued, the time spent in calls,
calls done, p50/p99 latency) it calls ``step(policy, current, loads, now)``, where ``current``
is the desired replica count the service core works toward; a ``Decision`` it returns is the
new desired count (``ServiceCore.scale``) with its reason, which becomes an event.

    recommended = ceil(total calls in flight / target_in_flight)        (in-flight target)
                = ceil(replicas reporting * worst pXX latency / target)  (latency target)
    clamped to min_replicas..max_replicas

Rules, each step:
* The count moves up only once every recommendation for ``scale_up_delay_s`` wanted more than
  ``current`` (down: fewer, for ``scale_down_delay_s``). A step that wants ``current`` (or the
  other direction) breaks the streak, so a load that wobbles around a boundary changes
  nothing.
* It moves to the *most modest* recommendation of the streak (up: the smallest, down: the
  largest), and by at most ``max_change_per_step``.
* After a change both streaks start again: the next change needs a full delay of its own, so
  two changes are always more than a delay apart and the new replicas are measured first.
* A ``current`` outside min..max (the spec's bounds changed) is brought inside at once.
* With no replica reporting (all still starting), nothing is recommended but ``current``.

Scale to zero (``min_replicas: 0``): the load never recommends fewer than one replica; the
count goes to 0 only once no replica saw a call (none finished, none in flight) for
``scale_to_zero_after_s``. Any call seen restarts that idle timer. At 0 nothing starts a
replica but ``wake`` (a call held at a Kuafu proxy, ``kuafu.core.coldhold``), which asks for
max(1, min_replicas) at once -- no delay: a caller is waiting -- and restarts the idle timer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

EPSILON = 1e-9  # 8.000000001 calls over a target of 2 still wants 4 replicas, not 5


@dataclass(frozen=True)
class ReplicaLoad:
    """One ready replica over the last stats period."""

    in_flight: float             # mean calls running + queued at it
    calls: int = 0               # calls it finished in the period
    p50_ms: float | None = None  # over its recent calls
    p99_ms: float | None = None


@dataclass(frozen=True)
class Decision:
    at: float
    before: int
    after: int
    reason: str

    def to_dict(self) -> dict:
        return {"at": self.at, "from": self.before, "to": self.after, "reason": self.reason}


def _clamp(n: int, policy: dict) -> int:
    return min(max(n, int(policy["min_replicas"])), int(policy["max_replicas"]))


def awake_floor(policy: dict) -> int:
    """The fewest replicas the load alone may ask for: 1 even with ``min_replicas: 0`` (only
    idleness takes the last one away)."""
    return min(max(1, int(policy["min_replicas"])), int(policy["max_replicas"]))


def saw_calls(loads: list[ReplicaLoad]) -> bool:
    """Any call finished or in flight at any replica over the period."""
    return any(x.calls > 0 or x.in_flight > 0 for x in loads)


def recommend(policy: dict, current: int, loads: list[ReplicaLoad]) -> tuple[int, str]:
    """Replicas the load calls for now (within min..max), and why, in words."""
    if not loads:
        return _clamp(current, policy), "no ready replica reported its load"
    if policy.get("target_in_flight") is not None:
        target = float(policy["target_in_flight"])
        total = sum(max(0.0, x.in_flight) for x in loads)
        raw = math.ceil(total / target - EPSILON)
        why = (f"{total:.1f} calls in flight over {len(loads)} ready replicas, target "
               f"{target:g} per replica")
    else:
        target = float(policy["target_latency_ms"])
        pct = policy.get("latency_percentile", "p99")
        seen = [getattr(x, f"{pct}_ms") for x in loads if x.calls > 0]
        worst = max((v for v in seen if v is not None), default=0.0)
        raw = math.ceil(len(loads) * worst / target - EPSILON)
        why = (f"worst {pct} {worst:.1f} ms over {len(loads)} ready replicas, target "
               f"{target:g} ms")
    return max(_clamp(max(raw, 0), policy), awake_floor(policy)), why


@dataclass
class Autoscaler:
    up_since: float | None = None    # when the recommendations started wanting more
    up_floor: int = 0                # the smallest of them since
    down_since: float | None = None
    down_ceiling: int = 0
    recommended: int | None = None   # the last recommendation, and why
    why: str = ""
    last: Decision | None = None     # the last change
    steps: int = 0
    last_call_at: float | None = None  # the last time any replica saw a call (or a wake)

    def step(self, policy: dict, current: int, loads: list[ReplicaLoad],
             now: float) -> Decision | None:
        """One look at fresh numbers: a change of the desired count, or None."""
        self.steps += 1
        if self.last_call_at is None or saw_calls(loads):
            self.last_call_at = now
        want, why = recommend(policy, current, loads)
        self.recommended, self.why = want, why
        inside = _clamp(current, policy)
        if inside != current:
            return self._change(now, current, inside,
                                f"{current} replicas is outside min_replicas.."
                                f"max_replicas ({policy['min_replicas']}..{policy['max_replicas']})")
        idle_s = now - self.last_call_at
        after_s = float(policy.get("scale_to_zero_after_s") or 0.0)
        if int(policy["min_replicas"]) == 0 and current > 0 and after_s > 0 and idle_s >= after_s:
            self.recommended, self.why = 0, f"no call for {idle_s:.1f}s"
            return self._change(now, current, 0,
                                f"scaled to zero: no call for {idle_s:.1f}s "
                                f"(scale_to_zero_after_s {after_s:g})")
        if want > current:
            self.down_since = None
            if self.up_since is None:
                self.up_since, self.up_floor = now, want
            self.up_floor = min(self.up_floor, want)
        elif want < current:
            self.up_since = None
            if self.down_since is None:
                self.down_since, self.down_ceiling = now, want
            self.down_ceiling = max(self.down_ceiling, want)
        else:
            self.up_since = self.down_since = None
            return None
        cap = int(policy["max_change_per_step"])
        if self.up_since is not None and now - self.up_since >= float(policy["scale_up_delay_s"]):
            held = now - self.up_since
            return self._change(now, current, min(self.up_floor, current + cap),
                                f"{why}: wanted >= {self.up_floor} for {held:.1f}s")
        if (self.down_since is not None
                and now - self.down_since >= float(policy["scale_down_delay_s"])):
            held = now - self.down_since
            return self._change(now, current, max(self.down_ceiling, current - cap),
                                f"{why}: wanted <= {self.down_ceiling} for {held:.1f}s")
        return None

    def wake(self, policy: dict, current: int, now: float, why: str) -> Decision | None:
        """Calls wait for a replica (``why`` says where): restart the idle timer and, at 0,
        ask for ``awake_floor`` replicas now (None when some are already wanted)."""
        self.last_call_at = now
        if current > 0:
            return None
        return self._change(now, current, awake_floor(policy), f"woken from zero: {why}")

    def _change(self, now: float, before: int, after: int, reason: str) -> Decision:
        self.up_since = self.down_since = None
        self.last = Decision(now, before, after, reason)
        return self.last

    def view(self, policy: dict, current: int) -> dict:
        """What `fuxi service status` shows."""
        pending = ("up" if self.up_since is not None else
                   "down" if self.down_since is not None else "")
        return {"current": current, "recommended": self.recommended, "why": self.why,
                "min": policy["min_replicas"], "max": policy["max_replicas"],
                "target": (f"{policy['target_in_flight']:g} in flight per replica"
                           if policy.get("target_in_flight") is not None else
                           f"{policy.get('latency_percentile', 'p99')} <= "
                           f"{policy['target_latency_ms']:g} ms"),
                "pending": pending,
                "last": self.last.to_dict() if self.last else None,
                "scale_to_zero": int(policy["min_replicas"]) == 0,
                "scaled_to_zero": int(policy["min_replicas"]) == 0 and current == 0,
                "scale_to_zero_after_s": policy.get("scale_to_zero_after_s"),
                "last_call_at": self.last_call_at}


def replica_load(prev: dict | None, now_stats: dict, period_s: float) -> ReplicaLoad:
    """One replica's load over a stats period, from two of Kuafu's ``Server.stats`` samples
    (``prev`` None: the first one). The mean in flight is the time spent in finished calls
    (queued or running) per second of the period, by Little's law. With no call finished in
    the period (the first sample, or calls longer than it) it is what runs and waits now."""
    now_inflight = float(now_stats.get("running", 0)) + float(now_stats.get("queued", 0))
    calls = 0
    mean = 0.0
    if prev is not None and period_s > 0:
        calls = max(0, (now_stats.get("served", 0) + now_stats.get("failed", 0))
                    - (prev.get("served", 0) + prev.get("failed", 0)))
        busy = float(now_stats.get("busy_s", 0.0)) - float(prev.get("busy_s", 0.0))
        mean = max(0.0, busy) / period_s
    return ReplicaLoad(mean if calls > 0 else now_inflight, calls, now_stats.get("p50_ms"),
                       now_stats.get("p99_ms"))

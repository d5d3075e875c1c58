"""Hot spots (issue 20 part 2): which members of a group -- a service's replicas, a cluster's
nodes, Pangu's chunkservers -- carry a load well above their peers' (pure: no I/O, no clock).

A member is flagged *hot* when its load is above ``factor`` times the median of its peers'
loads (the other members') **and** above an absolute ``floor`` (so an idle group, where 2 ms
is "3x" 0.6 ms, flags nothing). The flag clears with hysteresis: only once the load falls to
``clear_factor`` times the peers' median or to ``clear_floor``, so a member near the line does
not flap. A group with fewer than ``peers_min`` peers per member flags nothing: with no peers
there is no "above its peers". At most ``hot_share_max`` of a group is hot at once (the
hottest first): steering work away from more would only move the hot spot.

    det = HotSpots(HotRule("replica latency", factor=3.0, clear_factor=1.5, floor=0.02))
    change = det.update({"r1": 0.004, "r2": 0.005, "r3": 0.250})
    change.hot == {"r3"}; change.flagged == ["r3"]; change.cleared == []

Every layer that steers work reads the same signal through this module: Kuafu routing
(``kuafu.core.hotroute``: replica latency), Fuxi placement (``fuxi.core.nodeview``: node
load from agents' heartbeats), Pangu chunk placement (chunkserver disk use and queue). Bad
loads (not a finite number >= 0: NaN from a broken gauge, a negative, a bool, text) are
ignored and reported in ``Change.ignored``, never trusted to flag or clear anything.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

HOT_MEMBERS_MAX = 100_000  # members one detector tracks; a larger group is refused
RULE_NAME_CHARS_MAX = 80
PEER_EXACT_MAX = 256  # groups up to this size get each member's exact peers' median


@dataclass(frozen=True)
class HotRule:
    """The thresholds of one signal. ``floor`` and ``clear_floor`` are in the signal's unit
    (seconds, a fraction of CPU, queued requests, bytes used ...); factors are ratios to the
    peers' median."""

    name: str
    factor: float = 3.0          # hot above this multiple of the peers' median ...
    floor: float = 0.0           # ... and above this absolute load
    clear_factor: float = 1.5    # the flag clears at or below this multiple ...
    clear_floor: float | None = None  # ... or at or below this load (default: ``floor``)
    peers_min: int = 1           # peers each member needs before it can be hot
    hot_share_max: float = 0.5   # at most this share of the group is hot at once

    def __post_init__(self):
        problems = []
        if not isinstance(self.name, str) or not 0 < len(self.name) <= RULE_NAME_CHARS_MAX:
            problems.append(f"name {self.name!r:.40}: expected 1-{RULE_NAME_CHARS_MAX} characters")
        for k in ("factor", "floor", "clear_factor", "hot_share_max"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                problems.append(f"{k}={v!r}: expected a finite number")
        if not problems:
            if self.factor <= 1.0:
                problems.append(f"factor={self.factor}: expected > 1 (a multiple of the peers')")
            if not 1.0 <= self.clear_factor <= self.factor:
                problems.append(f"clear_factor={self.clear_factor}: expected 1 <= clear_factor "
                                f"<= factor ({self.factor}), the hysteresis band")
            if self.floor < 0:
                problems.append(f"floor={self.floor}: expected >= 0")
            cf = self.clear_floor
            if cf is not None and (isinstance(cf, bool) or not isinstance(cf, (int, float))
                                   or not 0 <= cf <= self.floor):
                problems.append(f"clear_floor={cf!r}: expected a number from 0 to floor "
                                f"({self.floor})")
            if not 0.0 < self.hot_share_max <= 1.0:
                problems.append(f"hot_share_max={self.hot_share_max}: expected in (0, 1]")
        if isinstance(self.peers_min, bool) or not isinstance(self.peers_min, int) \
                or self.peers_min < 1:
            problems.append(f"peers_min={self.peers_min!r}: expected a whole number >= 1")
        if problems:
            raise ValueError(f"hot-spot rule {self.name!r:.40}: " + "; ".join(problems))

    @property
    def clear_below(self) -> float:
        return self.floor if self.clear_floor is None else float(self.clear_floor)


@dataclass
class Change:
    """What one ``update`` decided: the hot members now, those newly flagged and cleared (each
    ``(member, load, peers' median)``), and members whose load was ignored as garbage."""

    hot: frozenset
    flagged: list = field(default_factory=list)
    cleared: list = field(default_factory=list)
    ignored: list = field(default_factory=list)


def good_load(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0


def peer_medians(loads: dict) -> dict:
    """Each member's peers' median load (the others'). Exact up to ``PEER_EXACT_MAX``
    members; above, the group's median stands for every member's peers' (one member more or
    less barely moves it)."""
    s = sorted(loads.values())
    if len(s) > PEER_EXACT_MAX:
        med = median(s)
        return {m: med for m in loads}
    out = {}
    for m, v in loads.items():
        i = bisect.bisect_left(s, v)  # drop one copy of v, take the median of the rest
        rest = s[:i] + s[i + 1:]
        out[m] = median(rest) if rest else 0.0
    return out


class HotSpots:
    """The flags of one group under one rule; ``update`` with every member's load."""

    def __init__(self, rule: HotRule):
        if not isinstance(rule, HotRule):
            raise ValueError(f"HotSpots takes a HotRule, got {type(rule).__name__}")
        self.rule = rule
        self.hot: set = set()
        self.last: dict = {}  # member -> (load, peers' median) at the last update

    def update(self, loads: dict) -> Change:
        """Decide with the group as it is now: ``{member: load}``. A member missing from
        ``loads`` (gone, or its load unknown) is no longer hot."""
        if not isinstance(loads, dict):
            raise ValueError(f"{self.rule.name}: loads must be a mapping of member to load, "
                             f"got {type(loads).__name__}")
        if len(loads) > HOT_MEMBERS_MAX:
            raise ValueError(f"{self.rule.name}: {len(loads)} members, expected at most "
                             f"{HOT_MEMBERS_MAX} (HOT_MEMBERS_MAX)")
        rule = self.rule
        good = {m: float(v) for m, v in loads.items() if good_load(v)}
        ignored = sorted((str(m) for m in loads if m not in good))
        change = Change(frozenset(), ignored=ignored)
        medians = peer_medians(good) if len(good) > rule.peers_min else {}
        hot_now = set()
        for m, v in good.items():
            med = medians.get(m)
            if med is None:
                continue
            if m in self.hot:
                stays = v > rule.clear_factor * med and v > rule.clear_below
                if stays:
                    hot_now.add(m)
            elif v > rule.factor * med and v > rule.floor:
                hot_now.add(m)
        cap = max(1, int(rule.hot_share_max * len(good))) if good else 0
        if len(hot_now) > cap:  # the hottest (by ratio to peers) keep the flag
            ranked = sorted(hot_now, key=lambda m: (-(good[m] / (medians[m] or 1e-12)), str(m)))
            hot_now = set(ranked[:cap])
        for m in sorted(hot_now - self.hot, key=str):
            change.flagged.append((m, good[m], medians[m]))
        for m in sorted(self.hot - hot_now, key=str):
            change.cleared.append((m, good.get(m), medians.get(m)))
        self.hot = hot_now
        self.last = {m: (good[m], medians.get(m)) for m in good}
        change.hot = frozenset(hot_now)
        return change

    def is_hot(self, member) -> bool:
        return member in self.hot

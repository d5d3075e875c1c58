"""The hot-spot detector (``base.hotspots``): peers, floor, hysteresis, caps, garbage."""

from __future__ import annotations

import math

import pytest

from base.hotspots import HotRule, HotSpots, median, peer_medians

RULE = HotRule("latency", factor=3.0, floor=0.02, clear_factor=1.5)


def test_flags_a_member_well_above_its_peers():
    d = HotSpots(RULE)
    c = d.update({"a": 0.010, "b": 0.012, "c": 0.100})
    assert c.hot == {"c"} and [m for m, *_ in c.flagged] == ["c"] and not c.cleared
    m, load, med = c.flagged[0]
    assert load == 0.100 and med == pytest.approx(0.011)


def test_floor_keeps_an_idle_group_quiet():
    d = HotSpots(RULE)  # 10x the peers, but 5 ms is below the 20 ms floor
    assert d.update({"a": 0.0005, "b": 0.0005, "c": 0.005}).hot == set()


def test_hysteresis_clears_only_well_below_the_line():
    d = HotSpots(RULE)
    assert d.update({"a": 0.01, "b": 0.01, "c": 0.05}).hot == {"c"}
    c = d.update({"a": 0.01, "b": 0.01, "c": 0.025})  # 2.5x: below 3x, above 1.5x: stays
    assert c.hot == {"c"} and not c.flagged and not c.cleared
    c = d.update({"a": 0.01, "b": 0.01, "c": 0.014})  # 1.4x: clears
    assert c.hot == set() and [m for m, *_ in c.cleared] == ["c"]
    assert d.update({"a": 0.01, "b": 0.01, "c": 0.025}).hot == set()  # 2.5x: not again yet


def test_clear_floor():
    d = HotSpots(HotRule("q", factor=2.0, floor=10, clear_factor=1.2, clear_floor=4))
    assert d.update({"a": 1, "b": 1, "c": 12}).hot == {"c"}
    assert d.update({"a": 1, "b": 1, "c": 5}).hot == {"c"}  # 5x still, above clear_floor 4
    assert d.update({"a": 1, "b": 1, "c": 4}).hot == set()  # at the clear floor: clears


def test_peers_required():
    d = HotSpots(HotRule("x", factor=2.0, peers_min=2))
    assert d.update({"a": 1.0, "b": 100.0}).hot == set()  # one peer each: too few
    assert d.update({"a": 1.0, "b": 1.0, "c": 100.0}).hot == {"c"}
    assert d.update({"c": 100.0}).hot == set()  # alone now: cleared
    assert HotSpots(HotRule("y", factor=2.0)).update({"a": 1.0, "b": 100.0}).hot == {"b"}


def test_members_that_leave_are_cleared():
    d = HotSpots(RULE)
    d.update({"a": 0.01, "b": 0.01, "c": 0.5})
    c = d.update({"a": 0.01, "b": 0.01})
    assert c.hot == set() and c.cleared == [("c", None, None)]


def test_at_most_a_share_of_the_group_is_hot():
    d = HotSpots(HotRule("cpu", factor=2.0, hot_share_max=0.25))
    loads = {f"n{i}": 0.1 for i in range(8)} | {"x": 0.9, "y": 0.5, "z": 0.6}
    assert d.update(loads).hot == {"x", "z"}  # 11 members: 2 may be hot, the hottest


def test_garbage_loads_are_ignored_not_trusted():
    d = HotSpots(RULE)
    c = d.update({"a": 0.01, "b": 0.01, "c": float("nan"), "d": -1, "e": True, "f": "9",
                  "g": math.inf, "h": 0.5})
    assert c.hot == {"h"} and c.ignored == ["c", "d", "e", "f", "g"]
    c = d.update({"a": 0.01, "b": 0.01, "h": float("nan")})  # unknown now: not kept hot
    assert c.hot == set()
    with pytest.raises(ValueError, match="mapping"):
        d.update([("a", 1.0)])


@pytest.mark.parametrize("kw, says", [
    ({"factor": 1.0}, "factor"), ({"factor": float("nan")}, "finite"),
    ({"clear_factor": 4.0}, "clear_factor"), ({"clear_factor": 0.5}, "clear_factor"),
    ({"floor": -1}, "floor"), ({"clear_floor": 5.0, "floor": 1.0}, "clear_floor"),
    ({"peers_min": 0}, "peers_min"), ({"hot_share_max": 0}, "hot_share_max"),
    ({"name": ""}, "name"), ({"factor": True}, "finite"),
])
def test_bad_rules_say_what_was_wrong(kw, says):
    with pytest.raises(ValueError, match=says):
        HotRule(**{"name": "r", **kw})


def test_peer_medians_exclude_the_member():
    assert median([3, 1, 2]) == 2 and median([1, 2, 3, 4]) == 2.5
    assert peer_medians({"a": 1.0, "b": 2.0, "c": 9.0}) == {"a": 5.5, "b": 5.0, "c": 1.5}
    big = {f"m{i}": 1.0 for i in range(300)} | {"hot": 50.0}
    d = HotSpots(HotRule("big", factor=3.0))
    assert d.update(big).hot == {"hot"}

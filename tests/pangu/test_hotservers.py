"""Hot chunkservers (``pangu.core.hotservers``) and what chunk placement does with them."""

from __future__ import annotations

import random

import pytest

from pangu.core.hotservers import HotServers
from pangu.core.placement import Server, choose
from pangu.errors import NotEnoughServers
from pangu.eventlog import EventLog
from pangu.fleet import HOT_SERVERS, HOT_SERVERS_CHECK_S, Fleet

GB = 1 << 30


def test_a_server_far_fuller_than_its_peers_is_flagged_with_hysteresis():
    h = HotServers()
    servers = [Server("a", "n1", 100 * GB, 40 * GB), Server("b", "n2", 100 * GB, 44 * GB),
               Server("c", "n3", 100 * GB, 90 * GB), Server("d", "n4", 100 * GB, 0, alive=False)]
    assert h.update(servers).hot == {"c"}  # 90% against 42%; d is dead: not judged
    servers[2] = Server("c", "n3", 100 * GB, 55 * GB)  # 1.3x the peers: stays hot
    assert h.update(servers).hot == {"c"}
    servers[2] = Server("c", "n3", 100 * GB, 48 * GB)  # below the 50% floor: clears
    assert h.update(servers).hot == frozenset()
    servers[2] = Server("c", "n3", 100 * GB, 55 * GB)  # 1.3x: not flagged again
    assert h.update(servers).hot == frozenset()
    quiet = [Server("a", "n1", 100, 10), Server("b", "n2", 100, 40)]  # 4x, but 40% full
    assert h.update(quiet).hot == frozenset()


def test_placement_uses_hot_servers_only_when_the_others_are_not_enough():
    rng = random.Random(5)
    servers = [Server("a", "n1", 100 * GB, 10 * GB), Server("b", "n2", 100 * GB, 10 * GB),
               Server("c", "n3", 100 * GB, 10 * GB, hot=True)]
    for _ in range(100):
        assert "c" not in choose(servers, 2, GB, rng)
    assert sorted(choose(servers, 3, GB, rng)) == ["a", "b", "c"]  # three nodes needed
    assert choose(servers, 1, GB, rng, exclude_nodes=["n1", "n2"]) == ["c"]
    with pytest.raises(NotEnoughServers, match="need 4"):
        choose(servers, 4, GB, rng)


def test_the_fleet_flags_on_heartbeats_records_an_event_and_placement_follows():
    log = EventLog("test")
    fleet = Fleet("pangu-test-hot", log, None, None)

    def rep(sid, used, node):
        return {"id": sid, "name": f"cs-{sid}", "node": node, "capacity_bytes": 100 * GB,
                "used_bytes": used, "chunks": {}}

    for i, (sid, used) in enumerate((("a", 20 * GB), ("b", 25 * GB), ("c", 95 * GB))):
        fleet.report(rep(sid, used, f"n{i}"), None, 100.0 + i * HOT_SERVERS_CHECK_S)
    assert fleet.hot.hot == {"c"}
    assert [k["kind"] for k in log.events if k["kind"].startswith("server_hot")] == ["server_hot"]
    assert {s.id: s.hot for s in fleet.as_servers()} == {"a": False, "b": False, "c": True}
    assert HOT_SERVERS.value() == 1
    rng = random.Random(1)
    assert all("c" not in choose(fleet.as_servers(), 2, GB, rng) for _ in range(50))
    fleet.report(rep("c", 22 * GB, "n2"), None, 200.0)  # emptied: back in line
    assert fleet.hot.hot == frozenset()
    assert log.events[-1]["kind"] == "server_hot_cleared"


def test_the_queue_meter_is_a_time_weighted_mean_of_calls_in_flight():
    from pangu.core.hotservers import QueueMeter

    q = QueueMeter(0.0)
    q.enter(0.0)
    q.enter(0.0)  # two in flight for 1 s, then one for 1 s
    q.leave(1.0)
    assert q.take(2.0) == pytest.approx(1.5)
    q.leave(2.0)
    assert q.take(4.0) == 0.0  # idle since the last take
    q.leave(4.0)  # more leaves than enters (a bug elsewhere) never go negative
    assert q.inflight == 0 and q.take(4.0) == 0.0  # no time passed: what is in flight now
    q.enter(5.0)
    assert q.take(5.0) == 0.0 and q.take(6.0) == 1.0


def test_a_server_with_a_long_queue_is_hot_until_it_drains():
    h = HotServers()

    def servers(qs):
        return [Server(sid, f"n{i}", 100 * GB, 10 * GB, queue=q)
                for i, (sid, q) in enumerate(zip("abc", qs))]

    ch = h.update(servers([0.1, 0.0, 0.94]))  # a crowd on c: busy 94 % of the time
    assert ch.hot == {"c"} and ch.flagged == [("c", 0.94, 0.05, "queue")] and h.signal["c"] == "queue"
    assert h.update(servers([0.1, 0.0, 0.3])).hot == {"c"}  # above the clear floor: stays
    ch = h.update(servers([0.1, 0.0, 0.2]))
    assert ch.hot == frozenset() and ch.cleared == [("c", None, None)]
    assert h.update(servers([0.0, 0.0, 0.45])).hot == frozenset()  # below the floor (0.5)
    assert h.update(servers([0.8, 0.7, 0.9])).hot == frozenset()  # all busy: nobody stands out
    # Garbage queues are ignored, never flag anything.
    ch = h.update(servers([0.0, float("nan"), -3.0]))
    assert ch.hot == frozenset() and sorted(ch.ignored) == ["b", "c"]


def test_a_garbage_queue_in_a_report_counts_as_none():
    log = EventLog("test")
    fleet = Fleet("pangu-test-hotq", log, None, None)
    for i, q in enumerate(("lots", float("inf"), 30.0, True)):
        fleet.report({"id": f"s{i}", "name": f"cs-{i}", "node": f"n{i}",
                      "capacity_bytes": 100 * GB, "used_bytes": GB, "chunks": {}, "queue": q},
                     None, 100.0 + i * HOT_SERVERS_CHECK_S)
    assert fleet.hot.hot == {"s2"}
    assert [e for e in log.events if e["kind"] == "server_hot"][0]["message"].startswith(
        "chunkserver s2 has 30.0 reads and writes in flight")
    assert {s["id"]: s["hot"] for s in fleet.status(110.0)}["s2"] == "queue"

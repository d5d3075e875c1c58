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

"""Pangu's pure cores: path syntax and replica placement (Hypothesis where it helps)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pangu.core import paths as P
from pangu.errors import BadPath, NotEnoughServers
from pangu.core.placement import Server, choose
from pangu.core.repair import ChunkInfo, excess_replicas, rebalance_plan, repair_plan

GiB = 1 << 30


@pytest.mark.parametrize("bad, why", [
    ("data/x", "relative"), ("", "relative"), ("/a//b", "empty component"),
    ("/a/../b", "'..'"), ("/a/./b", "'.'"), ("/a\nb", "control character"),
    ("/" + "x" * 300, "COMPONENT_BYTES_MAX"), (7, "a path is a str"),
])
def test_bad_paths_say_what_is_wrong(bad, why):
    with pytest.raises(BadPath, match=why):
        P.normalize(bad)


def test_paths_normalise_and_relate():
    assert P.normalize("/a/b/") == "/a/b" and P.normalize("/") == "/"
    assert P.parent("/a/b") == "/a" and P.parent("/a") == "/" and P.name("/a/b") == "b"
    assert P.is_under("/a/b", "/a") and not P.is_under("/ab", "/a") and P.is_under("/x", "/")


def cluster(nodes=5, per_node=2, cap=100 * GiB, used=None):
    used = used or {}
    return [Server(f"n{n}s{s}", f"n{n}", cap, used.get(f"n{n}s{s}", 0))
            for n in range(nodes) for s in range(per_node)]


@given(st.integers(0, 2**32), st.integers(1, 5))
def test_replicas_go_to_distinct_live_nodes_with_room(seed, n):
    servers = cluster(nodes=6)
    servers[0] = Server(servers[0].id, servers[0].node, GiB, GiB)  # full
    servers[3] = Server(servers[3].id, servers[3].node, 100 * GiB, alive=False)
    servers[5] = Server(servers[5].id, servers[5].node, 100 * GiB, draining=True)
    got = choose(servers, n, 64 << 20, random.Random(seed))
    by_id = {s.id: s for s in servers}
    assert len(got) == n and len({by_id[g].node for g in got}) == n
    assert not {servers[0].id, servers[3].id, servers[5].id} & set(got)
    assert got == choose(servers, n, 64 << 20, random.Random(seed))  # deterministic


def test_placement_refuses_clearly_and_can_fall_back_to_distinct_servers():
    servers = cluster(nodes=2, per_node=3)
    with pytest.raises(NotEnoughServers, match="need 3 .* only 2 node"):
        choose(servers, 3, 1, random.Random(0))
    got = choose(servers, 3, 1, random.Random(0), allow_same_node=True)
    assert len(set(got)) == 3


def test_placement_is_capacity_aware():
    servers = [Server("a", "na", 100 * GiB, 90 * GiB), Server("b", "nb", 100 * GiB, 10 * GiB)]
    rng = random.Random(1)
    picks = [choose(servers, 1, 1, rng)[0] for _ in range(2000)]
    assert 0.85 < picks.count("b") / len(picks) < 0.95  # 90 GiB free against 10 GiB


def test_repair_restores_the_most_endangered_first_within_the_budget():
    servers = cluster(nodes=5, per_node=1)
    dead = Server("n0s0", "n0", 100 * GiB, alive=False)
    servers[0] = dead
    chunks = {
        "c1": ChunkInfo(frozenset({"n0s0", "n1s0", "n2s0"}), 3, 64 << 20),  # 2 live of 3
        "c2": ChunkInfo(frozenset({"n0s0", "n1s0"}), 3, 64 << 20),           # 1 live of 3
        "c3": ChunkInfo(frozenset({"n0s0"}), 3, 64 << 20),                   # none: missing
        "c4": ChunkInfo(frozenset({"n1s0", "n2s0", "n3s0"}), 3, 64 << 20),   # healthy
    }
    plan, missing = repair_plan(chunks, servers, random.Random(0), budget_bytes=1 << 40)
    assert missing == ["c3"]
    assert [c.chunk for c in plan] == ["c2", "c2", "c1"]
    for c in plan:
        holders = {s.node for s in servers if s.id in chunks[c.chunk].replicas}
        assert c.source in chunks[c.chunk].replicas and c.source != "n0s0"
        assert c.dest.split("s")[0] not in holders
    plan, _ = repair_plan(chunks, servers, random.Random(0), budget_bytes=64 << 20)
    assert [c.chunk for c in plan] == ["c2", "c2"]  # the first chunk always goes; then the cap


def test_draining_replicas_do_not_count_and_are_copied_away():
    servers = cluster(nodes=4, per_node=1)
    servers[0] = Server("n0s0", "n0", 100 * GiB, draining=True)
    chunks = {"c": ChunkInfo(frozenset({"n0s0", "n1s0", "n2s0"}), 3, 1 << 20)}
    plan, missing = repair_plan(chunks, servers, random.Random(0), budget_bytes=1 << 40)
    assert not missing and [(c.chunk, c.dest) for c in plan] == [("c", "n3s0")]
    assert plan[0].source != "n0s0"  # copy from one that stays
    after = {"c": ChunkInfo(frozenset({"n0s0", "n1s0", "n2s0", "n3s0"}), 3, 1 << 20)}
    assert excess_replicas(after, servers) == [("c", "n0s0")]


def test_rebalance_moves_data_toward_even_use():
    servers = [Server("a", "na", 10 * GiB, 8 * GiB), Server("b", "nb", 10 * GiB, 8 * GiB),
               Server("c", "nc", 10 * GiB, 0)]  # a new, empty server joined
    chunks = {f"x{i}": ChunkInfo(frozenset({"a", "b"}), 2, GiB) for i in range(8)}
    plan = rebalance_plan(chunks, servers, random.Random(0), budget_bytes=1 << 40)
    assert plan and all(m.dest == "c" for m in plan)
    moved = {m.chunk for m in plan}
    assert len(moved) == len(plan)  # never two replicas of one chunk onto c
    used = {"a": 8, "b": 8, "c": 0}
    for m in plan:
        used[m.source] -= 1
        used[m.dest] += 1
    assert max(used.values()) - min(used.values()) <= 2

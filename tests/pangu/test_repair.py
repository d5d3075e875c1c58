"""pangu.core.repair: plain data in (the namespace's chunks, the servers' reports), a plan out.
Table-driven, with Hypothesis properties: a plan never puts two replicas of a chunk on one
node, never copies from a stale, dead or absent replica, and is the same for the same seed."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pangu.core.placement import Server
from pangu.core.repair import (ChunkInfo, ChunkState, FileChunks, chunk_infos, garbage, health,
                               plan)

GiB = 1 << 30
MiB = 1 << 20


def f(path, replication, *chunks):
    return FileChunks(path, replication, tuple(ChunkState(*c) for c in chunks))


def test_only_current_replicas_count():
    files = [f("/a", 3, ("c1", 2, 10), ("c2", 1, 0))]
    held = {"s1": {"c1": (2, 10)}, "s2": {"c1": (1, 10)}, "s3": {"c1": (3, 10), "c2": (1, 0)},
            "s4": {"zz": (1, 5)}}
    assert chunk_infos(files, held) == {
        "c1": ChunkInfo(frozenset({"s1", "s3"}), 3, 10),  # s2 is stale (version 1 < 2)
        "c2": ChunkInfo(frozenset({"s3"}), 3, 1)}         # an empty chunk still weighs a byte


LIVE = {"s1": {"c": (2, 1)}, "s2": {"c": (1, 1)}}


@pytest.mark.parametrize("server, held, versions, live, skip, deleted", [
    ("s9", {"x": (1, 1)}, {}, LIVE, (), [("x", 1)]),                 # of no file
    ("s2", {"c": (1, 1)}, {"c": 2}, LIVE, (), [("c", 1)]),           # stale, current on s1
    ("s2", {"c": (1, 1)}, {"c": 2}, {"s2": LIVE["s2"]}, (), []),     # stale, the only copy
    ("s1", {"c": (2, 1)}, {"c": 2}, LIVE, (), []),                   # current
    ("s1", {"c": (3, 1)}, {"c": 2}, LIVE, (), []),                   # newer than the namespace
    ("s9", {"x": (1, 1)}, {}, LIVE, {"x"}, []),                      # being changed: left alone
    ("s2", {"c": (1, 1)}, {"c": 2}, {"s2": LIVE["s2"], "s3": {"c": (1, 1)}}, (), []),
])
def test_garbage_is_unreferenced_or_stale_with_a_current_copy_elsewhere(
        server, held, versions, live, skip, deleted):
    assert garbage(server, held, versions, live, skip) == deleted


def servers(n_nodes=4, **flags):
    out = [Server(f"s{i}", f"n{i}", 100 * GiB) for i in range(n_nodes)]
    for sid, kw in flags.items():
        i = int(sid[1:])
        out[i] = Server(sid, f"n{i}", 100 * GiB, kw.get("used", 0), kw.get("alive", True),
                        kw.get("draining", False))
    return out


@pytest.mark.parametrize("chunks, fleet, want", [
    # under-replicated: copies, and nothing else this round
    ({"c": ChunkInfo(frozenset({"s0", "s1"}), 3, MiB)}, servers(4),
     {"copies": 1, "excess": 0, "moves": 0, "missing": []}),
    # over-replicated, nothing to repair: drop one
    ({"c": ChunkInfo(frozenset({"s0", "s1", "s2", "s3"}), 3, MiB)}, servers(4),
     {"copies": 0, "excess": 1, "moves": 0, "missing": []}),
    # healthy but uneven: move
    ({f"x{i}": ChunkInfo(frozenset({"s0"}), 1, GiB) for i in range(20)},
     servers(2, s0={"used": 40 * GiB}), {"copies": 0, "excess": 0, "moves": 1, "missing": []}),
    # no live copy: missing, nothing to copy
    ({"c": ChunkInfo(frozenset({"s0"}), 3, MiB)}, servers(4, s0={"alive": False}),
     {"copies": 0, "excess": 0, "moves": 0, "missing": ["c"]}),
])
def test_a_round_repairs_first_then_drops_then_moves(chunks, fleet, want):
    p = plan(chunks, fleet, random.Random(15), budget_bytes=GiB)
    got = {"copies": len(p.copies), "excess": len(p.excess), "moves": min(len(p.moves), 1),
           "missing": p.missing}
    assert got == want


def test_skipped_chunks_are_not_planned():
    chunks = {"c": ChunkInfo(frozenset({"s0"}), 3, MiB), "d": ChunkInfo(frozenset({"s0"}), 3, MiB)}
    p = plan(chunks, servers(4), random.Random(15), budget_bytes=GiB, skip={"c"})
    assert {c.chunk for c in p.copies} == {"d"}


def test_rebalance_can_be_off():
    chunks = {f"x{i}": ChunkInfo(frozenset({"s0"}), 1, GiB) for i in range(20)}
    p = plan(chunks, servers(2, s0={"used": 20 * GiB}), random.Random(15), budget_bytes=GiB,
             rebalance=False)
    assert p.moves == []


def test_health_reports_what_fsck_shows():
    files = [f("/d/ok", 2, ("a", 1, 5)), f("/d/under", 2, ("b", 1, 5)),
             f("/d/missing", 2, ("c", 1, 5)), f("/d/stale", 2, ("e", 2, 5)),
             f("/d/empty", 2, ("g", 1, 0)), f("/elsewhere", 2, ("h", 1, 5))]
    live = {"s1": {"a": (1, 5), "b": (1, 5), "e": (1, 5)}, "s2": {"a": (1, 5)}}
    r = health(files, live, "/d")
    assert (r["files"], r["chunks"]) == (5, 5)
    assert r["under_replicated"] == [{"path": "/d/under", "chunk": "b", "live": 1, "target": 2}]
    assert r["missing"] == [{"path": "/d/missing", "chunk": "c", "version": 1}]
    assert r["stale_only"] == [{"path": "/d/stale", "chunk": "e", "version": 2}]


# ---------------------------------------------------------------- properties

@st.composite
def clusters(draw):
    n_nodes = draw(st.integers(1, 5))
    fleet = []
    for n in range(n_nodes):
        for k in range(draw(st.integers(1, 2))):
            fleet.append(Server(f"n{n}s{k}", f"n{n}", draw(st.sampled_from([4, 64])) * MiB,
                                draw(st.integers(0, 4)) * MiB, draw(st.booleans()),
                                draw(st.integers(0, 4)) == 0))
    files, held = [], {s.id: {} for s in fleet}
    for i in range(draw(st.integers(1, 8))):
        version = draw(st.integers(1, 3))
        cid = f"c{i}"
        files.append(f(f"/f{i}", draw(st.integers(1, 3)), (cid, version, MiB)))
        for s in draw(st.lists(st.sampled_from([s.id for s in fleet]), unique=True,
                               max_size=4)):
            held[s][cid] = (draw(st.integers(1, 3)), MiB)  # some current, some stale
    return fleet, files, held


@settings(max_examples=300, deadline=None)
@given(clusters(), st.integers(0, 2**32), st.sampled_from([MiB, 4 * MiB, GiB]))
def test_a_plan_never_doubles_a_node_nor_copies_from_a_stale_replica(cluster, seed, budget):
    fleet, files, held = cluster
    by_id = {s.id: s for s in fleet}
    versions = {c.id: c.version for fc in files for c in fc.chunks}
    infos = chunk_infos(files, held)
    p = plan(infos, fleet, random.Random(seed), budget_bytes=budget)
    assert p == plan(infos, fleet, random.Random(seed), budget_bytes=budget)  # the seed decides
    dests: dict[str, list[str]] = {}
    for c in p.copies:
        src, dest = by_id[c.source], by_id[c.dest]
        assert c.chunk in held[c.source] and held[c.source][c.chunk][0] >= versions[c.chunk]
        assert src.alive and dest.alive and not dest.draining
        dests.setdefault(c.chunk, []).append(c.dest)
    for cid, ds in dests.items():
        live_nodes = {by_id[r].node for r in infos[cid].replicas if by_id[r].alive}
        new_nodes = [by_id[d].node for d in ds]
        assert len(set(new_nodes)) == len(new_nodes), "two new replicas on one node"
        assert not live_nodes & set(new_nodes), "a new replica beside a live one"
    for cid, sid in p.excess:
        assert sid in infos[cid].replicas
        left = [r for r in infos[cid].replicas if by_id[r].alive and (cid, r) not in p.excess]
        assert len(left) >= infos[cid].target  # never below the factor
    holders = {cid: set(i.replicas) for cid, i in infos.items()}
    for m in p.moves:
        assert m.source in holders[m.chunk]
        assert by_id[m.dest].node not in {by_id[r].node for r in holders[m.chunk]}
        holders[m.chunk] = (holders[m.chunk] - {m.source}) | {m.dest}
    assert not {c.chunk for c in p.copies} & set(p.missing)

"""Watch delivery when one command makes several events at one revision (issue 14, defect 12).

A txn, a recursive delete and a session close each change several nodes at one revision.
Every event carries its position (revision, index); a watcher delivers each event exactly
once, in order, and resumes at a position -- also in the middle of a revision's events.

Three tiers, none with Ray: the tree's history and ``events_since(..., index=)``; a
Hypothesis simulation of the watch wire (the real server watch functions, the real client
``_Watch``, frames dropped by disconnects, replayed by lagging leaders, split into small
messages); and a real 3-replica group in this process (sockets, WAL, the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nuwa.core import commands as C
from nuwa import errors as E
from nuwa.client import AsyncNuwa, _Watch
from nuwa.io.server import ReplicaServer, ServerConfig
from nuwa.core.tree import Tree, TreeLimits
from tests.nuwa.test_group_local import LocalGroup

pytestmark = pytest.mark.timeout(120)


def _three_creates(t: Tree) -> int:
    t.apply(C.create("/w/", creator="u"))
    r = t.apply(C.txn(*(C.create(f"/w/{n}", b"v", creator="u") for n in "abc")))
    assert "error" not in r
    return r["revision"]


# ------------------------------------------------------------------ the tree


def test_events_of_one_revision_are_numbered_and_resumable_by_index():
    t = Tree()
    rev = _three_creates(t)
    evs = t.events_since(rev - 1, "/w/", recursive=True)
    assert [(e.revision, e.index, e.path) for e in evs] == [
        (rev, 0, "/w/a"), (rev, 1, "/w/b"), (rev, 2, "/w/c")]
    assert [e.path for e in t.events_since(rev, "/w/", True, index=0)] == ["/w/b", "/w/c"]
    assert [e.path for e in t.events_since(rev, "/w/", True, index=2)] == []
    assert t.events_since(rev, "/w/", True) == []  # no index: the whole revision was seen
    assert evs[1].to_dict()["index"] == 1
    with pytest.raises(E.BadRequest, match="index"):
        t.events_since(rev, "/w/", True, index=-1)
    with pytest.raises(E.BadRequest, match="index"):
        t.events_since(rev, "/w/", True, index="0")


def test_indexes_survive_a_snapshot_and_compaction_is_exact_at_the_floor():
    t = Tree(TreeLimits(watch_history_max=4))
    rev = _three_creates(t)  # /w/ at rev-1, then a, b, c at rev
    t.apply(C.create("/w/d", creator="u"))
    t.apply(C.create("/w/e", creator="u"))  # 6 events > 4: rev-1 and then rev are dropped
    assert t.history_floor == rev
    # A watcher that delivered all of rev resumes; one cut off inside it is told Compacted.
    assert [e.path for e in t.events_since(rev, "/w/", True, index=2)] == ["/w/d", "/w/e"]
    with pytest.raises(E.Compacted):
        t.events_since(rev, "/w/", True, index=1)
    u = Tree()
    _three_creates(u)
    u.apply(C.delete("/w/", recursive=True))
    restored = Tree.restore(u.snapshot())
    assert [(e.revision, e.index) for e in restored.events_since(0, "/", True)] == \
        [(e.revision, e.index) for e in u.events_since(0, "/", True)]
    assert restored.validate_state() == []


# ------------------------------------------------------------------ the wire, simulated


class _FakeConn:
    """The server side of one client connection: what it sent, not yet read."""

    def __init__(self):
        self.frames: list[dict] = []
        self.who = None
        self.writer = types.SimpleNamespace(close=lambda: None)

    def send(self, msg: dict) -> None:
        self.frames.append(msg)


_PATHS = ["/w/a", "/w/b", "/w/sub/x", "/w/sub/y", "/w/sub/deep/z", "/x/q"]
_cmd = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(_PATHS)),
    st.tuples(st.just("set"), st.sampled_from(_PATHS)),
    st.tuples(st.just("rmtree"), st.sampled_from(["/w/sub/", "/w/", "/x/"])),
    st.tuples(st.just("txn"), st.lists(st.sampled_from(_PATHS), min_size=2, max_size=5)),
    st.tuples(st.just("session"), st.lists(st.sampled_from(_PATHS), min_size=1, max_size=4)),
)
_fault = st.sampled_from(["none", "none", "deliver_some", "disconnect", "replay"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(_cmd, _fault, st.integers(0, 4)), min_size=1, max_size=25),
       per_frame=st.integers(1, 3))
def test_watcher_delivers_exactly_the_history_under_disconnects_and_replays(tmp_path, steps,
                                                                         per_frame):
    """Property: whatever the commands and the faults, the events a recursive watcher on
    /w/ delivers are exactly the tree's history under /w/, in order, each once."""
    srv = ReplicaServer(1, [1], str(tmp_path / "r"),
                        ServerConfig(watch_events_per_frame_max=per_frame))
    srv.tree.apply(C.create("/w/", creator="u"))
    srv.tree.apply(C.create("/x/", creator="u"))
    start = srv.tree.revision
    client = types.SimpleNamespace(_watches={}, _early={})
    w = _Watch(client, "/w/", True, start)
    got: list[dict] = []
    conn = _FakeConn()
    srv.watches.watch(conn, {"path": "/w/", "recursive": True, "from_revision": start})
    read_frames: list[dict] = []  # every frame delivered so far, for replays
    sid = 1000

    def read(n: int | None = None) -> None:
        frames = list(conn.frames if n is None else conn.frames[:n])
        del conn.frames[:len(frames)]
        for f in frames:
            w.deliver(f)
        read_frames.extend(frames)

    for (kind, arg), fault, n in steps:
        before = srv.tree.revision
        if kind == "create":
            cmd = C.create(arg, b"c", creator="u", parents=True)
        elif kind == "set":
            cmd = C.set_value(arg, b"s")
        elif kind == "rmtree":
            cmd = C.delete(arg, recursive=True)
        elif kind == "txn":
            cmd = C.txn(*(C.set_value(p, b"t") if srv.tree.exists(p)
                          else C.create(p, b"t", creator="u", parents=True) for p in dict.fromkeys(arg)))
        else:
            sid += 1
            srv.tree.apply(C.session_open(sid, 5.0, "u"))
            for p in arg:
                srv.tree.apply(C.create(p, b"e", creator="u", ephemeral_session=sid, parents=True))
            srv.watches.notify(before)
            before = srv.tree.revision
            cmd = C.session_close(sid, "expired")
        srv.tree.apply(cmd)
        if srv.tree.revision != before:
            srv.watches.notify(before)
        if fault == "deliver_some":
            read(n)
        elif fault == "disconnect":
            read(n)  # some frames arrived, the rest die with the connection
            srv.watches.watchers.clear()
            conn = _FakeConn()
            rev, idx = w.position
            req = {"path": "/w/", "recursive": True, "from_revision": rev}
            if idx is not None:
                req["from_index"] = idx
            srv.watches.watch(conn, req)
        elif fault == "replay":
            # A lagging new leader resends (on a new connection) what the watcher already has.
            read()
            for f in read_frames[-(n + 1):]:
                w.deliver(f)
    read()
    while not w.queue.empty():
        got.append(w.queue.get_nowait())
    want = [e.to_dict() for e in srv.tree.events_since(start, "/w/", recursive=True)]
    assert [(e["revision"], e["index"], e["type"], e["path"]) for e in got] == \
        [(e["revision"], e["index"], e["type"], e["path"]) for e in want]


# ------------------------------------------------------------------ a real group, no Ray


class _Group(LocalGroup):
    def __init__(self, tmp_path, cfg: ServerConfig):
        super().__init__(tmp_path)
        self.cfg = cfg

    async def start(self, rid: int, rejoin: bool = False) -> None:
        s = ReplicaServer(rid, self.ids, str(self.tmp / f"r{rid}"), self.cfg, seed=rid,
                          rejoin=rejoin)
        self.addresses[rid] = ("127.0.0.1", await s.start("127.0.0.1"))
        self.servers[rid] = s


def _run(tmp_path, body, cfg: ServerConfig = ServerConfig(snapshot_every_entries=200)):
    async def main():
        g = _Group(tmp_path, cfg)
        await g.start_all()
        try:
            await g.leader()
            clients = [AsyncNuwa(list(g.addresses.values()), timeout_s=5) for _ in range(2)]
            try:
                await body(g, *clients)
            finally:
                for c in clients:
                    with contextlib.suppress(Exception):
                        await c.close()
        finally:
            await g.close()
    asyncio.run(asyncio.wait_for(main(), 100))


async def _drain(w, n: int, timeout_s: float = 5.0) -> list[dict]:
    evs = [await w.next(timeout_s) for _ in range(n)]
    with pytest.raises(asyncio.TimeoutError):  # and nothing more (no duplicate)
        await w.next(0.3)
    return evs


def test_a_txn_of_three_creates_delivers_three_events(tmp_path):
    async def body(g, writer, reader):
        await writer.create("/w/", parents=True)
        w = await reader.watch("/w/", recursive=True)
        await writer.txn([C.create(f"/w/{n}", b"v", creator="x") for n in "abc"])
        evs = await _drain(w, 3)
        assert [(e["type"], e["path"]) for e in evs] == [("created", f"/w/{n}") for n in "abc"]
        assert len({e["revision"] for e in evs}) == 1 and [e["index"] for e in evs] == [0, 1, 2]
    _run(tmp_path, body)


def test_a_recursive_delete_delivers_every_delete(tmp_path):
    async def body(g, writer, reader):
        names = ["/t/a", "/t/b/c", "/t/b/d", "/t/e/f/g"]
        for p in names:
            await writer.create(p, b"", parents=True)
        w = await reader.watch("/t/", recursive=True)
        await writer.delete("/t/", recursive=True)
        evs = await _drain(w, 8)  # 4 files, 3 directories below /t/, and /t/ itself
        assert {e["type"] for e in evs} == {"deleted"}
        assert sorted(e["path"] for e in evs) == sorted(
            names + ["/t/b/", "/t/e/", "/t/e/f/", "/t/"])
    _run(tmp_path, body)


def test_a_session_expiry_delivers_the_delete_of_every_ephemeral(tmp_path):
    async def body(g, owner, reader):
        await owner.create("/eph/", parents=True)
        s = await owner.session(ttl_s=1.0)
        for n in "abcd":
            await owner.create(f"/eph/{n}", b"", ephemeral=True, session=s)
        w = await reader.watch("/eph/")
        s._task.cancel()  # stop keeping it alive, as a crashed client would
        evs = await _drain(w, 4, timeout_s=10)
        assert [(e["type"], e["path"]) for e in evs] == [("deleted", f"/eph/{n}") for n in "abcd"]
    _run(tmp_path, body)


def test_a_reconnect_in_the_middle_of_a_revision_resumes_without_loss_or_duplicates(tmp_path):
    """One event per message, and the watcher's connection is cut right after the second
    event of a 4-event txn (the rest of the frames die with it): it resubscribes from
    (revision, 1) and gets exactly the last two."""
    cut = {"after": None}

    async def body(g, writer, reader):
        await writer.create("/m/", parents=True)
        w = await reader.watch("/m/")
        real = w.deliver

        def deliver(msg):
            real(msg)
            if cut["after"] is not None and w.position == cut["after"]:
                cut["after"] = None
                reader.conn.close()  # drop the connection: buffered frames are lost

        w.deliver = deliver
        rev2 = g.servers[await g.leader()].tree.revision + 1
        cut["after"] = (rev2, 1)
        await writer.txn([C.create(f"/m/n{i}", b"", creator="x") for i in range(4)])
        evs = await _drain(w, 4)
        assert [(e["revision"], e["index"], e["path"]) for e in evs] == [
            (rev2, i, f"/m/n{i}") for i in range(4)]
        assert cut["after"] is None, "the connection was cut mid-revision"
    _run(tmp_path, body, ServerConfig(snapshot_every_entries=200, watch_events_per_frame_max=1))


def test_watch_position_resumes_a_new_watch_exactly(tmp_path):
    async def body(g, writer, reader):
        await writer.create("/p/", parents=True)
        rev = (await writer.txn([C.create(f"/p/{n}", b"", creator="x") for n in "abc"]))[
            "revision"]
        w = await reader.watch("/p/", from_revision=rev, from_index=0)
        evs = await _drain(w, 2)
        assert [e["path"] for e in evs] == ["/p/b", "/p/c"] and w.position == (rev, 2)
        for bad in ({"from_revision": "x"}, {"from_revision": -1},
                    {"from_revision": rev, "from_index": -1},
                    {"from_revision": rev, "from_index": True},
                    {"from_revision": rev, "from_index": "0"}):
            with pytest.raises(E.BadRequest):  # typed, never an internal error
                await reader.watch("/p/", **bad)
        with pytest.raises(E.BadRequest):
            await reader._call({"op": "watch", "path": 7}, False)
    _run(tmp_path, body)

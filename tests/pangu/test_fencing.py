"""Defect 16 (issue 14): Pangu writes carry a Nuwa lock's fencing token and a token older than
the newest seen for its lock is refused -- in the namespace core, in the master (every
mutating call), and after the master restarts from its journal (with and without a
checkpoint in between)."""

from __future__ import annotations

import asyncio

import pytest

from pangu import errors as PE
from pangu.core import fencing as F
from pangu.core.namespace import Namespace
from tests.pangu.master_inproc import Cluster, stop

LOCK = "/locks/report/"
APP = [("pangu", "/", "user:app", ["admin"])]  # the writers' account may do anything


def test_table_refuses_older_tokens_and_is_bounded():
    t = F.FencingTable(limit=3)
    t.check(LOCK, 5)
    t.record(LOCK, 5)
    t.check(LOCK, 5)  # the holder itself, again
    with pytest.raises(PE.StaleFencingToken):
        t.check(LOCK, 4)
    for i, lock in enumerate(("/a", "/b", "/c")):
        t.record(lock, 10 + i)
    assert len(t.newest) == 3 and LOCK not in t.newest and t.floor == 5
    with pytest.raises(PE.StaleFencingToken):  # forgotten, but below the floor: refused
        t.check(LOCK, 4)
    t.check(LOCK, 5)
    restored = F.FencingTable.restore(t.snapshot(), limit=3)
    assert restored.newest == t.newest and restored.floor == t.floor


@pytest.mark.parametrize("bad", [5, "x", ("/l",), ("/l", 1, 2), ("l", 1), ("/", 1),
                                 ("/l", 0), ("/l", -1), ("/l", 2 ** 63), ("/l", True),
                                 ("/l", 1.5), ("/l", "1"), ("/l\x00", 1),
                                 ("/" + "l" * 2000, 1), {"lock": "/l"}])
def test_malformed_fencing_is_a_typed_error(bad):
    with pytest.raises(PE.BadRequest):
        F.parse(bad)


def test_namespace_refuses_a_stale_command_and_changes_nothing():
    ns = Namespace()
    ns.apply({"op": "mkdir", "path": "/d", "owner": "a", "fencing": [LOCK, 7]})
    before = ns.snapshot()
    for cmd in ({"op": "create", "path": "/d/f", "owner": "a"},
                {"op": "delete", "path": "/d", "recursive": True},
                {"op": "rename", "src": "/d", "dst": "/e"},
                {"op": "mkdir", "path": "/d2", "owner": "a"},
                {"op": "fence"}):
        with pytest.raises(PE.StaleFencingToken):
            ns.apply(dict(cmd, fencing=[LOCK, 6]))
    assert ns.snapshot() == before
    # A failed command with a newer token does not record it either.
    with pytest.raises(PE.NotFound):
        ns.apply({"op": "delete", "path": "/nope", "fencing": [LOCK, 9]})
    assert ns.fencing.newest[LOCK] == 7
    assert Namespace.restore(ns.snapshot()).fencing.newest == {LOCK: 7}


@pytest.mark.parametrize("checkpoint_every", [1000, 2])
def test_the_older_holder_is_refused_also_after_a_master_restart(tmp_path, checkpoint_every):
    """Writer A holds the lock with token 5 and has the file open; the lock passes to B
    (token 9), who opens the file (taking A's writer lease over) and writes; every write of A
    is refused, before and after the master restarts, and the file holds B's data only."""
    async def go():
        c = Cluster(str(tmp_path), APP, settings={"checkpoint_every": checkpoint_every})
        m = await c.master()
        tok = c.token("app")
        a, b = [LOCK, 5], [LOCK, 9]
        await m.open_write("/f", "w", "wa", chunk_size=64 * 1024, cred=tok, fencing=a)
        cid_a = (await m.mastership.mutate({"op": "add_chunk", "path": "/f"}))["chunk"]
        await m.commit("/f", "wa", cid_a, 1, 10, cred=tok, fencing=a)
        # B takes the lock later and opens the file while A's lease is still held.
        await m.open_write("/f", "w", "wb", chunk_size=64 * 1024, cred=tok, fencing=b)
        cid_b = (await m.mastership.mutate({"op": "add_chunk", "path": "/f"}))["chunk"]
        await m.commit("/f", "wb", cid_b, 1, 20, cred=tok, fencing=b)

        async def a_is_refused(m):
            for coro in (m.commit("/f", "wa", cid_b, 1, 30, cred=tok, fencing=a),
                         m.renew_lease("/f", "wa", cid_b, cred=tok, fencing=a),
                         m.write_failed("/f", "wa", cid_b, 1, [], cred=tok, fencing=a),
                         m.chunk_for_write("/f", "wa", 1, cred=tok, fencing=a),
                         m.open_write("/f", "a", "wa", cred=tok, fencing=a),
                         m.open_write("/g", "w", "wa", cred=tok, fencing=a),
                         m.truncate("/f", 0, cred=tok, fencing=a),
                         m.delete("/f", cred=tok, fencing=a),
                         m.rename("/f", "/h", cred=tok, fencing=a),
                         m.mkdir("/k", cred=tok, fencing=a)):
                with pytest.raises(PE.StaleFencingToken):
                    await coro
            st = m.mastership.ns.snapshot()["nodes"]
            assert st["/f"]["chunks"] == [[cid_b, 1, 20]] and "/g" not in st
        await a_is_refused(m)
        await m.close_write("/f", "wb", cred=tok)
        await stop(m)
        m2 = await c.master()  # a new master process: the journal (and checkpoint) only
        try:
            assert m2.mastership.ns.fencing.newest == {LOCK: 9}
            await a_is_refused(m2)
            await m2.open_write("/f", "a", "wb2", cred=tok, fencing=b)  # B goes on
        finally:
            await stop(m2)
    asyncio.run(go())


def test_a_newer_token_seen_on_a_lease_alone_is_journaled(tmp_path):
    """A token first seen on a call that changes nothing else (appending to an existing
    file) is made durable before the call answers: a restart does not forget it."""
    async def go():
        c = Cluster(str(tmp_path), APP)
        m = await c.master()
        tok = c.token("app")
        await m.open_write("/f", "w", "w1", cred=tok)
        await m.close_write("/f", "w1", cred=tok)
        await m.open_write("/f", "a", "w2", cred=tok, fencing=[LOCK, 12])
        await stop(m)
        m2 = await c.master()
        try:
            with pytest.raises(PE.StaleFencingToken):
                await m2.open_write("/f", "a", "w3", cred=tok, fencing=[LOCK, 11])
        finally:
            await stop(m2)
    asyncio.run(go())


def test_without_a_newer_token_the_lease_is_not_taken_over(tmp_path):
    async def go():
        c = Cluster(str(tmp_path), APP)
        m = await c.master()
        tok = c.token("app")
        try:
            await m.open_write("/f", "w", "w1", cred=tok, fencing=[LOCK, 5])
            for fence in (None, [LOCK, 5], ["/locks/other/", 99]):
                with pytest.raises(PE.Busy):
                    await m.open_write("/f", "a", "w2", cred=tok, fencing=fence)
        finally:
            await stop(m)
    asyncio.run(go())


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["/a", "/b", "/c", "/d", "/e"]),
                          st.integers(1, 40)), max_size=60), st.integers(1, 4))
def test_the_bounded_table_never_allows_what_an_unbounded_one_refuses(ops, limit):
    """Safety of the bound: whatever it forgets, the table refuses every token older than
    the newest seen for its lock (it may refuse more, never less)."""
    t, model = F.FencingTable(limit=limit), {}
    for lock, token in ops:
        stale = token < model.get(lock, 0)
        try:
            t.check(lock, token)
        except PE.StaleFencingToken:
            continue
        assert not stale, f"token {token} of {lock} allowed; newest seen {model[lock]}"
        t.record(lock, token)
        model[lock] = max(model.get(lock, 0), token)
        assert len(t.newest) <= limit

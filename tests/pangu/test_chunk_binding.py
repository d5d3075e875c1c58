"""Defect 13 (issue 14): a chunk operation acts only on chunks of the file the caller was
authorized for. A user who may read file X (so ``locate`` tells them X's chunk ids, and ids
are sequential anyway) and write file Y tries every chunk operation on X's chunks through Y,
and through X itself: all refused with a typed error, X byte-for-byte unchanged (its record,
the journal), no lease or event about X's chunks."""

from __future__ import annotations

import asyncio

import pytest

from pangu import errors as PE
from tests.pangu.master_inproc import Cluster, stop

GRANTS = [("pangu", "/x", "user:dave", ["read"]),
          ("pangu", "/y", "user:dave", ["read", "write", "create", "delete"])]


def run(coro):
    return asyncio.run(coro)


async def _setup(tmp_path):
    c = Cluster(str(tmp_path), GRANTS)
    m = await c.master()
    carol, dave = c.token("carol", ["admins"]), c.token("dave")
    # Carol writes X: two full chunks and a partial one (chunk_size 64 KiB).
    await m.open_write("/x", "w", "wx", chunk_size=64 * 1024, cred=carol)
    for i, length in enumerate((64 * 1024, 64 * 1024, 100)):
        cid = (await m.mastership.mutate({"op": "add_chunk", "path": "/x"}))["chunk"]
        await m.commit("/x", "wx", cid, 1, length, cred=carol)
    await m.close_write("/x", "wx", cred=carol)
    await m.open_write("/y", "w", "wy", chunk_size=64 * 1024, cred=dave)
    return c, m, carol, dave


def _x(m) -> dict:
    return m.mastership.ns.snapshot()["nodes"]["/x"]


def test_every_chunk_op_on_another_files_chunk_is_refused(tmp_path):
    async def go():
        c, m, carol, dave = await _setup(tmp_path)
        try:
            info = await m.locate("/x", cred=dave)  # read access: the ids are no secret
            ids = [ch["id"] for ch in info["chunks"]]
            before, seq = _x(m), m.mastership.journal.seq
            attempts = []
            for cid in ids:
                attempts += [
                    ("renew via Y", m.renew_lease("/y", "wy", cid, cred=dave)),
                    ("write_failed via Y", m.write_failed("/y", "wy", cid, 1, [], cred=dave)),
                    ("commit via Y", m.commit("/y", "wy", cid, 1, 64 * 1024, cred=dave)),
                    ("commit via Y, old version", m.commit("/y", "wy", cid, 1, 100,
                                                           cred=dave)),
                    ("renew via X", m.renew_lease("/x", "wy", cid, cred=dave)),
                    ("write_failed via X", m.write_failed("/x", "wy", cid, 1, ["cs"],
                                                          cred=dave)),
                    ("commit via X", m.commit("/x", "wy", cid, 1, 64 * 1024, cred=dave)),
                ]
            attempts += [
                ("chunk_for_write X", m.chunk_for_write("/x", "wy", 0, cred=dave)),
                ("truncate X", m.truncate("/x", 0, cred=dave)),
                ("open X for append", m.open_write("/x", "a", "wy", cred=dave)),
                ("delete X", m.delete("/x", cred=dave)),
                ("rename X", m.rename("/x", "/y/x", cred=dave)),
            ]
            for what, coro in attempts:
                with pytest.raises((PE.Denied, PE.BadRequest)) as e:
                    await coro
                assert "Denied" in type(e.value).__name__ or "chunk" in str(e.value), what
            assert _x(m) == before, "file X changed"
            assert m.mastership.journal.seq == seq, "something was journaled"
            assert not set(ids) & set(m.leases.chunks), "a lease on X's chunk was granted"
            assert not [ev for ev in m.events if any(i in ev["message"] for i in ids)]
        finally:
            await stop(m)
    run(go())


def test_chunk_ids_of_no_file_and_malformed_are_typed_errors(tmp_path):
    async def go():
        c, m, carol, dave = await _setup(tmp_path)
        try:
            before = m.mastership.ns.snapshot()
            for cid in ("c999999999999", "", "x" * 10_000, None, 7, ["c000000000001"],
                        {"id": "c000000000001"}):
                for coro in (m.renew_lease("/y", "wy", cid, cred=dave),
                             m.commit("/y", "wy", cid, 1, 1, cred=dave),
                             m.write_failed("/y", "wy", cid, 1, [], cred=dave)):
                    with pytest.raises((PE.Denied, PE.BadRequest)):
                        await coro
            for bad in (None, "cs", [1], ["x"] * 100, [["a"]]):
                with pytest.raises(PE.BadRequest):
                    await m.write_failed("/y", "wy", "c000000000001", 1, bad, cred=dave)
            for index in ("0", 0.0, None, True):
                with pytest.raises(PE.BadRequest):
                    await m.chunk_for_write("/y", "wy", index, cred=dave)
            for writer in (None, "", "w" * 1000, 5):
                with pytest.raises(PE.BadRequest):
                    await m.open_write("/y", "a", writer, cred=dave)
            assert m.mastership.ns.snapshot() == before
        finally:
            await stop(m)
    run(go())


def test_a_writer_id_is_bound_to_its_user(tmp_path):
    """Another user who learns a writer's id cannot close its lease or act as it."""
    async def go():
        c, m, carol, dave = await _setup(tmp_path)
        try:
            await m.open_write("/x", "a", "wx2", cred=carol)
            held = m.leases.files["/x"]
            await m.close_write("/x", "wx2", cred=dave)
            assert m.leases.files["/x"] == held, "another user closed carol's writer lease"
            # Dave, even granted write on Y, is not carol's writer on Y.
            await m.close_write("/y", "wy", cred=dave)
            await m.open_write("/y", "a", "wy", cred=dave)
            with pytest.raises(PE.Busy):
                await m.open_write("/y", "a", "wy", cred=c.token("erin", ["admins"]))
        finally:
            await stop(m)
    run(go())


def test_a_chunk_access_token_is_not_a_credential(tmp_path):
    async def go():
        c, m, carol, dave = await _setup(tmp_path)
        try:
            tok = (await m.locate("/x", cred=dave))["chunks"][0]["access"]
            for coro in (m.stat("/x", cred=tok), m.open_write("/y", "a", "w9", cred=tok),
                         m.delete("/y", cred=tok)):
                with pytest.raises(PE.Unauthenticated):
                    await coro
        finally:
            await stop(m)
    run(go())


def test_the_owner_still_works(tmp_path):
    """The checks refuse what they should and nothing else: Carol commits her own chunk."""
    async def go():
        c, m, carol, dave = await _setup(tmp_path)
        try:
            last = m.mastership.ns.snapshot()["nodes"]["/x"]["chunks"][-1][0]
            await m.open_write("/x", "a", "wx3", cred=carol)
            res = await m.commit("/x", "wx3", last, 1, 200, cred=carol)
            assert res["size"] == 2 * 64 * 1024 + 200
        finally:
            await stop(m)
    run(go())


@pytest.mark.parametrize("scope,cid,mode,version,ok", [
    ({"kind": "chunk", "id": "c1", "mode": "r"}, "c1", "r", None, True),
    ({"kind": "chunk", "id": "c1", "mode": "w", "version": 3}, "c1", "r", None, True),
    ({"kind": "chunk", "id": "c1", "mode": "w", "version": 3}, "c1", "w", 3, True),
    ({"kind": "chunk", "id": "c1", "mode": "r"}, "c1", "w", 3, False),  # read-for-write
    ({"kind": "chunk", "id": "c1", "mode": "w", "version": 3}, "c2", "w", 3, False),
    ({"kind": "chunk", "id": "c1", "mode": "r"}, "c2", "r", None, False),
    ({"kind": "chunk", "id": "c1", "mode": "w", "version": 2}, "c1", "w", 3, False),
    ({"kind": "chunk", "id": "c1", "mode": "w", "version": 4}, "c1", "w", 3, False),
    ({"kind": "chunk", "id": "c1", "mode": "w"}, "c1", "w", 3, False),  # no version
    ({"kind": "chunk", "id": "c1", "mode": "w", "version": 1}, "c1", "w", True, False),
    ({"kind": "chunk", "id": "c1", "mode": "rw"}, "c1", "r", None, False),
    ({"kind": "job", "id": "c1", "mode": "w"}, "c1", "r", None, False),
    (None, "c1", "r", None, False), ("chunk", "c1", "r", None, False),
    ({"kind": "chunk", "id": "c1", "mode": "r"}, "c1", "x", None, False),
])
def test_chunk_token_scope(scope, cid, mode, version, ok):
    from pangu.core.access import refusal

    assert (refusal(scope, cid, mode, version) is None) == ok

"""Online backup and restore of a Nuwa group (``nuwa.backup``, ``nuwa.core.backup``,
``nuwa.io.export``): a real 3-replica group in this process (no Ray). The image is one
revision of the tree even while writes go on, is handed out in chunks, survives only intact
(every flipped byte, cut or lie refused), and a group restored from it serves the same tree
and takes new writes. Garbage on the wire gets BadRequest; non-administrators get Denied
(tests/adversarial/test_nuwa_client_port.py)."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from nuwa import backup
from nuwa.client import AsyncNuwa
from nuwa.core import backup as B
from nuwa.core.tree import Tree
from nuwa.io import export
from nuwa.io.server import ReplicaServer
from tests.nuwa.test_group_local import CFG, LocalGroup

pytestmark = pytest.mark.timeout(120)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 100))


class _Sync:
    """What ``nuwa.backup.save`` calls, over an AsyncNuwa, from a worker thread."""

    def __init__(self, c, loop):
        self.c, self.loop = c, loop

    def snapshot(self, timeout_s):
        return asyncio.run_coroutine_threadsafe(self.c.snapshot(timeout_s=timeout_s),
                                                self.loop).result(timeout_s)


async def _filled(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "SNAPSHOT_CHUNK_BYTES", 4096)  # many chunks
    g = LocalGroup(tmp_path / "live")
    await g.start_all()
    await g.leader()
    c = AsyncNuwa(list(g.addresses.values()), timeout_s=5, creator="alice")
    await c.create("/app/", parents=True)
    for i in range(40):
        await c.create(f"/app/k{i}", os.urandom(700) + f"v{i}".encode())
    return g, c


def test_an_image_is_one_revision_while_writes_go_on_and_restores(tmp_path, monkeypatch):
    path = str(tmp_path / "nuwa.bak")

    async def main():
        g, c = await _filled(tmp_path, monkeypatch)
        stop = asyncio.Event()

        async def writer():
            i = 0
            while not stop.is_set():
                await c.create(f"/app/w{i}", b"during")
                i += 1

        w = asyncio.create_task(writer())
        try:
            await asyncio.sleep(0.2)
            loop = asyncio.get_running_loop()
            meta = await loop.run_in_executor(None, backup.save, _Sync(c, loop), path, 30.0)
            stop.set()
            await w
            live = {n: (await c.get(f"/app/{n}"))[0] for n in await c.list("/app/")}
        finally:
            await c.close()
            await g.close()
        return meta, live

    meta, live = run(main())
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"  # it holds users and ACLs
    assert meta["image_bytes"] > 10 * 4096  # it came in many chunks
    info = backup.status(path)
    assert info["revision"] == meta["revision"] and info["nodes"] == meta["nodes"]
    _, image = B.decode(open(path, "rb").read())
    tree = Tree.restore(image)
    held = tree.list("/app/")
    # One revision: every write at or below it is in, none after it.
    assert all(n in held for n in live if n.startswith("k"))
    assert all(tree.stat(f"/app/{n}").modified_rev <= meta["revision"] for n in held)
    assert len([n for n in live if n.startswith("w")]) > len([n for n in held if n.startswith("w")])

    # Restore into new disks, start a group there, read the same tree, write more.
    data_dir = str(tmp_path / "new")
    out = backup.restore(path, data_dir, 3)
    assert out["replicas"] == 3
    assert json.load(open(os.path.join(data_dir, "nuwa", "group.json")))["voters"] == [1, 2, 3]
    with pytest.raises(Exception, match="already holds a Nuwa group"):
        backup.restore(path, data_dir, 3)  # never over an existing group

    async def restored():
        servers, addrs = {}, {}
        for rid in (1, 2, 3):
            s = ReplicaServer(rid, [1, 2, 3], os.path.join(data_dir, "nuwa", f"replica-{rid}"),
                              CFG, seed=rid, rejoin=True)
            addrs[rid] = ("127.0.0.1", await s.start("127.0.0.1"))
            servers[rid] = s
        for s in servers.values():
            s.set_peers(addrs)
        c = AsyncNuwa(list(addrs.values()), timeout_s=10, creator="bob")
        try:
            got = {n: (await c.get(f"/app/{n}"))[0] for n in await c.list("/app/")}
            await c.create("/app/after", b"restored")
            assert (await c.get("/app/after"))[0] == b"restored"
            assert (await c.stat("/app/after"))["created_rev"] > meta["revision"]
            return got
        finally:
            await c.close()
            for s in servers.values():
                await s.stop()

    got = run(restored())
    assert got == {n: tree.get(f"/app/{n}")[0] for n in held}


def _sample(tmp_path) -> bytes:
    t = Tree()
    t.apply({"op": "create", "path": "/a/", "creator": "x", "parents": True})
    t.apply({"op": "create", "path": "/a/b", "value": b"1", "creator": "x"})
    return B.encode({"revision": t.revision, "index": 9, "term": 2, "taken_at": 1.0,
                     "replica": 1}, t.snapshot())


def test_every_damage_to_a_backup_file_is_refused_with_what_was_wrong(tmp_path):
    good = _sample(tmp_path)
    assert B.check(good)["nodes"] == 3  # "/", "/a/", "/a/b"
    cases = {
        b"NOTNUWA!" + good[8:]: "not a Nuwa backup",
        good[:10]: "cut short inside its header",
        good[:-1]: "has .* bytes; its meta says",
        good + b"x": "has .* bytes; its meta says",
        good[:-3] + bytes([good[-3] ^ 1]) + good[-2:]: "fails its SHA-256",
        good[:8] + (10 ** 9).to_bytes(4, "little") + good[12:]: "META_BYTES_MAX",
    }
    for data, msg in cases.items():
        with pytest.raises(B.BackupCorrupt, match=msg):
            B.check(data)
    meta, image = B.decode(good)
    for k, v in (("revision", -1), ("index", "9"), ("sha256", 7), ("term", True)):
        lying = B.encode({**meta, k: v} if k not in ("sha256",) else meta, image)
        if k == "sha256":
            n = int.from_bytes(lying[8:12], "little")
            doc = json.loads(lying[12:12 + n])
            doc["sha256"] = v
            raw = json.dumps(doc).encode()
            lying = lying[:8] + len(raw).to_bytes(4, "little") + raw + image
        with pytest.raises(B.BackupCorrupt, match=k):
            B.check(lying)
    # An image that is not a tree, with a correct checksum, and one at another revision.
    with pytest.raises(B.BackupCorrupt, match="not a Nuwa tree"):
        B.check(B.encode(meta, b"{}"))
    with pytest.raises(B.BackupCorrupt, match="revision"):
        B.check(B.encode({**meta, "revision": meta["revision"] + 5}, image))
    path = tmp_path / "bad.bak"
    path.write_bytes(good[:-1])
    with pytest.raises(B.BackupCorrupt):
        backup.restore(str(path), str(tmp_path / "d"), 3)
    assert not (tmp_path / "d").exists()  # nothing written for a bad file
    path.write_bytes(good)
    with pytest.raises(Exception, match="expected one of"):
        backup.restore(str(path), str(tmp_path / "d"), 2)


def test_an_export_expires_and_is_replaced(monkeypatch):
    now = [0.0]
    ex = export.Exports(clock=lambda: now[0])
    first = ex.start(b"x" * 10, {"revision": 1})
    assert first["data"] == b"x" * 10 and first["meta"]["image_bytes"] == 10
    second = ex.start(b"y", {"revision": 2})
    from nuwa import errors as E

    with pytest.raises(E.BadRequest, match="not held here"):
        ex.chunk(first["export"], 0)  # replaced
    with pytest.raises(E.BadRequest, match="outside the image"):
        ex.chunk(second["export"], 2)
    now[0] += export.EXPORT_IDLE_S + 1
    with pytest.raises(E.BadRequest, match="expired"):
        ex.chunk(second["export"], 0)
    assert ex.held_bytes() == 0

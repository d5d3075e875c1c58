"""The Nuwa client port on the raw wire, with authentication on (issue 14, defects 1 and 7).

A real replica in this process; each test signs in as a user with no grants (``mallory``)
and sends requests a well-behaved client never would: an outer ``op`` that differs from the
command it carries, nested and malformed commands, unknown ops, other users' sessions, huge
length words before signing in, idle and hoarded connections, one user exhausting quotas.
Nothing the ACLs deny may happen, and the replica keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest

from nuwa.io.server import ServerConfig
from tests.adversarial.nuwa_local import Node, Raw, error_type, length_word

pytestmark = pytest.mark.timeout(120)

USERS_DIR = "/fuxi/zhongkui/users/"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 100))


async def seeded(tmp_path, config: ServerConfig | None = None) -> tuple[Node, dict]:
    """A replica holding the platform's user directory and an open ``/open/`` directory,
    and alice's session with an ephemeral node in it."""
    node = await Node(tmp_path, config).start()
    platform = await node.raw(node.token("fuxi-master", ["admins", "platform"]))
    ok = await platform.call({"op": "create", "cmd": {
        "op": "create", "path": USERS_DIR + "root", "value": b"admin-hash", "creator": "x",
        "parents": True}})
    assert "ok" in ok, ok
    alice = await node.raw(node.token("alice"))
    assert "ok" in await alice.call({"op": "create", "cmd": {
        "op": "create", "path": "/open/", "creator": "alice"}})
    sess = (await alice.call({"op": "session_open", "cmd": {
        "op": "session_open", "ttl_s": 300.0, "owner": "alice"}}))["ok"]["session"]
    assert "ok" in await alice.call({"op": "create", "cmd": {
        "op": "create", "path": "/open/alice-lock", "creator": "alice",
        "ephemeral_session": sess}})
    platform.close()
    return node, {"alice": alice, "alice_session": sess}


def mallory_token(node: Node) -> str:
    return node.token("mallory")


def protected_intact(node: Node) -> None:
    tree = node.server.tree
    assert tree.exists(USERS_DIR + "root")
    assert tree.get(USERS_DIR + "root")[0] == b"admin-hash"
    assert not tree.exists(USERS_DIR + "x")
    for path, n in tree._nodes.items():
        if path.startswith("/fuxi/"):
            assert n.creator != "mallory", path


# ------------------------------------------------------------------ defect 1: op vs cmd

EXPLOITS = [
    # outer op          command actually carried
    ("txn", {"op": "create", "path": USERS_DIR + "x", "value": b"pw", "creator": "fuxi-master"}),
    ("txn", {"op": "delete", "path": "/fuxi/", "recursive": True}),
    ("txn", {"op": "set", "path": USERS_DIR + "root", "value": b"mine"}),
    ("create", {"op": "txn", "ops": [{"op": "create", "path": USERS_DIR + "x",
                                      "creator": "fuxi-master"}]}),
    ("set", {"op": "txn", "ops": [{"op": "delete", "path": "/fuxi/", "recursive": True}]}),
    ("session_open", {"op": "create", "path": USERS_DIR + "x", "creator": "fuxi-master"}),
    ("session_close", {"op": "delete", "path": "/fuxi/", "recursive": True}),
    ("session_open", {"op": "set", "path": USERS_DIR + "root", "value": b"mine"}),
    ("delete", {"op": "create", "path": USERS_DIR + "x", "creator": "fuxi-master"}),
]


@pytest.mark.parametrize("outer,cmd", EXPLOITS, ids=[f"{o}-carrying-{c['op']}" for o, c in EXPLOITS])
def test_an_outer_op_that_differs_from_its_command_is_refused(tmp_path, outer, cmd):
    async def main():
        node, _ = await seeded(tmp_path)
        try:
            m = await node.raw(mallory_token(node))
            ans = await m.call({"op": outer, "cmd": cmd})
            assert error_type(ans) == "BadRequest", ans
            assert "carries a command of op" in ans["error"]["message"]
            protected_intact(node)
            assert "ok" in await m.call({"op": "exists", "path": "/open/"})  # still serving
        finally:
            await node.stop()
    run(main())


def test_set_carrying_session_close_cannot_close_another_users_session(tmp_path):
    async def main():
        node, seed = await seeded(tmp_path)
        try:
            m = await node.raw(mallory_token(node))
            sid = seed["alice_session"]
            for outer in ("set", "create", "delete", "txn"):
                ans = await m.call({"op": outer, "cmd": {"op": "session_close", "session": sid}})
                assert error_type(ans) == "BadRequest", ans
            ans = await m.call({"op": "session_close", "cmd": {"op": "session_close",
                                                               "session": sid}})
            assert error_type(ans) == "Denied", ans
            ans = await m.call({"op": "session_keepalive", "session": sid})
            assert error_type(ans) == "Denied", ans
            assert sid in node.server.tree._sessions
            assert node.server.tree.exists("/open/alice-lock")
        finally:
            await node.stop()
    run(main())


def test_every_op_of_a_txn_is_checked_and_creators_are_the_caller(tmp_path):
    async def main():
        node, seed = await seeded(tmp_path)
        try:
            m = await node.raw(mallory_token(node))
            # One forbidden op among allowed ones: nothing happens.
            ans = await m.call({"op": "txn", "cmd": {"op": "txn", "ops": [
                {"op": "create", "path": "/open/m1", "creator": "alice"},
                {"op": "create", "path": USERS_DIR + "x", "creator": "fuxi-master"}]}})
            assert error_type(ans) == "Denied", ans
            assert not node.server.tree.exists("/open/m1")
            # A recursive delete of a subtree holding a protected prefix needs delete on it.
            ans = await m.call({"op": "txn", "cmd": {"op": "txn", "ops": [
                {"op": "delete", "path": "/fuxi/", "recursive": True}]}})
            assert error_type(ans) == "Denied", ans
            # Nested txn and session ops inside a txn are refused, naming the op.
            for inner in ({"op": "txn", "ops": [{"op": "create", "path": USERS_DIR + "x",
                                                 "creator": "x"}]},
                          {"op": "session_close", "session": seed["alice_session"]},
                          {"op": "session_open", "session": 5, "ttl_s": 5.0, "owner": "x"}):
                ans = await m.call({"op": "txn", "cmd": {"op": "txn", "ops": [inner]}})
                assert error_type(ans) == "TxnFailed", ans
            # Allowed: the creator recorded is the verified caller, not the one claimed.
            ans = await m.call({"op": "txn", "cmd": {"op": "txn", "ops": [
                {"op": "create", "path": "/open/m2", "creator": "alice"},
                {"op": "check", "path": "/open/m2", "version": 0}]}})
            assert "ok" in ans, ans
            assert node.server.tree.stat("/open/m2").creator == "mallory"
            ans = await m.call({"op": "create", "cmd": {"op": "create", "path": "/open/m3/x",
                                                        "creator": "root", "parents": True}})
            assert "ok" in ans, ans
            assert node.server.tree.stat("/open/m3/").creator == "mallory"
            assert node.server.tree.stat("/open/m3/x").creator == "mallory"
            protected_intact(node)
        finally:
            await node.stop()
    run(main())


def test_unknown_ops_missing_and_extra_keys_and_wrong_types_are_refused(tmp_path):
    async def main():
        node, _ = await seeded(tmp_path)
        try:
            m = await node.raw(mallory_token(node))
            bad = [
                {"op": "frobnicate", "cmd": {"op": "create", "path": USERS_DIR + "x",
                                             "creator": "x"}},
                {"op": None},
                {"op": ["create"]},
                {"op": "create"},                                   # no cmd
                {"op": "create", "cmd": None},
                {"op": "create", "cmd": [{"op": "create"}]},
                {"op": "create", "cmd": {"op": "create", "path": "/open/y", "creator": "m"},
                 "extra": 1},                                       # unknown envelope key
                {"op": "create", "cmd": {"op": "create", "path": "/open/y", "creator": "m",
                                         "admin": True}},           # unknown command key
                {"op": "get"},
                {"op": "get", "path": 7},
                {"op": "get", "path": "/open/", "linearizable": "no"},
                {"op": "watch", "path": "/fuxi/", "recursive": 1},
                {"op": "watch", "path": "/open/", "from_revision": -1},
                {"op": "session_keepalive", "session": "1"},
                {"op": "session_open", "cmd": {"op": "session_open", "ttl_s": 5.0,
                                               "session": 42}},     # the replica picks ids
                {"op": "conf_change", "change": "remove", "member": "1"},
                {"op": "transfer_leader", "to": True},
                {"op": "unwatch", "watch": "all"},
                {"op": "delete", "cmd": {"op": "delete", "path": "/open/", "recursive": "yes"}},
                {"op": "status", "path": "/x"},
            ]
            for req in bad:
                ans = await m.call(req)
                assert error_type(ans) in ("BadRequest", "BadPath"), (req, ans)
            protected_intact(node)
            assert "ok" in await m.call({"op": "status"})
        finally:
            await node.stop()
    run(main())


def test_cluster_ops_need_an_administrator_even_one_named_like_the_roots_creator(tmp_path):
    async def main():
        node, _ = await seeded(tmp_path)
        try:
            for user in ("mallory", "nuwa"):  # "nuwa" created "/": it must not own the cluster
                m = await node.raw(node.token(user))
                for req in ({"op": "conf_change", "change": "add_learner", "member": 9},
                            {"op": "transfer_leader", "to": 1}):
                    ans = await m.call(req)
                    assert error_type(ans) == "Denied", (user, req, ans)
                ans = await m.call({"op": "create", "cmd": {"op": "create", "path": "/zhongkui/",
                                                            "creator": user}})
                assert error_type(ans) == "Denied", (user, ans)
            assert node.server.node.learners == () or 9 not in node.server.node.learners
        finally:
            await node.stop()
    run(main())


def test_a_create_may_not_name_another_users_session(tmp_path):
    async def main():
        node, seed = await seeded(tmp_path)
        try:
            m = await node.raw(mallory_token(node))
            for outer, cmd in (
                    ("create", {"op": "create", "path": "/open/m-eph", "creator": "mallory",
                                "ephemeral_session": seed["alice_session"]}),
                    ("txn", {"op": "txn", "ops": [{"op": "create", "path": "/open/m-eph",
                                                   "creator": "mallory",
                                                   "ephemeral_session": seed["alice_session"]}]})):
                ans = await m.call({"op": outer, "cmd": cmd})
                assert error_type(ans) == "Denied", ans
            ans = await m.call({"op": "create", "cmd": {
                "op": "create", "path": "/open/m-eph", "creator": "mallory",
                "ephemeral_session": 123456789}})
            assert error_type(ans) == "NoSession", ans
            assert not node.server.tree.exists("/open/m-eph")
        finally:
            await node.stop()
    run(main())


def test_a_connection_belongs_to_the_user_it_signed_in_as(tmp_path):
    async def main():
        node, _ = await seeded(tmp_path)
        try:
            m = await node.raw(mallory_token(node))
            assert "ok" in await m.call({"op": "auth"})
            ans = await m.call({"op": "exists", "path": "/open/", "cred": node.token("alice")})
            assert error_type(ans) == "Denied", ans
        finally:
            await node.stop()
    run(main())


# ------------------------------------------------------------------ defect 7: bounded before auth

SHORT = ServerConfig(hello_timeout_s=0.5, idle_timeout_s=0.8)


def test_a_huge_frame_before_signing_in_is_refused_without_reading_it(tmp_path):
    async def main():
        node, seed = await seeded(tmp_path)
        try:
            # A 100 MiB length word, and a message announced in fragments (each under the
            # fragment limit) that would grow far past the pre-auth limit.
            for data in (length_word(100 << 20), length_word(1 << 20, more=True) + b"x" * 4096,
                         length_word(60_000, more=True) + b"x" * 60_000 +
                         length_word(60_000) + b"y" * 10):
                r = await Raw.open(node.port)
                r.send_bytes(data)
                got = await r.closed(timeout_s=5)
                assert all(error_type(g) in (None, "LimitExceeded") for g in got), got
            # A 1 MiB frame that is a perfectly valid msgpack map, with a valid token: still
            # refused before the token is seen (sign in with a small request first).
            r = await node.raw(mallory_token(node))
            r.send({"op": "create", "cmd": {"op": "create", "path": "/open/big", "creator": "m",
                                            "value": b"v" * (1 << 20)}})
            got = await r.closed(timeout_s=5)
            assert [error_type(g) for g in got] == ["LimitExceeded"], got
            # Signed in, the same request is fine.
            m = await node.raw(mallory_token(node))
            assert "ok" in await m.call({"op": "auth"})
            ans = await m.call({"op": "create", "cmd": {"op": "create", "path": "/open/big",
                                                        "creator": "m", "value": b"v" * (1 << 20)}})
            assert "ok" in ans, ans
        finally:
            await node.stop()
    run(main())


def test_no_token_a_bad_token_or_silence_closes_the_connection(tmp_path):
    async def main():
        node, _ = await seeded(tmp_path, SHORT)
        try:
            silent = await Raw.open(node.port)  # hello, then nothing
            r = await Raw.open(node.port)
            r.send({"op": "status"})
            got = await r.closed(timeout_s=5)
            assert [error_type(g) for g in got] == ["Unauthenticated"], got
            r = await Raw.open(node.port, token="v1.garbage.token")
            r.send({"op": "status"})
            got = await r.closed(timeout_s=5)
            assert [error_type(g) for g in got] == ["Unauthenticated"], got
            expired = await Raw.open(node.port, node.token("mallory", ttl_s=10, age_s=60))
            expired.send({"op": "status"})
            assert [error_type(g) for g in await expired.closed(5)] == ["Unauthenticated"]
            got = await silent.closed(timeout_s=5)  # hello_timeout_s=0.5
            assert [error_type(g) for g in got] == ["Timeout"], got
        finally:
            await node.stop()
    run(main())


def test_idle_connections_are_closed_but_watchers_are_not(tmp_path):
    async def main():
        node, _ = await seeded(tmp_path, SHORT)
        try:
            idle = await node.raw(mallory_token(node))
            assert "ok" in await idle.call({"op": "auth"})
            watcher = await node.raw(mallory_token(node))
            assert "ok" in await watcher.call({"op": "watch", "path": "/open/", "recursive": True})
            got = await idle.closed(timeout_s=5)  # idle_timeout_s=0.8
            assert [error_type(g) for g in got] == ["Timeout"], got
            await asyncio.sleep(2 * SHORT.idle_timeout_s)
            w = await node.raw(node.token("alice"))
            assert "ok" in await w.call({"op": "create", "cmd": {"op": "create",
                                                                 "path": "/open/ping",
                                                                 "creator": "alice"}})
            ev = await watcher.next(timeout_s=5)  # the watcher was kept, and is told
            assert ev.get("watch") and ev["events"][0]["path"] == "/open/ping", ev
        finally:
            await node.stop()
    run(main())


def test_the_client_signs_in_first_and_reconnects_after_an_idle_close(tmp_path):
    from nuwa.client import AsyncNuwa

    async def main():
        node, _ = await seeded(tmp_path, SHORT)
        try:
            c = AsyncNuwa([("127.0.0.1", node.port)], timeout_s=5, token=node.token("bob"))
            # The first request is bigger than PREAUTH_FRAME_BYTES_MAX: the client signed in.
            await c.create("/open/bob", b"v" * (512 * 1024))
            await asyncio.sleep(3 * SHORT.idle_timeout_s)  # the replica closes the connection
            await c.set("/open/bob", b"w")  # a write after it: no OutcomeUnknown
            assert (await c.get("/open/bob"))[0] == b"w"
            await c.close()
        finally:
            await node.stop()
    run(main())


def test_many_connections_are_capped_and_the_replica_keeps_serving(tmp_path):
    cfg = ServerConfig(connections_max=24, preauth_connections_max=8, hello_timeout_s=30)

    async def main():
        node, seed = await seeded(tmp_path, cfg)  # alice's connection is open already
        try:
            # 40 that never say hello (held by the transport), 20 that say hello and never
            # sign in (held by the replica, at most preauth_connections_max).
            hoard = [Raw(*(await asyncio.open_connection("127.0.0.1", node.port)), None)
                     for _ in range(40)]
            hoard += [await Raw.open(node.port) for _ in range(20)]
            await asyncio.sleep(0.3)
            shut = 0
            for r in hoard:
                with contextlib.suppress(asyncio.TimeoutError):
                    await r.closed(timeout_s=0.2)
                    shut += 1
            assert shut >= 60 - cfg.connections_max, shut
            assert node.server.transport.refused > 0
            assert len(node.server.transport._accepted) <= cfg.connections_max
            # The signed-in connection still works, and so do writes.
            ans = await seed["alice"].call({"op": "create", "cmd": {
                "op": "create", "path": "/open/during", "creator": "alice"}})
            assert "ok" in ans, ans
            for r in hoard:
                r.close()
            await asyncio.sleep(0.3)
            fresh = await node.raw(node.token("alice"))
            assert "ok" in await fresh.call({"op": "exists", "path": "/open/during"})
        finally:
            await node.stop()
    run(main())


def test_one_user_exhausting_quotas_does_not_affect_another(tmp_path):
    cfg = ServerConfig(sessions_per_user_max=3, watches_per_user_max=2,
                       ephemerals_per_user_max=2, connections_per_user_max=4,
                       pending_per_user_max=3)

    async def main():
        node, seed = await seeded(tmp_path, cfg)
        try:
            m = await node.raw(mallory_token(node))
            sids = []
            for _ in range(3):
                sids.append((await m.call({"op": "session_open", "cmd": {
                    "op": "session_open", "ttl_s": 300.0}}))["ok"]["session"])
            ans = await m.call({"op": "session_open", "cmd": {"op": "session_open", "ttl_s": 30.0}})
            assert error_type(ans) == "QuotaExceeded", ans
            assert ans["error"]["limit"] == "sessions_per_user_max"
            assert ans["error"]["user"] == "mallory"
            # Ephemerals: two, then no more (one txn of two counts as two).
            for i in range(2):
                assert "ok" in await m.call({"op": "create", "cmd": {
                    "op": "create", "path": f"/open/e{i}", "creator": "m",
                    "ephemeral_session": sids[i]}})
            ans = await m.call({"op": "create", "cmd": {"op": "create", "path": "/open/e9",
                                                        "creator": "m", "ephemeral_session": sids[2]}})
            assert error_type(ans) == "QuotaExceeded" and ans["error"]["limit"] == \
                "ephemerals_per_user_max", ans
            for i in range(2):
                assert "ok" in await m.call({"op": "watch", "path": f"/open/w{i}"})
            ans = await m.call({"op": "watch", "path": "/open/w9"})
            assert error_type(ans) == "QuotaExceeded", ans
            conns = [await node.raw(mallory_token(node)) for _ in range(4)]
            answers = [await c.call({"op": "auth"}) for c in conns]
            assert [error_type(a) for a in answers].count("QuotaExceeded") >= 1, answers
            # Requests in flight: many pipelined at once, beyond pending_per_user_max.
            ids = [m.send({"op": "create", "cmd": {"op": "create", "path": f"/open/p{i}",
                                                   "creator": "m"}}) for i in range(30)]
            got = [await m.answer(i) for i in ids]
            kinds = {error_type(a) or "ok" for a in got}
            assert kinds <= {"ok", "QuotaExceeded"} and "QuotaExceeded" in kinds, got
            # Alice is not affected by any of it.
            a = seed["alice"]
            s2 = await a.call({"op": "session_open", "cmd": {"op": "session_open", "ttl_s": 30.0}})
            assert "ok" in s2, s2
            assert "ok" in await a.call({"op": "create", "cmd": {
                "op": "create", "path": "/open/a-eph", "creator": "alice",
                "ephemeral_session": s2["ok"]["session"]}})
            assert "ok" in await a.call({"op": "watch", "path": "/open/"})
            assert "ok" in await a.call({"op": "watch", "path": "/open/x"})
            # Closing a session gives its room back.
            assert "ok" in await m.call({"op": "session_close", "cmd": {
                "op": "session_close", "session": sids[0]}})
            assert "ok" in await m.call({"op": "session_open", "cmd": {
                "op": "session_open", "ttl_s": 30.0}})
        finally:
            await node.stop()
    run(main())


def test_garbage_frames_are_refused_and_the_replica_keeps_serving(tmp_path):
    async def main():
        node, seed = await seeded(tmp_path)
        try:
            from nuwa.io.transport import frame
            for payload in (b"\xc1", b"\x91" * 5000, b"\xdf\xff\xff\xff\xff", b"not msgpack"):
                r = await node.raw(mallory_token(node))
                assert "ok" in await r.call({"op": "auth"})
                r.send_bytes(frame(payload))
                got = await r.closed(timeout_s=5)
                assert [error_type(g) for g in got] in (["BadRequest"], []), (payload, got)
            r = await node.raw(mallory_token(node))
            assert "ok" in await r.call({"op": "auth"})
            for payload in (b"\x93\x01\x02\x03", b"\xa3abc", b"\xc0"):  # msgpack, not a map
                r.send_bytes(frame(payload))
                ans = await r.next()
                assert error_type(ans) == "BadRequest" and ans["id"] is None, ans
            for hello in (b"X", b"", b"P" + b"\xff" * 70_000):
                r = await Raw.open(node.port, hello=hello)
                await r.closed(timeout_s=10)
            assert "ok" in await seed["alice"].call({"op": "exists", "path": "/open/"})
        finally:
            await node.stop()
    run(main())


def test_limits_are_named_in_the_config():
    names = {f.name for f in dataclasses.fields(ServerConfig)}
    assert {"connections_max", "hello_timeout_s", "idle_timeout_s", "preauth_connections_max",
            "connections_per_user_max", "sessions_per_user_max", "watches_per_user_max",
            "ephemerals_per_user_max", "pending_per_user_max"} <= names


FD_CHILD = r"""
import asyncio, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from nuwa.io.server import ReplicaServer, ServerConfig

async def main():
    s = ReplicaServer(1, [1], sys.argv[1], ServerConfig(snapshot_every_entries=20,
                      snapshot_trailing_entries=5), seed=1)
    port = await s.start("127.0.0.1")
    s.set_peers({1: ("127.0.0.1", port)})
    print(port, flush=True)
    while not s.stopped:
        await asyncio.sleep(0.05)
    print("STOPPED", flush=True)

asyncio.run(main())
"""


def test_running_out_of_file_descriptors_does_not_stop_the_replica(tmp_path):
    """A replica whose process may open 128 files is sent 150 connections that stay open,
    while a client keeps writing (and the replica keeps writing snapshots, which need new
    files). The connections beyond the cap are refused; every write succeeds."""
    import subprocess
    import sys

    from nuwa.client import AsyncNuwa

    proc = subprocess.Popen([sys.executable, "-c", FD_CHILD, str(tmp_path / "r1"), "128"],
                            stdout=subprocess.PIPE, text=True)

    async def main():
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 30)
        port = int(line)
        c = AsyncNuwa([("127.0.0.1", port)], timeout_s=5, token="")
        await c.create("/fd/", parents=True)
        flood = []
        for _ in range(150):
            with contextlib.suppress(OSError):
                flood.append(await Raw.open(port))
        await asyncio.sleep(0.5)
        for i in range(60):  # three snapshots' worth of writes
            await c.create(f"/fd/n{i}", b"v")
        assert proc.poll() is None, "the replica process died"
        for r in flood:
            r.close()
        await asyncio.sleep(0.5)
        fresh = AsyncNuwa([("127.0.0.1", port)], timeout_s=5, token="")
        assert len(await fresh.list("/fd/")) == 60
        await fresh.close()
        await c.close()

    try:
        run(main())
        assert proc.poll() is None
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        assert "STOPPED" not in out


def test_a_backup_image_is_for_administrators_only_and_garbage_is_refused(tmp_path):
    async def main():
        node, _ = await seeded(tmp_path)
        try:
            for user in ("mallory", "nuwa"):
                m = await node.raw(node.token(user))
                assert error_type(await m.call({"op": "snapshot"})) == "Denied", user
            admin = await node.raw(node.admin_token())
            ans = await admin.call({"op": "snapshot"})
            assert "ok" in ans, ans
            first = ans["ok"]
            assert first["meta"]["image_bytes"] == len(first["data"])  # one chunk here
            # Even a stolen export id reads nothing without the grant.
            m = await node.raw(node.token("mallory"))
            assert error_type(await m.call({"op": "snapshot", "export": first["export"],
                                            "offset": 0})) == "Denied"
            for req in ({"op": "snapshot", "export": "zz"},
                        {"op": "snapshot", "export": 7},
                        {"op": "snapshot", "export": "a" * 65},
                        {"op": "snapshot", "offset": 5},
                        {"op": "snapshot", "export": first["export"], "offset": -1},
                        {"op": "snapshot", "export": first["export"], "offset": True},
                        {"op": "snapshot", "export": first["export"], "offset": 1 << 40},
                        {"op": "snapshot", "export": "ab" * 16, "offset": 0},
                        {"op": "snapshot", "path": "/"}):
                assert error_type(await admin.call(req)) == "BadRequest", req
            assert "ok" in await admin.call({"op": "status"})
        finally:
            await node.stop()
    run(main())

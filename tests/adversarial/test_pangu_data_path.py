"""The Pangu data path as an attacker sees it (issue 14): the chunkservers' write, apply,
sync and read entry points and the master's chunk operations, called directly with forged,
truncated, oversized, replayed and mismatched messages and chunk access tokens (none,
malformed, forged, expired, another chunk's, a read token for a write, an old lease's, a
login token). Every one is refused with a typed error, the servers keep serving, and the
file under attack is byte-for-byte what it was.

Pangu runs with Zhongkui on (a cluster keyring made here); there is no FuxiMaster, so no
ACL entries: the writers are administrators, and the tokens are what is under test."""

from __future__ import annotations

import os
import time
import uuid

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private loopback test cluster

import pyarrow as pa  # noqa: E402

from pangu import client as PC  # noqa: E402
from pangu import deploy  # noqa: E402
from pangu import errors as PE  # noqa: E402
from pangu.core.access import chunk_scope  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

CLUSTER = "advpg"
CS = 64 * 1024
CALL_TIMEOUT_S = 30.0
REFUSED = (PE.Unauthenticated, PE.Denied)


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    import ray

    from zhongkui.guard import auth_doc
    from zhongkui.keys import Keyring

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 namespace="fuxi-adv-test")
    keys = Keyring.new()
    data = str(tmp_path_factory.mktemp("adv-pangu"))
    here = ray.get_runtime_context().get_node_id()
    try:
        deploy.start(CLUSTER, data, nodes=[here], per_node=2, auth=auth_doc(True, keys),
                     settings={"allow_same_node": True, "rebalance": False, "seed": 3,
                               "maintain_s": 0.5},
                     heartbeat_s=0.5, scrub_interval_s=0.5, capacity_bytes=64 << 20)
        admin = keys.sign("carol", ["admins"], now=time.time(), ttl_s=3600)
        c = PC.Client(CLUSTER, token=admin)
        x = os.urandom(2 * CS + 1000)
        c.mkdir("/adv", parents=True)
        with c.open("/adv/x", "wb", replication=2, chunk_size=CS) as f:
            f.write(x)
        yield {"c": c, "keys": keys, "x": x, "admin": admin}
    finally:
        try:
            deploy.stop(CLUSTER)
        finally:
            if started:
                ray.shutdown()


def _get(ref):
    import ray

    return PC._get(ref, CALL_TIMEOUT_S) if isinstance(ref, ray.ObjectRef) else ref


def _x_intact(pg) -> None:
    c = pg["c"]
    with c.open("/adv/x", "rb") as f:
        assert f.read() == pg["x"], "file X changed"
    info = c.call("locate", "/adv/x")
    assert [ch["length"] for ch in info["chunks"]] == [CS, CS, 1000]


def _tokens(pg, cid: str, version: int, other_write: str) -> dict:
    """Every kind of bad token for writing chunk ``cid`` at ``version``."""
    from zhongkui.keys import Keyring

    keys, now = pg["keys"], time.time()
    good = keys.sign("carol", (), now=now, ttl_s=600, scope=chunk_scope(cid, "w", version))
    read = pg["c"].call("locate", "/adv/x")["chunks"][0]["access"]
    return {
        "none": "", "none-None": None, "garbage": "not a token", "dots": "a.b.c",
        "truncated": good[:-5], "oversized": good + "A" * 10_000,
        "not-a-str": {"scope": "chunk"},
        "forged": Keyring.new().sign("carol", (), now=now, ttl_s=600,
                                     scope=chunk_scope(cid, "w", version)),
        "expired": keys.sign("carol", (), now=now - 1000, ttl_s=1,
                             scope=chunk_scope(cid, "w", version)),
        "read-for-write": read if pg["c"].call("locate", "/adv/x")["chunks"][0]["id"] == cid
        else keys.sign("carol", (), now=now, ttl_s=600, scope=chunk_scope(cid, "r")),
        "old-lease": keys.sign("carol", (), now=now, ttl_s=600,
                               scope=chunk_scope(cid, "w", version - 1)),
        "next-lease": keys.sign("carol", (), now=now, ttl_s=600,
                                scope=chunk_scope(cid, "w", version + 1)),
        "another-chunk": other_write,
        "login": pg["admin"],
        "unscoped-user": keys.sign("dave", (), now=now, ttl_s=600),
    }


def test_writes_with_bad_tokens_are_refused_everywhere(pg):
    import ray

    c = pg["c"]
    # A real writer of Y holds a write token for Y's chunk: the "other chunk" token.
    with c.open("/adv/y", "wb", replication=2, chunk_size=CS) as fy:
        fy.write(b"y" * 100)
        fy.flush()
        other = next(iter(fy._leases.values()))["access"]
    info = c.call("locate", "/adv/x")
    ref = ray.put(pa.py_buffer(b"\xee" * 512))
    problems = []
    for ch in info["chunks"]:
        for r in ch["replicas"]:
            srv = c.server(r["name"])
            for name, tok in _tokens(pg, ch["id"], ch["version"], other).items():
                calls = {
                    "write": lambda: srv.write.remote(ch["id"], ch["version"], 0, [ref],
                                                      "t-" + uuid.uuid4().hex, 1, access=tok),
                    "apply": lambda: srv.apply.remote(ch["id"], ch["version"], 0, [ref],
                                                      None, access=tok),
                    "sync": lambda: srv.sync.remote(ch["id"], ch["version"], access=tok),
                }
                if name != "read-for-write":
                    calls["read"] = lambda: srv.read.remote(ch["id"], ch["version"], 0, 10,
                                                            access=tok)
                for op, call in calls.items():
                    if op == "read" and name in ("old-lease", "next-lease"):
                        continue  # a write token of this chunk also reads it
                    try:
                        _get(call())
                        problems.append(f"{op} on {r['name']} with {name}: allowed")
                    except REFUSED:
                        pass
                    except Exception as e:  # noqa: BLE001 - reported
                        problems.append(f"{op} with {name}: {type(e).__name__}: {e}"[:200])
    assert not problems, "\n".join(problems)
    _x_intact(pg)


def test_secondaries_take_writes_from_a_primary_only(pg):
    """Even the current writer's own valid token does not write a secondary directly."""
    import ray

    c = pg["c"]
    with c.open("/adv/x2", "wb", replication=2, chunk_size=CS) as f:
        f.write(b"a" * 1000)
        f.flush()
        lease = next(iter(f._leases.values()))
        info = c.call("locate", "/adv/x2")
        secondaries = [r["name"] for r in info["chunks"][0]["replicas"]
                       if r["name"] != lease["primary"]]
        assert secondaries
        ref = ray.put(pa.py_buffer(b"Z" * 1000))
        for name in secondaries:
            srv = c.server(name)
            for call in (srv.apply.remote(lease["id"], lease["version"], 0, [ref], None,
                                          access=lease["access"]),
                         srv.sync.remote(lease["id"], lease["version"],
                                         access=lease["access"])):
                with pytest.raises(PE.Denied):
                    _get(call)
        # A replay of the writer's last piece (same lease token and number) is refused.
        with pytest.raises(PE.BadRequest, match="replay"):
            _get(c.server(lease["primary"]).write.remote(
                lease["id"], lease["version"], 0, [ref], lease["token"], lease["seq"],
                access=lease["access"]))
    with c.open("/adv/x2", "rb") as f:
        assert f.read() == b"a" * 1000


def test_malformed_and_oversized_writes_are_typed_errors(pg):
    import ray

    c = pg["c"]
    with c.open("/adv/z", "wb", replication=2, chunk_size=CS) as f:
        f.write(b"z" * 10)
        f.flush()
        L = next(iter(f._leases.values()))
        srv = c.server(L["primary"])
        good = ray.put(pa.py_buffer(b"q" * 10))
        big = ray.put(pa.py_buffer(b"q" * (CS + 1)))
        not_bytes = ray.put({"a": 1})
        cid, v, acc = L["id"], L["version"], L["access"]
        bad = [
            (cid, "1", 0, [good], "t", 1), (cid, -1, 0, [good], "t", 1),
            (cid, 2 ** 70, 0, [good], "t", 1), (cid, True, 0, [good], "t", 1),
            (cid, v, -5, [good], "t", 1), (cid, v, 2 ** 70, [good], "t", 1),
            (cid, v, 0, good, "t", 1), (cid, v, 0, [], "t", 1), (cid, v, 0, [good, good], "t", 1),
            (cid, v, 0, [b"raw bytes"], "t", 1), (cid, v, 0, [not_bytes], "tb", 1),
            (cid, v, 0, [good], "t" * 10_000, 1), (cid, v, 0, [good], "t", 0),
            (cid, v, 0, [good], "t", 2 ** 70), (cid, v, 0, [good], 5, 1),
            (cid, v, 0, [big], "tbig", 1), (cid, v, CS - 5, [good], "tend", 1),
        ]
        for args in bad:
            with pytest.raises((PE.BadRequest, PE.NoSpace)):
                _get(srv.write.remote(*args, access=acc))
        for args in ((cid, "1", 0, 10), (cid, v, -1, 10), (cid, v, 0, -1), (cid, v, 0, 2 ** 40),
                     (cid, v, None, 10)):
            with pytest.raises(PE.BadRequest):
                _get(srv.read.remote(*args, access=acc))
    with c.open("/adv/z", "ab") as f:  # the server still serves writers
        f.write(b"w" * 10)
    with c.open("/adv/z", "rb") as f:
        assert f.read() == b"z" * 10 + b"w" * 10
    _x_intact(pg)


def test_master_chunk_ops_with_bad_credentials(pg):
    from zhongkui.keys import Keyring

    c, keys, now = pg["c"], pg["keys"], time.time()
    ch = c.call("locate", "/adv/x")["chunks"][0]
    creds = {"none": "", "garbage": "x.y", "forged": Keyring.new().sign("carol", ["admins"],
                                                                        now=now, ttl_s=600),
             "expired": keys.sign("carol", ["admins"], now=now - 1000, ttl_s=1),
             "chunk-token": ch["access"]}
    for name, cred in creds.items():
        bad = PC.Client(CLUSTER, token=cred)
        for method, args in (("commit", ("/adv/x", "w", ch["id"], ch["version"], 5)),
                             ("renew_lease", ("/adv/x", "w", ch["id"])),
                             ("write_failed", ("/adv/x", "w", ch["id"], 1, [])),
                             ("chunk_for_write", ("/adv/x", "w", 0)),
                             ("truncate", ("/adv/x", 0)), ("delete", ("/adv/x",))):
            with pytest.raises(PE.Unauthenticated):
                bad.call(method, *args, timeout_s=10)
    _x_intact(pg)


def test_control_calls_need_the_platform(pg):
    """Naming a chunkserver's masters (their heartbeat replies order deletions) and the
    fault-test bit flip are the platform's: refused to a user, an administrator and a chunk
    token; the server keeps its masters and X its bytes."""
    c, keys, now = pg["c"], pg["keys"], time.time()
    info = c.call("locate", "/adv/x")
    for r in info["chunks"][0]["replicas"]:
        srv = c.server(r["name"])
        for cred in (None, "", pg["admin"], keys.sign("dave", (), now=now, ttl_s=60),
                     info["chunks"][0]["access"]):
            with pytest.raises(REFUSED):
                _get(srv.start.remote(["pangu-fake-master"], cred=cred))
            with pytest.raises(REFUSED):
                _get(srv.corrupt_for_test.remote(info["chunks"][0]["id"], 0, cred=cred))
    time.sleep(1.5)  # a few heartbeats: still to the real master
    assert all(not s["dead"] for s in c.status()["servers"])
    _x_intact(pg)

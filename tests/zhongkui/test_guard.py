"""The guard every entry point holds, and the identity service's ACL side, without Ray: who
a token names, decisions with fresh or stale entries, key fetches on an unknown key id, keys
pushed only by the platform, grants only by owners and administrators."""

from __future__ import annotations

import asyncio

import pytest

from fuxi.io.store import MemoryStore
from zhongkui.core.acl import ADMIN_GROUP, PLATFORM_GROUP
from zhongkui.authority import Authority
from zhongkui.errors import BadInput, Denied, Expired, Malformed, UnknownKey
from zhongkui.guard import (ACL_REFRESH_S, KEYS_FETCH_INTERVAL_S, LOCAL_OPERATOR, Guard,
                            auth_doc)
from zhongkui.keys import Keyring


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_disabled_guard_lets_the_local_operator_do_anything():
    g = Guard(None)
    assert g.identify(None) is LOCAL_OPERATOR and g.platform_token() == ""
    assert g.decision(LOCAL_OPERATOR, "pangu", "/x", "delete").allowed
    ring = Keyring.new()
    g2 = Guard(auth_doc(False, ring))
    tok = ring.sign("bob", ["dev"], now=__import__("time").time())
    assert g2.identify(tok).user == "bob"  # owners are still recorded
    assert g2.identify("garbage") is LOCAL_OPERATOR
    assert g2.decision(g2.identify(tok), "pangu", "/root", "delete").allowed


def test_enabled_guard_names_the_caller_or_says_what_is_wrong():
    clock = Clock()
    ring = Keyring.new()
    g = Guard(auth_doc(True, ring), clock=clock)
    with pytest.raises(Malformed, match="no token"):
        g.identify("")
    with pytest.raises(Expired):
        g.identify(ring.sign("bob", now=clock.t - 100, ttl_s=10))
    with pytest.raises(UnknownKey):
        g.identify(Keyring.new().sign("bob", now=clock.t))
    who = g.identify(ring.sign("bob", ["dev"], now=clock.t, ttl_s=60,
                               scope={"kind": "job", "id": "j1"}))
    assert (who.user, who.groups, who.scope) == ("bob", ("dev",), {"kind": "job", "id": "j1"})
    assert not who.admin and not who.platform
    assert g.decision(who, "nuwa", "/open/x", "write").allowed  # the seed's open namespace
    assert not g.decision(who, "nuwa", "/zhongkui/users/", "read").allowed
    assert g.decision(who, "nuwa", "/services/echo/", "read").allowed
    clock.t += 61  # a principal verified earlier is refused once its token has expired
    assert not g.decision(who, "nuwa", "/open/x", "write").allowed
    assert g.counters["bad_credentials"] == 3


def test_platform_tokens_renew_and_prove_the_platform():
    clock = Clock()
    g = Guard(auth_doc(True, Keyring.new()), name="nuwa-1", clock=clock)
    t1 = g.platform_token()
    assert t1 == g.platform_token()
    who = g.identify(t1)
    assert who.user == "fuxi-nuwa-1" and who.admin and who.platform
    assert set(who.groups) == {ADMIN_GROUP, PLATFORM_GROUP}
    clock.t += 3600 * 0.6
    assert g.platform_token() != t1  # renewed past half its life


def test_a_denial_refreshes_the_entries_once_before_it_is_final():
    clock = Clock()
    ring = Keyring.new()
    acl = {"version": 1, "entries": [], "restricted": []}
    fetched = []

    async def fetch_acl(proof, have_version):
        fetched.append(proof)
        return acl

    reports = []
    g = Guard(auth_doc(True, ring), clock=clock, fetch_acl=fetch_acl,
              report=lambda proof, rec: reports.append(rec))
    bob_token = ring.sign("bob", now=clock.t)
    bob = g.identify(bob_token)

    async def go():
        with pytest.raises(Denied, match="may not read pangu:/data"):
            await g.acheck(bob, "pangu", "/data/x", "read")
        assert len(fetched) == 1 and g.platform_token() == fetched[0]
        # A grant made meanwhile: the next denial would refresh, and finds it.
        acl.update(version=2, entries=[{"kind": "pangu", "resource": "/data",
                                        "principal": "user:bob", "perms": ["read"]}])
        clock.t += 1
        assert (await g.acheck(bob, "pangu", "/data/x", "read")).allowed
        # Revoked: allowed from the cache until it is stale, then refreshed in the background.
        acl.update(version=3, entries=[])
        assert (await g.acheck(bob, "pangu", "/data/x", "read")).allowed
        clock.t += ACL_REFRESH_S + 0.1
        await g.acheck(bob, "pangu", "/data/x", "read")
        await asyncio.sleep(0)  # the background refresh runs
        await asyncio.sleep(0)
        assert g.acl_version == 3
        with pytest.raises(Denied):
            await g.acheck(bob, "pangu", "/data/x", "read")
    asyncio.run(go())
    assert reports and reports[-1]["who"] == "bob" and reports[-1]["result"] == "denied"
    assert bob_token not in str(reports)


def test_an_unknown_key_fetches_the_keyring_at_most_once_per_interval():
    clock = Clock()
    old = Keyring.new()
    g_ring = Keyring.from_doc(old.to_doc())
    new = Keyring.from_doc(old.to_doc())
    new.rotate(clock.t)
    calls = []

    async def fetch_keys(proof):
        calls.append(proof)
        return new.to_doc()

    g = Guard(auth_doc(True, g_ring), clock=clock, fetch_keys=fetch_keys)
    fresh = new.sign("bob", now=clock.t)

    async def go():
        assert (await g.aidentify(fresh)).user == "bob"
        assert len(calls) == 1
        # A kid nobody has: refused, and no second fetch within the interval.
        with pytest.raises(UnknownKey):
            await g.aidentify(Keyring.new().sign("eve", now=clock.t))
        assert len(calls) == 1
        clock.t += KEYS_FETCH_INTERVAL_S + 0.1
        with pytest.raises(UnknownKey):
            await g.aidentify(Keyring.new().sign("eve", now=clock.t))
        assert len(calls) == 2
    asyncio.run(go())
    assert g.identify(old.sign("bob", now=clock.t)).user == "bob"  # old keys still verify


def test_keys_are_accepted_only_from_the_platform():
    ring = Keyring.new()
    g = Guard(auth_doc(True, ring))
    new = Keyring.from_doc(ring.to_doc())
    new.rotate(1.0)
    with pytest.raises(Denied):
        g.accept_keys(ring.sign("admin", [ADMIN_GROUP], now=__import__("time").time()),
                      new.to_doc())
    assert g.accept_keys(Guard(auth_doc(True, ring)).platform_token(), new.to_doc()) == 2


def test_grants_come_from_owners_and_administrators(tmp_path):
    a = Authority(MemoryStore(), str(tmp_path / "keys.json"), None, enabled=True)
    admin = a.bootstrap()["token"]
    for u in ("bob", "carol"):
        a.add_user(admin, u, f"{u}-password")
    bob, carol = a.login("bob", "bob-password"), a.login("carol", "carol-password")
    # The default: any signed-in user may submit jobs.
    assert any(e["kind"] == "queue" for e in a.acl_show(bob)["entries"])
    a.grant(bob, "pangu", "/home/bob", "user:carol", ["read"], owner="bob")
    e = a.grant(bob, "pangu", "/home/bob", "user:carol", ["write"], owner="bob")
    assert e["perms"] == ["read", "write"]  # merged
    carol_p = a.principal(carol)
    assert a.guard.decision(carol_p, "pangu", "/home/bob/f", "write").allowed
    with pytest.raises(Denied, match="only its owner"):
        a.grant(carol, "pangu", "/home/bob", "user:carol", ["admin"], owner="bob")
    scoped = a.scoped_token(a.principal(bob), "job", "j1")
    with pytest.raises(Denied, match="job token"):
        a.grant(scoped, "pangu", "/home/bob", "user:carol", ["delete"], owner="bob")
    with pytest.raises(Denied, match="job token"):
        a.add_user(a.scoped_token(a.principal(admin), "job", "j2"), "eve", "eve-password")
    assert a.revoke(bob, "pangu", "/home/bob", "user:carol", ["write"],
                    owner="bob")["perms"] == ["read"]
    assert a.revoke(bob, "pangu", "/home/bob", "user:carol", None, owner="bob") is None
    assert not a.guard.decision(carol_p, "pangu", "/home/bob/f", "read").allowed
    with pytest.raises(BadInput, match="no ACL entry"):
        a.revoke(bob, "pangu", "/home/bob", "user:carol", None, owner="bob")
    with pytest.raises(BadInput, match="expected one of"):
        a.grant(admin, "disk", "/x", "user:carol", ["read"])
    with pytest.raises(BadInput, match="reserved"):
        a.add_user(admin, "mallory", "mallory-pw", ["platform"])
    # Restricting a Nuwa prefix closes it to the open namespace, not to its owner.
    assert a.guard.decision(carol_p, "nuwa", "/apps/bob/k", "read").allowed
    a.restrict(bob, "/apps/bob", True, owner="bob")
    assert not a.guard.decision(carol_p, "nuwa", "/apps/bob/k", "read").allowed
    assert a.guard.decision(a.principal(bob), "nuwa", "/apps/bob/k", "read", "bob").allowed
    # Platform secrets only for platform tokens.
    with pytest.raises(Denied):
        a.keys_for_platform(admin)
    assert a.keys_for_platform(a.guard.platform_token())["current"] == a.keyring.current
    v = a.guard.acl_version
    assert a.acl_for_platform(a.guard.platform_token(), v) == {"version": v, "unchanged": True}
    assert len(a.acl_for_platform(a.guard.platform_token(), v - 1)["entries"]) >= 1
    # A reload from the store sees the same entries.
    b = Authority(a.store, str(tmp_path / "keys.json"), None, enabled=True)
    assert b.acl_doc() == a.acl_doc()


def test_a_flood_of_denials_is_counted_not_sent():
    from zhongkui.guard import REPORTS_PER_S_MAX

    clock = Clock()
    ring = Keyring.new()
    sent = []
    g = Guard(auth_doc(True, ring), clock=clock, report=lambda proof, rec: sent.append(rec))
    for _ in range(1000):
        with pytest.raises(Malformed):
            g.identify("bad")
    assert len(sent) == REPORTS_PER_S_MAX and g.reports_suppressed == 1000 - REPORTS_PER_S_MAX
    clock.t += 1.0
    with pytest.raises(Malformed):
        g.identify("bad")
    assert f"{1000 - int(REPORTS_PER_S_MAX)} more denials" in sent[-1]["detail"]
    assert g.reports_suppressed == 0


def test_the_audit_file_is_rotated_at_its_limit(tmp_path):
    from zhongkui.audit import AuditLog

    path = str(tmp_path / "audit.jsonl")
    log = AuditLog(path, file_bytes_max=10_000)
    for i in range(200):
        log.record("bob", "read", f"pangu:/x/{i}", "denied", "x" * 100)
    import os

    assert os.path.getsize(path) < 10_000 + 1000 and os.path.exists(path + ".1")
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_key_push_is_concurrent_bounded_and_leaves_the_loop_free():
    """Issue 14, defect 11: FuxiMaster handed the new keys to each actor in turn, with a
    blocking wait of up to KEYS_PUSH_TIMEOUT_S each on its event loop. Now: all at once, at
    most concurrency_max in flight, a hung actor costs one timeout, and the loop runs."""
    from zhongkui.shell import push_all

    async def go():
        inflight, peak, done, ticks = [0], [0], [], []
        hang = asyncio.Event()

        async def push(handle):
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
            try:
                if handle == "stuck":
                    await hang.wait()  # a paused actor: never answers
                await asyncio.sleep(0.01)
                if handle == "broken":
                    raise RuntimeError("actor died")
                done.append(handle)
            finally:
                inflight[0] -= 1

        async def ticker():
            while True:
                ticks.append(1)
                await asyncio.sleep(0.01)
        t = asyncio.get_running_loop().create_task(ticker())
        targets = [(f"a{i}", f"h{i}") for i in range(40)] + [("s", "stuck"), ("b", "broken")]
        missed = await push_all(targets, push, concurrency_max=8, timeout_s=0.5)
        t.cancel()
        assert sorted(missed) == ["b", "s"] and len(done) == 40
        assert peak[0] <= 8
        assert len(ticks) > 5  # the loop went on serving while the push waited
    asyncio.run(go())


def test_a_refresh_already_under_way_does_not_hide_a_grant_made_meanwhile():
    """A denial asks again unless the entries were fetched for this very call: a refresh
    that was in flight when a grant was made answers with the entries from before it."""
    from zhongkui.guard import REVOCATION_CONFIRM_S

    clock = Clock()
    ring = Keyring.new()
    source = {"version": 1, "entries": [], "restricted": []}

    async def fetch_acl(proof, have_version):
        snapshot = dict(source)  # what the identity service had when asked
        await asyncio.sleep(0.05)
        return snapshot

    g = Guard(auth_doc(True, ring), clock=clock, fetch_acl=fetch_acl)
    bob = g.identify(ring.sign("bob", now=clock.t))

    async def go():
        await g.refresh_acl()
        clock.t += REVOCATION_CONFIRM_S + 0.5
        g.refresh_soon()  # under way (a busy guard's background refresh) ...
        await asyncio.sleep(0)  # it has asked
        source.update(version=2, entries=[{"kind": "pangu", "resource": "/data",
                                           "principal": "user:bob", "perms": ["read"]}])
        # ... when the grant lands and bob's call comes
        assert (await g.acheck(bob, "pangu", "/data/x", "read")).allowed
    asyncio.run(go())


def test_a_grant_just_after_another_denial_is_seen_and_a_flood_of_denials_shares_fetches():
    """The CI failure of 2 December: a call denied (and refreshed for) a moment earlier left
    the next caller's denial rate-limited, so a grant made between the two was not seen.
    Now a denial always waits for a refresh that starts after it -- shared by every call
    waiting then, at most one per ACL_DENY_REFRESH_S -- and a flood of refused calls costs
    a couple of fetches, not one each."""
    from zhongkui.guard import ACL_DENY_REFRESH_S

    clock = Clock()
    ring = Keyring.new()
    source = {"version": 1, "entries": [], "restricted": []}
    fetches = []

    async def fetch_acl(proof, have_version):
        fetches.append(have_version)
        snapshot = dict(source)
        await asyncio.sleep(0.01)
        return snapshot

    g = Guard(auth_doc(True, ring), clock=clock, fetch_acl=fetch_acl)
    carol = g.identify(ring.sign("carol", now=clock.t))
    bob = g.identify(ring.sign("bob", now=clock.t))

    async def go():
        with pytest.raises(Denied):
            await g.acheck(carol, "pangu", "/data/x", "read")  # refreshes, then denies
        source.update(version=2, entries=[{"kind": "pangu", "resource": "/data",
                                           "principal": "user:bob", "perms": ["read"]}])
        started = asyncio.get_running_loop().time()
        assert (await g.acheck(bob, "pangu", "/data/x", "read")).allowed
        assert asyncio.get_running_loop().time() - started < ACL_DENY_REFRESH_S + 1.0
        n = len(fetches)
        calls = [g.acheck(carol, "pangu", f"/data/{i}", "write") for i in range(200)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, Denied) for r in results)
        assert len(fetches) - n <= 2, fetches[n:]
    asyncio.run(go())

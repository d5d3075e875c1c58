"""Revocation revokes (issue 14, defect 5), without Ray: a guard fed by the identity service
(as every entry point's guard is, through its ACL poll) refuses, within REVOKE_WITHIN_S, a
token whose user was removed, re-created, moved out of the group that granted access or out
of ``admins``, or whose key was revoked by ``rotate-keys --revoke-old``; rotating keys any
number of times works; service tokens are signed from the directory as it is now. And the
wall clock stepping by an hour neither freezes that bound nor logs everybody out."""

from __future__ import annotations

import asyncio

import pytest

from fuxi.io.store import MemoryStore
from zhongkui.authority import Authority
from zhongkui.errors import BadCredentials, Denied, Revoked
from zhongkui.guard import (REVOCATION_CONFIRM_S, REVOKE_WITHIN_S, Guard, auth_doc,
                            require_capability, require_platform)
from zhongkui.core.tokens import KEYS_KEPT_MAX
from zhongkui.keys import Keyring


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


class World:
    """An identity service and one entry point's guard polling it, on fake clocks."""

    def __init__(self, tmp_path):
        self.store = MemoryStore()
        self.a = Authority(self.store, str(tmp_path / "keys.json"))
        self.admin = self.a.bootstrap()["token"]
        self.wall = Clock(__import__("time").time())
        self.mono = Clock(1000.0)
        self.fetches = 0

        async def fetch_acl(proof, have):
            self.fetches += 1
            return self.a.acl_for_platform(proof, have)

        async def fetch_keys(proof):
            return self.a.keys_for_platform(proof)

        self.g = Guard(auth_doc(True, self.a.keyring), name="nuwa-1", clock=self.wall,
                       monotonic=self.mono, fetch_acl=fetch_acl, fetch_keys=fetch_keys)

    def run(self, coro):
        return asyncio.run(coro)

    async def may(self, token, kind="pangu", resource="/data/x", perm="read") -> bool:
        """What an entry point does per request: identify, then decide."""
        try:
            who = await self.g.aidentify(token)
            await self.g.acheck(who, kind, resource, perm)
            return True
        except (BadCredentials, Denied):
            return False

    def later(self, s: float) -> None:
        self.mono.t += s
        self.wall.t += s


def test_a_removed_user_is_refused_within_the_bound_even_on_a_cached_principal(tmp_path):
    w = World(tmp_path)
    w.a.add_user(w.admin, "bob", "bobs-password", ["dev"])
    w.a.grant(w.admin, "pangu", "/data", "group:dev", ["read"])
    bob = w.a.login("bob", "bobs-password")

    async def go():
        assert await w.may(bob)
        cached = await w.g.aidentify(bob)  # what Nuwa and Kuafu keep per connection
        w.a.remove_user(w.admin, "bob")
        w.later(REVOKE_WITHIN_S)
        assert not await w.may(bob)
        assert not w.g.decision(cached, "pangu", "/data/x", "read").allowed
        with pytest.raises(Revoked, match="no longer exists"):
            w.g.identify(bob)
    w.run(go())
    # The identity service itself refuses at once.
    with pytest.raises(Revoked):
        w.a.whoami(bob)


def test_a_recreated_user_does_not_inherit_the_old_accounts_tokens(tmp_path):
    w = World(tmp_path)
    w.a.add_user(w.admin, "bob", "bobs-password", ["dev"])
    old = w.a.login("bob", "bobs-password")
    w.a.remove_user(w.admin, "bob")
    w.a.add_user(w.admin, "bob", "another-password", ["dev"])
    new = w.a.login("bob", "another-password")

    async def go():
        w.later(REVOKE_WITHIN_S)
        assert not await w.may(old, "nuwa", "/open/x", "write")
        assert await w.may(new, "nuwa", "/open/x", "write")
    w.run(go())
    with pytest.raises(Revoked, match="earlier account"):
        w.a.whoami(old)
    # Scoped tokens of the old account (a job's, a chunk's) are refused the same way.
    job = w.a.keyring.sign("bob", ["dev"], now=w.wall.t, scope={"kind": "job", "id": "j"},
                           gen="not-the-current-one")
    with pytest.raises(Revoked):
        w.g.identify(job)


def test_leaving_the_group_that_granted_access_or_admins_takes_effect(tmp_path):
    w = World(tmp_path)
    w.a.add_user(w.admin, "bob", "bobs-password", ["dev", "admins"])
    w.a.grant(w.admin, "pangu", "/data", "group:dev", ["read"])
    bob = w.a.login("bob", "bobs-password")  # its groups: admins, dev

    async def go():
        assert await w.may(bob, "pangu", "/secret/x", "delete")  # as an administrator
        w.a.set_groups(w.admin, "bob", ["dev"])
        w.later(REVOKE_WITHIN_S)
        assert not await w.may(bob, "pangu", "/secret/x", "delete")
        assert not (await w.g.aidentify(bob)).admin  # what Pangu's admin-only calls see
        assert await w.may(bob)
        w.a.set_groups(w.admin, "bob", [])
        w.later(REVOKE_WITHIN_S)
        assert not await w.may(bob)
    w.run(go())
    with pytest.raises(Denied, match="administrators only"):  # at the identity service too
        w.a.add_user(bob, "mallory", "mallorys-password")


def test_within_the_bound_means_confirmed_not_cached(tmp_path):
    """Without any call for a long time, the first call after a revocation must not be
    allowed on the old state while a refresh runs in the background."""
    w = World(tmp_path)
    w.a.add_user(w.admin, "bob", "bobs-password")
    bob = w.a.login("bob", "bobs-password")

    async def go():
        assert await w.may(bob, "nuwa", "/open/x", "write")
        w.later(3600)  # idle for an hour
        w.a.remove_user(w.admin, "bob")
        assert not await w.may(bob, "nuwa", "/open/x", "write")
        # ... and a busy guard does not fetch per call: once per REVOCATION_CONFIRM_S at most
        w.a.add_user(w.admin, "carol", "carols-password")
        carol = w.a.login("carol", "carols-password")
        w.later(REVOCATION_CONFIRM_S + 0.1)
        before = w.fetches
        for _ in range(100):
            assert await w.may(carol, "nuwa", "/open/x", "write")
        assert w.fetches - before == 1
    w.run(go())


def test_rotate_keys_revoke_old_refuses_old_tokens_and_cuts_off_a_guard_that_missed_it(tmp_path):
    w = World(tmp_path)
    w.a.add_user(w.admin, "bob", "bobs-password")
    bob_old = w.a.login("bob", "bobs-password")
    # A second entry point whose guard holds its own copy of the keys (as every actor does).
    missed = Guard(auth_doc(True, Keyring.from_doc(w.a.keyring.to_doc())), name="kuafu-x",
                   clock=w.wall, monotonic=w.mono,
                   fetch_acl=lambda proof, have: _async(w.a.acl_for_platform(proof, have)))
    pushed = Guard(auth_doc(True, Keyring.from_doc(w.a.keyring.to_doc())), name="pangu-x",
                   clock=w.wall, monotonic=w.mono,
                   fetch_acl=lambda proof, have: _async(w.a.acl_for_platform(proof, have)))
    proof = pushed.platform_token()
    w.a.rotate_keys(w.admin, revoke_old=True)
    pushed.accept_keys(proof, w.a.keyring.to_doc())  # FuxiMaster's push, proved with an old key
    bob_new = w.a.login("bob", "bobs-password")

    async def go():
        for g in (pushed, missed):
            w.g = g
            w.later(REVOKE_WITHIN_S)
            assert not await w.may(bob_old, "nuwa", "/open/x", "write"), g.name
        w.g = pushed
        assert await w.may(bob_new, "nuwa", "/open/x", "write")
        # The guard that missed the push cannot prove itself any more: it refuses everyone
        # (fail closed) until the keys reach it.
        w.g = missed
        assert missed.cut_off and not await w.may(bob_new, "nuwa", "/open/x", "write")
        missed.accept_keys(proof, w.a.keyring.to_doc())
        assert await w.may(bob_new, "nuwa", "/open/x", "write")
    w.run(go())
    with pytest.raises(Revoked):
        w.a.whoami(bob_old)
    with pytest.raises(Revoked):  # the admin's own old token too: log in again
        w.a.whoami(w.admin)


async def _async(v):
    return v


def test_rotation_never_fails_however_often(tmp_path):
    w = World(tmp_path)
    for i in range(3 * KEYS_KEPT_MAX + 1):  # the 17th rotation used to fail
        w.admin = w.a.login("admin", _admin_password(w)) if i % 5 == 0 else w.admin
        w.a.rotate_keys(w.admin)
        assert len(w.a.keyring.keys) <= KEYS_KEPT_MAX
    tok = w.a.login("admin", _admin_password(w))
    assert w.a.whoami(tok)["user"] == "admin"
    assert Authority(w.store, str(tmp_path / "keys.json")).whoami(tok)["user"] == "admin"


def _admin_password(w) -> str:
    if not hasattr(w, "_pw"):
        w._pw = "the-admins-new-password"
        w.a.set_password(w.admin, "admin", w._pw)
    return w._pw


def test_service_tokens_follow_the_directory_not_what_was_stored(tmp_path):
    w = World(tmp_path)
    w.a.add_user(w.admin, "bob", "bobs-password", ["dev", "ops"])
    tok = w.a.scoped_token("bob", "service", "echo")
    assert set(w.a.whoami(tok)["groups"]) == {"dev", "ops"}
    w.a.set_groups(w.admin, "bob", ["dev"])
    assert w.a.whoami(w.a.scoped_token("bob", "service", "echo"))["groups"] == ["dev"]
    assert w.a.whoami(tok)["groups"] == ["dev"]  # the old one decides with today's groups
    w.a.remove_user(w.admin, "bob")
    with pytest.raises(Denied, match="no longer exists"):
        w.a.scoped_token("bob", "service", "echo")
    with pytest.raises(Revoked):
        w.a.whoami(tok)


def test_a_wall_clock_stepped_an_hour_either_way(tmp_path):
    """Token checks on the wall clock, ages on the monotonic one: a step back must not log
    everybody out (their tokens' iat is then 'in the future') nor freeze revocation (the
    entries' age would be negative for an hour); a step forward ends tokens early, as their
    expiry says, and floods nothing."""
    w = World(tmp_path)
    w.a.add_user(w.admin, "bob", "bobs-password")
    bob = w.a.login("bob", "bobs-password")
    reports = []
    w.g.report = lambda proof, rec: reports.append(rec)

    async def go():
        assert await w.may(bob, "nuwa", "/open/x", "write")
        w.wall.t -= 3600  # stepped back
        assert await w.may(bob, "nuwa", "/open/x", "write")
        w.a.remove_user(w.admin, "bob")
        w.mono.t += REVOKE_WITHIN_S
        assert not await w.may(bob, "nuwa", "/open/x", "write")
        # the denial trail's rate limit is not frozen by the step either
        n = len(reports)
        w.mono.t += 1.0
        assert not await w.may(bob, "nuwa", "/open/x", "write")
        assert len(reports) > n
        w.a.add_user(w.admin, "carol", "carols-password")
        carol = w.a.login("carol", "carols-password")
        w.wall.t += 2 * 3600  # stepped forward an hour past the real time
        w.mono.t += REVOKE_WITHIN_S
        assert await w.may(carol, "nuwa", "/open/x", "write")  # 12 h tokens outlive it
        w.wall.t += 12 * 3600
        assert not await w.may(carol, "nuwa", "/open/x", "write")  # expired, as it says
    w.run(go())


def test_actor_method_checks_deny_by_default(tmp_path):
    w = World(tmp_path)
    w.a.add_user(w.admin, "bob", "bobs-password")
    bob = w.a.login("bob", "bobs-password")
    for cred in (None, "", "garbage", bob, bob + "=", w.a.scoped_token("bob", "job", "j")):
        with pytest.raises((BadCredentials, Denied)):
            require_platform(w.g, cred, "stop a Nuwa replica")
    with pytest.raises(Denied):
        require_platform(w.g, w.admin, "stop a Nuwa replica")  # admin_ok not given
    assert require_platform(w.g, w.admin, "stop every job", admin_ok=True).user == "admin"
    assert require_platform(w.g, w.g.platform_token(), "stop a Nuwa replica").platform
    assert require_platform(Guard(None), None, "anything") is None  # access control off
    require_capability("", None, "exchange")  # no token: access control off
    require_capability("job-token", "job-token", "exchange")
    for bad in (None, "", "job-token=", "other", 7):
        with pytest.raises(Denied):
            require_capability("job-token", bad, "exchange")


def test_chunk_access_tokens_end_with_the_account_or_groups_they_were_decided_on(tmp_path):
    """What a chunkserver checks: an access token minted while the user was an
    administrator (or in the group that granted the read) stops working once that ends."""
    w = World(tmp_path)
    w.a.add_user(w.admin, "bob", "bobs-password", ["admins"])
    bob = w.a.login("bob", "bobs-password")

    async def go():
        who = await w.g.aidentify(bob)
        access = w.a.keyring.sign("bob", (), now=w.wall.t, ttl_s=600, gen=w.g.chunk_gen(who),
                                  scope={"kind": "chunk", "id": "c1", "mode": "r"})
        assert (await w.g.aidentify(access)).scope["id"] == "c1"
        w.a.set_groups(w.admin, "bob", [])
        w.later(REVOKE_WITHIN_S)
        with pytest.raises(Revoked):
            await w.g.aidentify(access)
        who = await w.g.aidentify(bob)  # a fresh one works, until the account goes
        access = w.a.keyring.sign("bob", (), now=w.wall.t, ttl_s=600, gen=w.g.chunk_gen(who),
                                  scope={"kind": "chunk", "id": "c1", "mode": "r"})
        assert (await w.g.aidentify(access)).user == "bob"
        w.a.remove_user(w.admin, "bob")
        w.later(REVOKE_WITHIN_S)
        with pytest.raises(Revoked):
            await w.g.aidentify(access)
    w.run(go())


def test_a_user_added_since_the_last_poll_is_not_taken_for_a_removed_one(tmp_path):
    w = World(tmp_path)

    async def go():
        assert await w.may(w.admin, "nuwa", "/open/x", "write")  # the guard has polled
        w.a.add_user(w.admin, "newbie", "newbies-password")
        newbie = w.a.login("newbie", "newbies-password")
        assert await w.may(newbie, "nuwa", "/open/x", "write")  # asks again, finds them
        cached = w.g.identify(newbie)
        w.a.remove_user(w.admin, "newbie")
        w.a.add_user(w.admin, "newbie", "newbies-password")
        w.later(REVOKE_WITHIN_S)
        with pytest.raises(Denied, match="earlier account"):
            await w.g.acheck(cached, "nuwa", "/open/x", "write")
    w.run(go())

"""FuxiMaster's part of Zhongkui once the authority is its own actor (issue 15), without Ray:
its ``Delegate`` decides on what the authority pushed (``accept_acl``, platform proofs only),
signs its jobs' tokens from the identities as pushed -- refusing a user it does not know, and
signing nothing before it learned any -- and its denials go to the authority's trail."""

from __future__ import annotations

import pytest

from fuxi.io.store import MemoryStore
from zhongkui.authority import Authority
from zhongkui.errors import BadCredentials, Denied, Revoked
from zhongkui.guard import Guard, auth_doc
from zhongkui.shell import Delegate


@pytest.fixture
def world(tmp_path):
    a = Authority(MemoryStore(), str(tmp_path / "keys.json"))
    admin = a.bootstrap()["token"]
    trail = []
    g = Guard(auth_doc(True, a.keyring), name="master",
              report=lambda proof, rec: trail.append(rec))
    d = Delegate(g)
    return a, admin, d, trail


def push(a, d):
    return d.guard.accept_acl(a.guard.platform_token(), a.acl_doc())


def test_nothing_is_signed_before_identities_are_learned(world):
    a, admin, d, _ = world
    with pytest.raises(Denied, match="no longer exists"):
        d.scoped_token("admin", "job", "j1")
    push(a, d)
    tok = d.scoped_token(d.principal(admin), "job", "j1")
    c = a.verify(tok)
    assert (c.user, c.scope) == ("admin", {"kind": "job", "id": "j1"})


def test_a_push_counts_at_once(world):
    a, admin, d, _ = world
    push(a, d)
    a.add_user(admin, "bob", "bobs-password", ["dev"])
    bob = a.login("bob", "bobs-password")
    with pytest.raises(BadCredentials):  # not pushed yet: unknown here
        d.principal(bob)
    push(a, d)
    who = d.principal(bob)
    assert who.user == "bob" and a.verify(d.scoped_token(who, "job", "j")).groups == ("dev",)
    a.remove_user(admin, "bob")
    push(a, d)
    with pytest.raises(Revoked):
        d.principal(bob)
    with pytest.raises(Denied):
        d.scoped_token("bob", "job", "j2")


@pytest.mark.parametrize("proof", ["", "not-a-token", "user"])
def test_only_the_platform_may_push(world, proof):
    a, admin, d, _ = world
    push(a, d)
    a.add_user(admin, "bob", "bobs-password")
    cred = a.login("bob", "bobs-password") if proof == "user" else proof
    before = d.guard.acl_version
    forged = {"version": before + 100, "entries": [], "restricted": [],
              "identities": {"users": {}, "revoked_keys": []}}
    with pytest.raises((BadCredentials, Denied)):
        d.guard.accept_acl(cred, forged)
    assert d.guard.acl_version == before


def test_denials_reach_the_trail(world):
    a, admin, d, trail = world
    push(a, d)
    a.add_user(admin, "bob", "bobs-password")
    push(a, d)
    who = d.principal(a.login("bob", "bobs-password"))
    with pytest.raises(Denied):
        d.check(who, "job", "someone-elses", "cancel", owner="carol")
    d.audit.record("bob", "sync", "job:x", "denied", "not the job's own token")
    assert [r["result"] for r in trail] == ["denied", "denied"]
    assert trail[0]["who"] == "bob" and "at master" in trail[0]["detail"]


def test_with_access_control_off_every_caller_is_the_operator(tmp_path):
    a = Authority(MemoryStore(), str(tmp_path / "keys.json"), enabled=False)
    d = Delegate(Guard(auth_doc(False, None), name="master", keyring=a.keyring))
    assert d.principal(None).admin and d.scoped_token("operator", "job", "j") == ""
    assert d.guard.accept_acl("", {"version": 5, "entries": []}) == -1

"""The identity service around the cores: keys on disk (0600) that survive a restart, the
first administrator, logins, admin-only operations, rotation, and the audit trail."""

from __future__ import annotations

import os

import pytest

from fuxi.io.store import MemoryStore
from zhongkui.authority import Authority
from zhongkui.errors import BadCredentials, BadInput, Denied


def test_authority(tmp_path):
    store = MemoryStore()
    keys = str(tmp_path / "zk" / "keys.json")
    a = Authority(store, keys, str(tmp_path / "zk" / "audit.jsonl"))
    assert oct(os.stat(keys).st_mode & 0o777) == "0o600"
    creds = a.bootstrap()
    assert creds["user"] == "admin" and a.bootstrap() is None  # only once
    admin = creds["token"]
    assert a.whoami(admin)["groups"] == ["admins"]
    a.add_user(admin, "bob", "bobs-password", ["dev"])
    bob = a.login("bob", "bobs-password")
    with pytest.raises(Denied, match="administrators only"):
        a.add_user(bob, "carol", "carols-password")
    with pytest.raises(BadCredentials):
        a.login("bob", "wrong-password")
    with pytest.raises(BadCredentials):
        a.add_user(bob[:-3] + "AAA", "carol", "carols-password")
    a.set_password(bob, "bob", "new-bobs-password")
    with pytest.raises(Denied):
        a.set_password(bob, "admin", "taken-over!")
    with pytest.raises(BadInput, match="themselves"):
        a.remove_user(admin, "admin")
    # A restart (same store, same key file) keeps users and keys: old tokens stay valid.
    b = Authority(store, keys, str(tmp_path / "zk" / "audit.jsonl"))
    assert b.whoami(bob)["user"] == "bob"
    b.rotate_keys(admin)
    assert b.whoami(bob)["user"] == "bob"  # signed by the old key, still valid
    assert b.whoami(b.login("bob", "new-bobs-password"))["key_id"] != b.whoami(bob)["key_id"]
    trail = open(tmp_path / "zk" / "audit.jsonl").read()
    assert "denied" in trail and "bobs-password" not in trail and bob not in trail
    assert any(r["result"] == "denied" for r in a.audit_records(admin))
    with pytest.raises(Denied):
        a.audit_records(bob)


def test_an_operation_done_elsewhere_is_approved_for_administrators_only_and_recorded(tmp_path):
    """``fuxi debug kill`` asks the authority before it kills: with access control on only an
    administrator (with an unscoped token) may; every answer is in the audit trail."""
    a = Authority(MemoryStore(), None, str(tmp_path / "audit.jsonl"), enabled=True)
    admin = a.bootstrap()["token"]
    a.add_user(admin, "bob", "bobs-password", ["dev"])
    bob = a.login("bob", "bobs-password")
    assert a.approve_admin(admin, "kill jobmaster", "job:j-1") == "admin"
    for token in (bob, None, "", "garbage", 42, bob[:-3] + "AAA"):
        with pytest.raises((Denied, BadCredentials)):
            a.approve_admin(token, "kill node", "node:abcd")
    scoped = a.scoped_token("admin", "job", "j-1", ttl_s=60)
    with pytest.raises(Denied, match="token may not"):
        a.approve_admin(scoped, "kill master", "fuxi:FuxiMaster")
    recs = a.audit_records(admin)
    assert any(r["action"] == "kill jobmaster" and r["result"] == "ok" and r["who"] == "admin"
               for r in recs), recs
    assert any(r["who"] == "bob" and r["action"] == "kill node" and r["result"] == "denied"
               for r in recs), recs
    # Access control off: anyone who can run the command is the operator; still recorded.
    off = Authority(MemoryStore(), None, None, enabled=False)
    assert off.approve_admin(None, "kill master", "fuxi:FuxiMaster") == "operator"
    assert off.approve_admin("garbage", "k" * 500, "r" * 5000) == "operator"
    assert [len(r["action"]) for r in off.audit.query()][-1] <= 64

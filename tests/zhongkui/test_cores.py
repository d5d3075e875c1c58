"""Zhongkui's pure cores: passwords, tokens and key rotation, ACL decisions, audit redaction,
the user directory."""

from __future__ import annotations

import json
import os
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.io.store import MemoryStore
from zhongkui.core import acl
from zhongkui.audit import AuditLog, redact
from zhongkui.core.directory import Directory
from zhongkui.errors import BadCredentials, BadInput, BadSignature, Expired, Malformed, UnknownKey
from zhongkui.core.passwords import hash_password, verify_password
from zhongkui.core.tokens import _b64d, _b64e
from zhongkui.keys import Keyring


def test_passwords_are_salted_slow_hashes():
    a, b = (hash_password("correct horse", os.urandom(16)),
            hash_password("correct horse", os.urandom(16)))
    assert a != b and a.startswith("scrypt$") and "correct" not in a
    assert verify_password("correct horse", a) and not verify_password("correct hors", a)
    assert not verify_password("x", "not a hash") and not verify_password("x" * 10, "")
    with pytest.raises(BadInput, match="at least 8"):
        hash_password("short", os.urandom(16))


def test_tokens_verify_expire_and_carry_scope():
    k = Keyring.new()
    t = k.sign("alice", ["ops", "dev"], now=100.0, ttl_s=60, scope={"kind": "job", "id": "j1"})
    c = k.verify(t, now=120.0)
    assert (c.user, c.groups, c.scope) == ("alice", ("dev", "ops"), {"kind": "job", "id": "j1"})
    with pytest.raises(Expired):
        k.verify(t, now=161.0)
    for bad in ("", "x", "a.b.c", "!!!.???", None, "x" * 5000):
        with pytest.raises(Malformed):
            k.verify(bad, now=120.0)
    with pytest.raises(UnknownKey):
        Keyring.new().verify(t, now=120.0)  # another cluster's keys


def test_a_forged_payload_fails_the_signature():
    k = Keyring.new()
    head, sig = k.sign("bob", [], now=0.0).split(".")
    payload = json.loads(_b64d(head))
    payload["grp"] = ["admins"]  # promote ourselves
    forged = _b64e(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(BadSignature):
        k.verify(f"{forged}.{sig}", now=1.0)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 255))
def test_any_changed_byte_is_refused(pos, delta):
    k = Keyring.new()
    t = k.sign("carol", ["g"], now=0.0)
    i = pos % len(t)
    changed = t[:i] + chr((ord(t[i]) + delta) % 128 or 1) + t[i + 1:]
    if changed == t:
        return
    with pytest.raises(BadCredentials):  # strict base64url: no second text for one token
        k.verify(changed, now=1.0)


def test_rotation_keeps_old_tokens_until_retired():
    k = Keyring.new()
    old = k.sign("dave", [], now=0.0, ttl_s=100)
    k.rotate(now=10.0)
    new = k.sign("dave", [], now=10.0, ttl_s=100)
    assert k.verify(old, 50.0).key_id != k.verify(new, 50.0).key_id
    assert k.retire(now=20.0, older_than_s=100) == []  # old tokens may still be alive
    assert len(k.retire(now=200.0, older_than_s=100)) == 1
    with pytest.raises(UnknownKey):
        k.verify(old, 50.0)
    back = Keyring.from_doc(json.loads(json.dumps(k.to_doc())))
    assert back.verify(new, 50.0).user == "dave"


def test_acl_decisions():
    e = [acl.Entry.make("pangu", "/data/", "group:analysts", {"read"}),
         acl.Entry.make("pangu", "/data/raw", "user:eve", {"admin"}),
         acl.Entry.make("service", "wordfreq", "*", {"call"}),
         acl.Entry.make("job", "*", "group:ops", {"view", "cancel"})]
    d = acl.decide
    assert d(e, "zed", ["analysts"], "pangu", "/data/x.csv", "read").allowed
    assert not d(e, "zed", ["analysts"], "pangu", "/data/x.csv", "write").allowed
    assert not d(e, "zed", ["analysts"], "pangu", "/database", "read").allowed  # not a prefix
    assert d(e, "eve", [], "pangu", "/data/raw/a", "delete").allowed  # admin holds all
    assert d(e, "anyone", [], "service", "wordfreq", "call").allowed
    assert not d(e, "anyone", [], "service", "wordfreq", "manage").allowed
    assert d(e, "olga", ["ops"], "job", "j-1", "cancel").allowed
    assert not d(e, "olga", ["dev"], "job", "j-1", "cancel").allowed
    assert d(e, "owner", [], "job", "j-2", "cancel", owner="owner").reason == "owner"
    assert d([], "root", ["admins"], "nuwa", "/zhongkui/users/x", "write").allowed
    # The seed's open Nuwa namespace, but not the platform's own prefixes, nor a restricted one.
    assert d([], "u", [], "nuwa", "/app/config", "write").allowed
    assert not d([], "u", [], "nuwa", "/fuxi/jobs/x", "read").allowed
    assert not d([], "u", [], "nuwa", "/app/secret/k", "read", restricted=["/app/secret"]).allowed
    assert not d([], "u", [], "nuwa", "/app/x", "admin").allowed
    for bad in (("pangu", "rel/path", "*", {"read"}), ("nuwa", "/x", "user:", {"read"}),
                ("service", "s", "*", {"read"}), ("gpu", "/x", "*", {"read"})):
        with pytest.raises(BadInput):
            acl.Entry.make(*bad)


def test_audit_never_keeps_secrets(tmp_path):
    k = Keyring.new()
    token = k.sign("mallory", [], now=time.time())
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    log.record("mallory", f"login with token {token}", "/x", "denied",
               detail="password=hunter2222 key: abcdef")
    text = (tmp_path / "audit.jsonl").read_text() + json.dumps(list(log.records))
    assert token not in text and "hunter2222" not in text and "abcdef" not in text
    assert log.query(result="denied")[0]["who"] == "mallory"
    assert redact("nothing secret here") == "nothing secret here"


def test_directory():
    d = Directory(MemoryStore(), random.Random(7).randbytes)
    u = d.add_user("alice", "wonderland1", ["dev"], now=1000.0)
    assert u == {"name": "alice", "groups": ["dev"], "created_at": u["created_at"]}
    with pytest.raises(BadInput, match="exists"):
        d.add_user("alice", "another-one", (), now=1001.0)
    assert d.authenticate("alice", "wonderland1")["groups"] == ["dev"]
    for name, pw in (("alice", "wrong-password"), ("nobody", "wonderland1"), ("Bad Name", "x")):
        with pytest.raises(BadCredentials, match="wrong user name or password"):
            d.authenticate(name, pw)
    d.set_password("alice", "through-the-glass")
    assert d.authenticate("alice", "through-the-glass")
    assert d.set_groups("alice", ["ops", "dev"])["groups"] == ["dev", "ops"]
    assert [x["name"] for x in d.list_users()] == ["alice"]
    assert "password" not in json.dumps(d.list_users())
    d.remove_user("alice")
    with pytest.raises(BadInput):
        d.remove_user("alice")

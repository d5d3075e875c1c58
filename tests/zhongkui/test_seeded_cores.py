"""The pure cores take their randomness and time from the caller (issue 15): the same seed
gives the same keys, tokens, salts and account generations; a core given no randomness
refuses to make a secret instead of inventing one; production keyrings draw from the OS."""

from __future__ import annotations

import random
import secrets

import pytest

from fuxi.io.store import MemoryStore
from zhongkui.core import tokens
from zhongkui.core.directory import Directory
from zhongkui.core.passwords import SALT_BYTES, hash_password, verify_password
from zhongkui.keys import Keyring


def _ring(seed: int) -> tokens.Keyring:
    return tokens.Keyring.new(random.Random(seed).randbytes)


@pytest.mark.parametrize("seed", [0, 1, 2024])
def test_a_seed_replays_keys_and_tokens(seed):
    a, b = _ring(seed), _ring(seed)
    assert a.to_doc() == b.to_doc()
    assert a.sign("bob", ["dev"], now=100.0) == b.sign("bob", ["dev"], now=100.0)
    assert a.rotate(200.0) == b.rotate(200.0)
    assert a.to_doc() == b.to_doc() != _ring(seed + 1).to_doc()
    assert a.verify(b.sign("bob", now=300.0), 301.0).user == "bob"


@pytest.mark.parametrize("what", ["new", "rotate", "sign"])
def test_a_keyring_without_randomness_makes_no_secret(what):
    verify_only = tokens.Keyring.from_doc(_ring(3).to_doc())
    token = _ring(3).sign("bob", now=10.0)
    assert verify_only.verify(token, 11.0).user == "bob"  # verifying needs none
    with pytest.raises(ValueError, match="randomness"):
        {"new": lambda: tokens.Keyring.new(),
         "rotate": lambda: verify_only.rotate(20.0),
         "sign": lambda: verify_only.sign("bob", now=20.0)}[what]()


@pytest.mark.parametrize("rand,error", [
    (lambda n: b"x" * (n - 1), "length"),
    (lambda n: "x" * n, "length"),
])
def test_a_bad_source_of_randomness_is_refused(rand, error):
    with pytest.raises(ValueError, match=error):
        tokens.Keyring.new(rand)


def test_the_platform_keyring_draws_from_the_os():
    k = Keyring.new()
    assert k.rand is secrets.token_bytes
    assert Keyring.from_doc(k.to_doc()).rand is secrets.token_bytes
    assert Keyring.new().to_doc()["keys"] != k.to_doc()["keys"]


@pytest.mark.parametrize("salt", [b"", b"short", None, "a" * SALT_BYTES])
def test_a_password_needs_a_real_salt(salt):
    with pytest.raises(ValueError, match="salt"):
        hash_password("long enough pw", salt)


def test_a_salt_is_the_callers():
    salt = random.Random(5).randbytes(SALT_BYTES)
    assert hash_password("long enough pw", salt) == hash_password("long enough pw", salt)
    assert verify_password("long enough pw", hash_password("long enough pw", salt))


def test_the_directory_replays_from_its_seed():
    docs = []
    for _ in range(2):
        store = MemoryStore()
        d = Directory(store, random.Random(11).randbytes)
        d.add_user("alice", "wonderland1", ["dev"], now=42.0)
        docs.append(store.get("/zhongkui/users/alice"))
    assert docs[0] == docs[1] and docs[0]["created_at"] == 42.0 and len(docs[0]["gen"]) == 16

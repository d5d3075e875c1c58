"""The cluster's Nuwa peer secret on disk (``nuwa.group``): created once, 0600 in a 0700
directory, refused when readable by others or malformed, and never in a group's record or
repr. (No Ray is started: only the file handling and the Group dataclass are used.)"""

from __future__ import annotations

import os
import stat
import threading

import pytest

from nuwa.group import (
    Group,
    PeerSecretError,
    load_or_create_peer_secret,
    load_peer_secret,
    peer_secret_path,
)


def test_created_once_private_and_stable(tmp_path):
    s1 = load_or_create_peer_secret(str(tmp_path))
    path = peer_secret_path(str(tmp_path))
    assert len(s1) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert load_or_create_peer_secret(str(tmp_path)) == s1 == load_peer_secret(str(tmp_path))
    assert load_or_create_peer_secret(str(tmp_path / "other")) != s1  # per cluster
    assert [n for n in os.listdir(os.path.dirname(path))] == ["peer.secret"]  # no temp files


def test_concurrent_creators_agree(tmp_path):
    got: list[bytes] = []
    threads = [threading.Thread(target=lambda: got.append(load_or_create_peer_secret(str(tmp_path))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(got) == 8 and len(set(got)) == 1


def test_readable_by_others_or_malformed_is_refused(tmp_path):
    with pytest.raises(PeerSecretError, match="no Nuwa peer secret"):
        load_peer_secret(str(tmp_path))
    load_or_create_peer_secret(str(tmp_path))
    path = peer_secret_path(str(tmp_path))
    os.chmod(path, 0o644)
    with pytest.raises(PeerSecretError, match="mode 0644; expected 0600"):
        load_peer_secret(str(tmp_path))
    os.chmod(path, 0o600)
    with open(path, "wb") as f:
        f.write(b"short")
    with pytest.raises(PeerSecretError, match="holds 5 bytes; expected 32"):
        load_peer_secret(str(tmp_path))


def test_never_in_the_group_record_or_repr(tmp_path):
    secret = load_or_create_peer_secret(str(tmp_path))
    g = Group(namespace="ns", data_dir=str(tmp_path), voters=[1, 2, 3], nodes={}, host="node",
              peer_secret=secret)
    for text in (repr(g), str(g.to_dict())):
        assert secret.hex() not in text and repr(secret) not in text
    again = Group.from_dict(g.to_dict())
    assert again.host == "node" and again.peer_secret is None
    assert again._peer_secret() == secret  # read back from the file by the supervisor

"""The Nuwa namespace state machine: paths, node operations, sessions, txns, watch history,
snapshots, and the one property everything rests on — same commands, same state."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nuwa.core import commands as C
from nuwa import errors as E
from nuwa.core.paths import KIND_DIR, KIND_FILE, validate_path
from nuwa.core.tree import (
    SEQUENCE_MAX, VALUE_BYTES_MAX, Tree, TreeLimits, decode_command, encode_command,
)

U = "alice"


def ok(tree: Tree, cmd: dict) -> dict:
    result = tree.apply(cmd)
    assert "error" not in result, result
    return result


def err(tree: Tree, cmd: dict, error_type: str, *fragments: str) -> dict:
    before_rev, before = tree.revision, tree.snapshot()
    result = tree.apply(cmd)
    assert "error" in result, result
    assert result["error"]["type"] == error_type, result
    for f in fragments:
        assert f in result["error"]["message"], (f, result["error"]["message"])
    # A refused command leaves no trace.
    assert tree.revision == before_rev == result["revision"]
    assert tree.snapshot() == before
    return result["error"]


def tree_with(*paths: str) -> Tree:
    t = Tree()
    for p in paths:
        ok(t, C.create(p, b"v" if not p.endswith("/") else b"", creator=U))
    return t


# ---------------------------------------------------------------------------- paths

BAD_PATHS = [
    # (path, kind, words the message must contain)
    ("a/b", "any", ["relative", "absolute"]),
    ("", "any", ["empty path"]),
    ("/a//b", "any", ["empty component", "'//'"]),
    ("//", "any", ["empty component"]),
    ("/a/./b", "any", ["'.'", "no relative names"]),
    ("/a/../b", "any", ["'..'", "no relative names"]),
    ("/..", "any", ["'..'"]),
    ("/a\nb", "any", ["control character U+000A"]),
    ("/a\x00", "any", ["control character U+0000"]),
    ("/a\x7f", "any", ["control character U+007F"]),
    ("/" + "x" * 256, "any", ["256 bytes", "COMPONENT_BYTES_MAX=255"]),
    ("/" + "é" * 128, "any", ["256 bytes"]),                  # 128 chars, 256 UTF-8 bytes
    ("/" + "/".join(["abcdefgh"] * 500), "any", ["PATH_BYTES_MAX=4096"]),
    ("/a\udc80", "any", ["UTF-8"]),
    (b"/a", "any", ["str, got bytes"]),
    (None, "any", ["str, got NoneType"]),
    ("/a/", KIND_FILE, ["where a file is expected", "'/a'"]),
    ("/", KIND_FILE, ["where a file is expected"]),
    ("/a", KIND_DIR, ["where a directory is expected", "'/a/'"]),
]


@pytest.mark.parametrize("path,kind,words", BAD_PATHS)
def test_bad_paths_are_refused_saying_why(path, kind, words):
    with pytest.raises(E.BadPath) as info:
        validate_path(path, kind)
    for w in words:
        assert w in str(info.value)
    assert "expected" in str(info.value)


@pytest.mark.parametrize("path", ["/", "/a", "/a/", "/a/b/c", "/服务/副本1", "/a b/c-d_e.f",
                                  "/" + "x" * 255, "/.hidden", "/a.../"])
def test_good_paths_pass(path):
    assert validate_path(path) == path


@pytest.mark.parametrize("cmd,words", [
    (C.create("rel", creator=U), ["relative"]),
    (C.create("/a//b", creator=U), ["'//'"]),
    (C.set_value("/a/", b"x"), ["where a file is expected"]),
    (C.delete("/x/../y"), ["'..'"]),
])
def test_commands_with_bad_paths_are_refused(cmd, words):
    t = Tree()
    e = err(t, cmd, "BadPath", *words)
    assert e["path"] == cmd["path"]


def test_reads_refuse_bad_paths():
    t = tree_with("/a/", "/a/f")
    with pytest.raises(E.BadPath):
        t.get("a")
    with pytest.raises(E.BadPath, match="where a directory is expected"):
        t.list("/a")
    with pytest.raises(E.BadPath):
        t.exists("/a//f")


# ---------------------------------------------------------------------------- node operations

def test_create_get_set_delete_list_stat_exists():
    t = Tree()
    assert t.revision == 0 and t.list("/") == [] and t.exists("/")
    r = ok(t, C.create("/services/", creator="fuximaster"))
    assert r["path"] == "/services/" and r["revision"] == 1
    r = ok(t, C.create("/services/kv", b"tcp://h:1", creator="replica1"))
    assert r["stat"] == {"creator": "replica1", "created_rev": 2, "modified_rev": 2,
                         "version": 0, "ephemeral_session": None, "children": 0, "data_len": 9}
    ok(t, C.create("/services/sub/", creator=U))
    assert t.list("/") == ["services/"]
    assert t.list("/services/") == ["kv", "sub/"]
    value, stat = t.get("/services/kv")
    assert value == b"tcp://h:1" and stat.creator == "replica1" and stat.version == 0
    assert t.stat("/services/").children == 2 and t.get("/services/")[0] == b""

    r = ok(t, C.set_value("/services/kv", b"tcp://h:2"))
    assert r["stat"]["version"] == 1 and r["stat"]["modified_rev"] == 4 == r["revision"]
    value, stat = t.get("/services/kv")
    assert value == b"tcp://h:2" and stat.created_rev == 2 and stat.creator == "replica1"

    r = ok(t, C.delete("/services/kv"))
    assert r["deleted"] == ["/services/kv"]
    assert not t.exists("/services/kv") and t.exists("/services/")
    with pytest.raises(E.NoNode, match="/services/kv does not exist"):
        t.get("/services/kv")
    with pytest.raises(E.NoNode):
        t.stat("/nope/")
    assert t.validate_state() == []


def test_create_needs_the_parent_directory_unless_parents():
    t = Tree()
    e = err(t, C.create("/a/b/c", creator=U), "NoNode", "parent directory /a/b/ does not exist",
            "parents=True")
    assert e["path"] == "/a/b/"
    r = ok(t, C.create("/a/b/c", b"x", creator=U, parents=True))
    assert r["revision"] == 1
    assert t.list("/a/") == ["b/"] and t.get("/a/b/c")[0] == b"x"
    assert t.stat("/a/").creator == U
    # One revision, three created events, parents first.
    assert [(ev.revision, ev.type, ev.path) for ev in t.events_since(0, "/", recursive=True)] == [
        (1, "created", "/a/"), (1, "created", "/a/b/"), (1, "created", "/a/b/c")]
    # parents=True on existing parents just creates the leaf.
    ok(t, C.create("/a/b/d", creator=U, parents=True))
    err(t, C.create("/a/b/d", creator=U, parents=True), "NodeExists")


def test_a_name_is_a_file_or_a_directory_not_both():
    t = tree_with("/a/", "/a/f", "/a/d/")
    err(t, C.create("/a/f/", creator=U), "NodeExists", "/a/f exists")
    err(t, C.create("/a/d", creator=U), "NodeExists", "/a/d/ exists")
    err(t, C.create("/a/f/x", creator=U), "NotADirectory", "/a/f is a file")
    err(t, C.create("/a/f/x/y", creator=U, parents=True), "NotADirectory", "/a/f is a file")
    err(t, C.set_value("/a/d", b"x"), "IsADirectory", "/a/d/ is a directory")
    with pytest.raises(E.NotADirectory):
        t.list("/a/f/")
    with pytest.raises(E.IsADirectory):
        t.get("/a/d")
    assert not t.exists("/a/f/") and not t.exists("/a/d")


def test_directories_have_no_value_and_root_is_permanent():
    t = Tree()
    err(t, C.create("/d/", b"x", creator=U), "BadRequest", "directories have no value")
    err(t, C.create("/", creator=U), "NodeExists", "root")
    err(t, C.delete("/", recursive=True), "BadRequest", "root")


def test_delete_non_empty_directory_needs_recursive():
    t = tree_with("/a/", "/a/b/", "/a/b/x", "/a/c", "/a/b/y/")
    err(t, C.delete("/a/"), "NotEmpty", "2 children", "recursive=True")
    r = ok(t, C.delete("/a/", recursive=True))
    assert r["deleted"] == ["/a/c", "/a/b/y/", "/a/b/x", "/a/b/", "/a/"]  # deepest first
    assert t.list("/") == []
    evs = t.events_since(r["revision"] - 1, "/", recursive=True)
    assert [(e.type, e.path) for e in evs] == [("deleted", p) for p in r["deleted"]]
    assert {e.revision for e in evs} == {r["revision"]}
    assert t.validate_state() == []


def test_versions_and_compare_and_set():
    t = tree_with("/a/", "/a/f")
    ok(t, C.set_value("/a/f", b"1", expected_version=0))
    ok(t, C.set_value("/a/f", b"2", expected_version=1))
    e = err(t, C.set_value("/a/f", b"3", expected_version=1), "BadVersion",
            "expected version 1, found version 2")
    assert (e["expected_version"], e["actual_version"]) == (1, 2)
    ok(t, C.set_value("/a/f", b"same"))             # None: any version
    assert t.stat("/a/f").version == 3
    err(t, C.delete("/a/f", expected_version=0), "BadVersion")
    ok(t, C.delete("/a/f", expected_version=3))
    err(t, C.set_value("/a/f", b"x"), "NoNode")
    err(t, C.set_value("/a/g", b"x", expected_version=-1), "BadRequest", "version >= 0")


def test_sequential_names_are_per_parent_zero_padded_and_never_reused():
    t = tree_with("/q/", "/r/")
    names = [ok(t, C.create("/q/job-", creator=U, sequential=True))["path"] for _ in range(3)]
    assert names == ["/q/job-0000000000", "/q/job-0000000001", "/q/job-0000000002"]
    ok(t, C.delete("/q/job-0000000002"))
    assert ok(t, C.create("/q/x", creator=U, sequential=True))["path"] == "/q/x0000000003"
    # A directory path: the suffix goes on its last name, counted by its parent (here /).
    assert ok(t, C.create("/r/", creator=U, sequential=True))["path"] == "/r0000000000/"
    assert ok(t, C.create("/r/d/", creator=U, sequential=True))["path"] == "/r/d0000000000/"
    assert ok(t, C.create("/r/e", creator=U, sequential=True))["path"] == "/r/e0000000001"
    # A failed sequential create does not use up a number.
    err(t, C.create("/r/v", b"x" * (VALUE_BYTES_MAX + 1), creator=U, sequential=True),
        "ValueTooLarge")
    assert ok(t, C.create("/r/v", creator=U, sequential=True))["path"] == "/r/v0000000002"
    assert t.list("/r/") == ["d0000000000/", "e0000000001", "v0000000002"]
    # The suffix counts towards the component limit.
    err(t, C.create("/r/" + "n" * 250, creator=U, sequential=True), "BadPath",
        "COMPONENT_BYTES_MAX")


def test_sequence_numbers_run_out_loudly():
    t = Tree(TreeLimits(sequence_max=1))
    ok(t, C.create("/s", creator=U, sequential=True))
    ok(t, C.create("/s", creator=U, sequential=True))
    e = err(t, C.create("/s", creator=U, sequential=True), "LimitExceeded", "SEQUENCE_MAX=1")
    assert e["limit"] == "SEQUENCE_MAX" and SEQUENCE_MAX == 9_999_999_999


# ---------------------------------------------------------------------------- values and limits

def test_one_mebibyte_values_fit_and_larger_are_refused_never_truncated():
    t = tree_with("/v/", "/v/small")
    big = b"\xab" * VALUE_BYTES_MAX
    ok(t, C.create("/v/big", big, creator=U))
    assert t.get("/v/big")[0] == big
    e = err(t, C.create("/v/huge", big + b"!", creator=U), "ValueTooLarge", "1048577 bytes",
            "VALUE_BYTES_MAX=1048576")
    assert e["limit"] == "VALUE_BYTES_MAX" and e["value_bytes"] == VALUE_BYTES_MAX + 1
    err(t, C.set_value("/v/small", big + b"!"), "ValueTooLarge")
    assert t.get("/v/small")[0] == b"v" and not t.exists("/v/huge")
    err(t, C.set_value("/v/small", "text"), "BadRequest", "must be bytes, got str")


@pytest.mark.parametrize("limits,setup,cmd,limit_name", [
    (TreeLimits(children_per_dir_max=2), ["/a", "/b"], C.create("/c", creator=U),
     "CHILDREN_PER_DIR_MAX"),
    (TreeLimits(nodes_max=3), ["/a/", "/a/b"], C.create("/a/c", creator=U), "NODES_MAX"),
    (TreeLimits(tree_value_bytes_max=2), ["/a"], C.create("/b", b"xy", creator=U),
     "TREE_VALUE_BYTES_MAX"),
    (TreeLimits(tree_value_bytes_max=2), ["/a"], C.set_value("/a", b"xyz"),
     "TREE_VALUE_BYTES_MAX"),
    (TreeLimits(sessions_max=1), [], C.session_open(2, 5, "o"), "SESSIONS_MAX"),
    (TreeLimits(ephemerals_per_session_max=1), ["/e"],
     C.create("/f", creator=U, ephemeral_session=1), "EPHEMERALS_PER_SESSION_MAX"),
])
def test_state_limits_are_refused_by_name(limits, setup, cmd, limit_name):
    t = Tree(limits)
    ok(t, C.session_open(1, 5, "o"))
    for p in setup:
        eph = 1 if p == "/e" else None
        ok(t, C.create(p, b"" if p.endswith("/") else b"v", creator=U, ephemeral_session=eph))
    e = err(t, cmd, "LimitExceeded", limit_name)
    assert e["limit"] == limit_name


def test_txn_op_limit():
    t = tree_with("/a")
    ok(t, C.txn(*[C.check("/a", exists=True)] * C.TXN_OPS_MAX))
    e = err(t, C.txn(*[C.check("/a", exists=True)] * (C.TXN_OPS_MAX + 1)), "LimitExceeded",
            "TXN_OPS_MAX=128")
    assert e["limit"] == "TXN_OPS_MAX"


@pytest.mark.parametrize("cmd,error_type,words", [
    (None, "BadRequest", ["a command is a dict"]),
    ([], "BadRequest", ["a command is a dict"]),
    ({}, "BadRequest", ["unknown op None"]),
    ({"op": "rename"}, "BadRequest", ["unknown op 'rename'", "create"]),
    ({"op": "check", "path": "/a", "exists": True}, "BadRequest", ["unknown op 'check'"]),
    ({"op": "create", "path": "/a", "creator": U, "ephemeral": 3}, "BadRequest",
     ["unknown keys ephemeral"]),
    ({"op": "create", "path": "/a"}, "BadRequest", ["missing creator"]),
    ({"op": "create", "path": "/a", "creator": ""}, "BadRequest", ["creator must be"]),
    ({"op": "create", "path": "/a", "creator": "x" * 256}, "LimitExceeded", ["CREATOR_BYTES_MAX"]),
    ({"op": "create", "path": "/a", "creator": U, "sequential": 1}, "BadRequest",
     ["sequential must be true or false"]),
    ({"op": "delete", "path": "/a", "recursive": "yes"}, "BadRequest", ["recursive"]),
    ({"op": "set", "path": "/a", "value": b"", "expected_version": True}, "BadRequest",
     ["expected_version"]),
    ({"op": "txn", "ops": "nope"}, "BadRequest", ["ops must be a list"]),
    ({"op": "create", "path": "/a", "creator": U, "request_id": 5}, "BadRequest",
     ["request_id"]),
])
def test_garbage_commands_are_refused_not_raised(cmd, error_type, words):
    err(Tree(), cmd, error_type, *words)


def test_request_id_is_echoed():
    t = Tree()
    cmd = {**C.create("/a", creator=U), "request_id": "r-1"}
    assert t.apply(cmd)["request_id"] == "r-1"
    assert t.apply(cmd)["request_id"] == "r-1"  # the refusal too


# ---------------------------------------------------------------------------- sessions

def test_ephemerals_need_a_live_session_and_cannot_be_directories():
    t = tree_with("/svc/")
    e = err(t, C.create("/svc/r1", creator=U, ephemeral_session=9), "NoSession",
            "session 9 is not open")
    assert e["session"] == 9
    ok(t, C.session_open(9, 10, "replica1"))
    err(t, C.create("/svc/d/", creator=U, ephemeral_session=9), "BadRequest",
        "cannot be ephemeral")
    r = ok(t, C.create("/svc/r1", b"addr", creator=U, ephemeral_session=9))
    assert r["stat"]["ephemeral_session"] == 9


@pytest.mark.parametrize("reason", ["closed", "expired"])
def test_ephemerals_vanish_when_their_session_ends_with_events(reason):
    t = tree_with("/svc/", "/svc/kv/", "/keep")
    ok(t, C.session_open(7, 5.5, "replica1@node1"))
    ok(t, C.session_open(8, 5, "replica2@node2"))
    ok(t, C.create("/svc/kv/r1", b"tcp://1", creator="r1", ephemeral_session=7))
    ok(t, C.create("/svc/kv/r2", b"tcp://2", creator="r2", ephemeral_session=8))
    ok(t, C.create("/svc/lock-", creator="r1", ephemeral_session=7, sequential=True))
    assert t.sessions() == [
        {"session": 7, "ttl_s": 5.5, "owner": "replica1@node1", "opened_rev": 4, "ephemerals": 2},
        {"session": 8, "ttl_s": 5.0, "owner": "replica2@node2", "opened_rev": 5, "ephemerals": 1},
    ]
    before = t.revision
    r = ok(t, C.session_close(7, reason))
    assert r["reason"] == reason and r["revision"] == before + 1
    assert r["deleted"] == ["/svc/kv/r1", "/svc/lock-0000000000"]
    assert t.list("/svc/kv/") == ["r2"] and t.list("/svc/") == ["kv/"] and t.exists("/keep")
    evs = t.events_since(before, "/svc/", recursive=True)
    assert [(e.revision, e.type, e.path) for e in evs] == [
        (before + 1, "deleted", "/svc/kv/r1"), (before + 1, "deleted", "/svc/lock-0000000000")]
    assert [s["session"] for s in t.sessions()] == [8]
    err(t, C.session_close(7), "NoSession", "already closed")
    err(t, C.create("/svc/kv/r3", creator=U, ephemeral_session=7), "NoSession")
    assert t.validate_state() == []


def test_deleting_an_ephemeral_by_hand_releases_it_from_its_session():
    t = tree_with("/l/")
    ok(t, C.session_open(1, 5, "o"))
    ok(t, C.create("/l/e", creator=U, ephemeral_session=1))
    ok(t, C.delete("/l/", recursive=True))
    assert t.sessions()[0]["ephemerals"] == 0
    assert ok(t, C.session_close(1))["deleted"] == []
    assert t.validate_state() == []


@pytest.mark.parametrize("ttl_s", [0, 0.999, 300.001, -1, float("nan"), float("inf"), "10",
                                   True, None])
def test_session_ttl_out_of_bounds_is_refused(ttl_s):
    err(Tree(), C.session_open(1, ttl_s, "o"), "BadRequest", "ttl_s", "SESSION_TTL_MIN_S=1.0",
        "SESSION_TTL_MAX_S=300.0")


@pytest.mark.parametrize("ttl_s", [1, 1.0, 42.5, 300])
def test_session_ttl_in_bounds(ttl_s):
    t = Tree()
    ok(t, C.session_open(3, ttl_s, "o"))
    assert t.sessions()[0]["ttl_s"] == float(ttl_s)


def test_session_ids_and_reasons_are_checked():
    t = Tree()
    ok(t, C.session_open(1, 5, "o"))
    err(t, C.session_open(1, 5, "o"), "BadRequest", "already open")
    err(t, C.session_open(0, 5, "o"), "BadRequest", "session must be an int")
    err(t, C.session_close(1, "bored"), "BadRequest", "closed, expired")


# ---------------------------------------------------------------------------- txn

def test_txn_applies_all_at_one_revision():
    t = tree_with("/a/", "/a/x")
    before = t.revision
    r = ok(t, C.txn(C.check("/a/x", version=0), C.create("/a/y", b"1", creator=U),
                    C.set_value("/a/x", b"2", expected_version=0), C.delete("/a/y"),
                    C.create("/b/c", creator=U, parents=True), C.check("/a/y", exists=False)))
    assert r["revision"] == t.revision == before + 1
    assert r["results"][0] == {} and r["results"][1]["path"] == "/a/y"
    assert r["results"][3] == {"deleted": ["/a/y"]}
    assert t.get("/a/x")[0] == b"2" and t.exists("/b/c") and not t.exists("/a/y")
    assert {e.revision for e in t.events_since(before, "/", recursive=True)} == {before + 1}


@pytest.mark.parametrize("failing_op,error_type", [
    (C.check("/a/x", version=5), "BadVersion"),
    (C.check("/a/x", exists=False), "NodeExists"),
    (C.check("/a/zz", exists=True), "NoNode"),
    (C.create("/a/x", creator=U), "NodeExists"),
    (C.set_value("/a/x", b"!", expected_version=9), "BadVersion"),
    (C.delete("/a/"), "NotEmpty"),
    (C.create("rel", creator=U), "BadPath"),
    (C.session_open(1, 5, "o"), "BadRequest"),       # not allowed inside a txn
    (C.txn(), "BadRequest"),                          # no nesting
    ({"op": "check", "path": "/a/x"}, "BadRequest"),  # nothing to check
])
def test_a_failing_txn_leaves_no_trace(failing_op, error_type):
    t = tree_with("/a/", "/a/x")
    ok(t, C.session_open(3, 5, "o"))
    e = err(t, C.txn(C.create("/a/new", creator=U), C.set_value("/a/x", b"changed"),
                     C.create("/a/seq-", creator=U, sequential=True),
                     C.create("/a/eph", creator=U, ephemeral_session=3),
                     C.create("/p/q/r", creator=U, parents=True),
                     C.delete("/a/new"), failing_op, C.create("/a/after", creator=U)),
            "TxnFailed", "txn op 6", "nothing was applied")
    assert e["index"] == 6 and e["error"]["type"] == error_type
    rebuilt = E.error_from_dict(e)
    assert isinstance(rebuilt, E.TxnFailed) and type(rebuilt.error).__name__ == error_type
    assert t.events_since(0, "/", recursive=True)[-1].path == "/a/x"
    assert t.sessions()[0]["ephemerals"] == 0
    # The sequence number handed out inside the failed txn is not consumed.
    assert ok(t, C.create("/a/seq-", creator=U, sequential=True))["path"] == "/a/seq-0000000000"


def test_a_txn_of_checks_changes_nothing_and_keeps_the_revision():
    t = tree_with("/a")
    before = t.revision
    assert ok(t, C.txn(C.check("/a", version=0), C.check("/b", exists=False)))["revision"] == before
    assert ok(t, C.txn())["results"] == []


# ---------------------------------------------------------------------------- watch history

def test_events_since_for_files_directories_and_recursive():
    t = Tree()
    ok(t, C.create("/d/", creator=U))                     # 1
    ok(t, C.create("/d/f", b"a", creator=U))              # 2
    ok(t, C.create("/d/sub/", creator=U))                 # 3
    ok(t, C.create("/d/sub/g", b"b", creator=U))          # 4
    ok(t, C.set_value("/d/f", b"c"))                      # 5
    ok(t, C.create("/other", creator=U))                  # 6
    ok(t, C.delete("/d/sub/", recursive=True))            # 7

    def seen(rev, path, recursive=False):
        return [(e.revision, e.type, e.path) for e in t.events_since(rev, path, recursive)]

    assert seen(0, "/d/f") == [(2, "created", "/d/f"), (5, "changed", "/d/f")]
    assert seen(2, "/d/f") == [(5, "changed", "/d/f")]
    assert seen(5, "/d/f") == []
    assert seen(0, "/d/") == [(1, "created", "/d/"), (2, "created", "/d/f"),
                              (3, "created", "/d/sub/"), (5, "changed", "/d/f"),
                              (7, "deleted", "/d/sub/")]
    assert seen(3, "/d/", recursive=True) == [(4, "created", "/d/sub/g"), (5, "changed", "/d/f"),
                                              (7, "deleted", "/d/sub/g"),
                                              (7, "deleted", "/d/sub/")]
    assert seen(0, "/") == [(1, "created", "/d/"), (6, "created", "/other")]
    assert len(seen(0, "/", recursive=True)) == 8
    assert seen(100, "/", recursive=True) == []           # the future: nothing yet
    changed = t.events_since(4, "/d/f")[0]
    assert changed.value == b"c" and changed.stat.version == 1
    deleted = t.events_since(6, "/d/sub/g")[0]
    assert deleted.value is None and deleted.stat.data_len == 1
    assert t.events_since(0, "/", recursive=True, limit=2)[-1].path == "/d/f"
    with pytest.raises(E.BadRequest):
        t.events_since(-1, "/")


def test_events_since_compacted_history_says_so():
    t = Tree(TreeLimits(watch_history_max=4))
    ok(t, C.create("/a/", creator=U))                               # rev 1: 1 event
    ok(t, C.create("/b/c/d", creator=U, parents=True))              # rev 2: 3 events
    ok(t, C.create("/a/x", creator=U))                              # rev 3: 1 event -> drop rev 1
    assert t.history_floor == 1
    assert [e.revision for e in t.events_since(1, "/", recursive=True)] == [2, 2, 2, 3]
    with pytest.raises(E.Compacted) as info:
        t.events_since(0, "/", recursive=True)
    assert info.value.oldest_revision == 1
    assert "re-read the state" in str(info.value)
    ok(t, C.set_value("/a/x", b"1"))                                # rev 4: whole rev 2 dropped
    assert t.history_floor == 2
    assert [e.revision for e in t.events_since(2, "/", recursive=True)] == [3, 4]
    with pytest.raises(E.Compacted):
        t.events_since(1, "/a/x")
    # Compaction survives a snapshot.
    t2 = Tree.restore(t.snapshot(), TreeLimits(watch_history_max=4))
    assert t2.history_floor == 2 and t2 == t
    with pytest.raises(E.Compacted):
        t2.events_since(1, "/a/x")


def test_history_is_bounded_by_value_bytes_too():
    t = Tree(TreeLimits(watch_history_value_bytes_max=10))
    ok(t, C.create("/a", b"x" * 6, creator=U))
    ok(t, C.set_value("/a", b"y" * 6))
    assert t.history_floor == 1 and [e.value for e in t.events_since(1, "/a")] == [b"y" * 6]


def test_history_trimming_keeps_memory_bounded():
    t = Tree(TreeLimits(watch_history_max=10))
    ok(t, C.create("/a", creator=U))
    for i in range(10_000):
        ok(t, C.set_value("/a", b"%d" % i))
    assert len(t._history) < 5_000
    assert [e.value for e in t.events_since(t.revision - 2, "/a")] == [b"9998", b"9999"]


# ---------------------------------------------------------------------------- snapshots

def test_snapshot_round_trip_is_exact_and_deterministic():
    t = tree_with("/a/", "/a/b", "/a/c/", "/服务/")
    ok(t, C.session_open(11, 12.5, "owner"))
    ok(t, C.create("/a/c/e", b"\x00\xff", creator="bob", ephemeral_session=11))
    ok(t, C.create("/a/s-", creator=U, sequential=True))
    ok(t, C.set_value("/a/b", b"new"))
    data = t.snapshot()
    r = Tree.restore(data)
    assert r == t and r.snapshot() == data and r.revision == t.revision
    assert r.sessions() == t.sessions() and r.get("/a/c/e") == t.get("/a/c/e")
    assert r.events_since(0, "/", True) == t.events_since(0, "/", True)
    # Both continue identically, sequence counters included.
    for tree in (r, t):
        assert tree.apply(C.create("/a/s-", creator=U, sequential=True))["path"] == "/a/s-0000000001"
        assert tree.apply(C.session_close(11, "expired"))["deleted"] == ["/a/c/e"]
    assert r == t


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"format": "other"}',
                                  b'{"format": "nuwa-tree/1"}'])
def test_restore_refuses_garbage(data):
    with pytest.raises(E.CorruptSnapshot):
        Tree.restore(data)


def test_restore_refuses_an_inconsistent_snapshot():
    import json
    t = tree_with("/a/", "/a/b")
    doc = json.loads(t.snapshot())
    doc["nodes"] = [n for n in doc["nodes"] if n[0] != "/a/"]   # orphan /a/b
    with pytest.raises(E.CorruptSnapshot, match="parent"):
        Tree.restore(json.dumps(doc).encode())


# ---------------------------------------------------------------------------- errors and encoding

ALL_ERRORS = [
    E.NuwaError("x"), E.BadRequest("x"), E.BadPath("x", path="/a"),
    E.LimitExceeded("x", limit="NODES_MAX", limit_value=3),
    E.ValueTooLarge("x", limit="VALUE_BYTES_MAX", limit_value=1, path="/a", value_bytes=2),
    E.NodeExists("x", path="/a"), E.NoNode("x", path="/a"), E.NotEmpty("x", path="/a/"),
    E.BadVersion("x", path="/a", expected_version=1, actual_version=2),
    E.NotADirectory("x", path="/a/"), E.IsADirectory("x", path="/a"),
    E.NoSession("x", session=4), E.TxnFailed("x", index=2, error=E.NoNode("y", path="/b")),
    E.Compacted("x", oldest_revision=9), E.CorruptSnapshot("x"),
    E.NotLeader("x", leader_hint="10.0.0.2:7000"), E.Unavailable("x"), E.Timeout("x"),
    E.OutcomeUnknown("x"), E.SessionExpired("x", session=4),
]


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: type(e).__name__)
def test_errors_cross_the_wire_as_dicts_and_pickles(error):
    d = error.to_dict()
    decoded = decode_command(encode_command(d))
    assert decoded == d
    for rebuilt in (E.error_from_dict(decoded), pickle.loads(pickle.dumps(error))):
        assert type(rebuilt) is type(error) and rebuilt.to_dict() == d
        assert str(rebuilt) == "x"


def test_error_tree_shape():
    for cls in (E.BadPath, E.ValueTooLarge, E.NodeExists, E.NoNode, E.NotEmpty, E.BadVersion,
                E.NotADirectory, E.IsADirectory, E.NoSession, E.TxnFailed, E.LimitExceeded):
        assert issubclass(cls, E.BadRequest)
    for cls in (E.Compacted, E.NotLeader, E.Unavailable, E.Timeout, E.OutcomeUnknown,
                E.SessionExpired):
        assert issubclass(cls, E.NuwaError) and not issubclass(cls, E.BadRequest)
    assert E.NotLeader.retryable and E.Unavailable.retryable and not E.OutcomeUnknown.retryable


def test_unknown_or_malformed_error_dicts_still_give_an_error():
    e = E.error_from_dict({"type": "FromTheFuture", "message": "m", "extra": 1})
    assert type(e) is E.NuwaError and str(e) == "m"
    assert isinstance(E.error_from_dict("junk"), E.NuwaError)


def test_commands_encode_and_decode():
    cmd = C.txn(C.create("/a", b"\x00\x01\xff", creator=U), C.set_value("/a", b""),
                C.check("/a", version=1))
    assert decode_command(encode_command(cmd)) == cmd
    assert encode_command(cmd) == encode_command(decode_command(encode_command(cmd)))
    with pytest.raises(E.BadRequest):
        decode_command(b"[1]")
    with pytest.raises(E.BadRequest):
        decode_command(b"\xff")


def test_tree_core_imports_no_ray_clock_or_randomness():
    probe = ("import sys, nuwa.core.tree; bad = [m for m in ('ray', 'random', 'time', 'socket', "
             "'asyncio') if m in sys.modules and m not in before]; print(bad)")
    code = "import sys; before = set(sys.modules); " + probe
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


# ---------------------------------------------------------------------------- determinism (Hypothesis)

_DIRS = ["/", "/a/", "/a/b/", "/c/"]
_FILES = [d + n for d in _DIRS for n in ("x", "y", "n-", "b")]
_SUBDIRS = [d + n for d in _DIRS for n in ("b/", "c/")]
_BAD = ["rel", "/a//x", "/a/../x"]
_SESSIONS = [1, 2, 3]

_files = st.sampled_from(_FILES)
_any_paths = st.one_of(_files, _files, st.sampled_from(_DIRS + _SUBDIRS), st.sampled_from(_BAD))
_values = st.sampled_from([b"", b"v", b"\x00" * 3, b"long" * 10])
_versions = st.one_of(st.none(), st.none(), st.integers(0, 2))
_maybe_session = st.one_of(st.none(), st.none(), st.sampled_from(_SESSIONS))


def _create(p, v, e, q, par):
    is_dir = p.endswith("/")
    return C.create(p, b"" if is_dir else v, creator=U, ephemeral_session=None if is_dir else e,
                    sequential=q, parents=par)


def _node_ops():
    return st.one_of(
        st.builds(_create, _any_paths, _values, _maybe_session,
                  st.sampled_from([False, False, True]), st.sampled_from([True, True, False])),
        st.builds(lambda p, v, ver: C.set_value(p, v, expected_version=ver),
                  st.one_of(_files, _files, _files, st.sampled_from(_BAD + ["/a/"])), _values,
                  _versions),
        st.builds(lambda p, ver, r: C.delete(p, expected_version=ver, recursive=r),
                  _any_paths, _versions, st.booleans()),
    )


_checks = st.builds(lambda p, ver, ex: C.check(p, version=ver, exists=ex),
                    _any_paths, _versions, st.one_of(st.none(), st.booleans()))
_commands = st.one_of(
    _node_ops(), _node_ops(), _node_ops(), _node_ops(),
    st.builds(lambda ops: C.txn(*ops), st.lists(st.one_of(_node_ops(), _checks), max_size=4)),
    st.builds(lambda s, ttl: C.session_open(s, ttl, "owner"), st.sampled_from(_SESSIONS),
              st.sampled_from([1, 2.5, 300, 2.5, 0.5])),
    st.builds(C.session_close, st.sampled_from(_SESSIONS), st.sampled_from(["closed", "expired"])),
)

_SMALL = TreeLimits(watch_history_max=25, children_per_dir_max=6, nodes_max=16,
                    sequence_max=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cmds=st.lists(_commands, min_size=1, max_size=80), split=st.integers(0, 80))
def test_same_commands_same_state_even_across_a_snapshot(cmds, split):
    split = min(split, len(cmds))
    a = Tree(_SMALL)
    b = None
    results_a, results_b = [], []
    for i, cmd in enumerate(cmds):
        if i == split:
            b = Tree.restore(a.snapshot(), _SMALL)
            assert b == a
        before = a.snapshot() if i % 5 == 0 else None
        rev_before = a.revision
        wire = decode_command(encode_command(cmd))     # what a replica actually receives
        ra = a.apply(wire)
        results_a.append(ra)
        assert ra.get("error", {}).get("type") != "NuwaError", ra   # no internal errors
        assert a.validate_state() == [], (cmd, ra)
        if "error" in ra:
            assert a.revision == rev_before
            if before is not None:
                assert a.snapshot() == before               # refused: no trace at all
        if b is not None:
            results_b.append(b.apply(wire))
    if b is None:
        b = Tree.restore(a.snapshot(), _SMALL)
    else:
        assert results_b == results_a[split:]
    assert b == a and b.validate_state() == []
    # A third replica replaying from scratch agrees too.
    c = Tree(_SMALL)
    assert [c.apply(cmd) for cmd in cmds] == results_a and c == a
    # Events are in revision order and within the retained window.
    evs = a.events_since(a.history_floor, "/", recursive=True)
    assert [e.revision for e in evs] == sorted(e.revision for e in evs)
    assert all(a.history_floor < e.revision <= a.revision for e in evs)


# A seeded random walk reaches deeper states than Hypothesis's short lists: long runs where
# most commands succeed, sessions come and go, limits are hit and history is compacted.

def _random_command(rng, tree: Tree, in_txn: bool = False) -> dict:
    existing = [p for p in tree._nodes if p != "/"]
    dirs = [p for p in tree._nodes if p.endswith("/")]
    roll = rng.random()
    if roll < 0.35:
        parent = rng.choice(dirs + ["/a/b/", "/z/"])
        name = rng.choice(["x", "y", "n-", "d/", "e/", "f"])
        session = rng.choice([None, None, 1, 2, 3]) if not name.endswith("/") else None
        value = b"" if name.endswith("/") else rng.choice([b"", b"v", b"w" * 50])
        return C.create(parent + name, value, creator=U,
                        ephemeral_session=session, sequential=rng.random() < 0.3,
                        parents=rng.random() < 0.5)
    if roll < 0.55 and existing:
        files = [p for p in existing if not p.endswith("/")] or ["/x"]
        return C.set_value(rng.choice(files), rng.choice([b"1", b"22", b""]),
                           expected_version=rng.choice([None, None, 0, 1]))
    if roll < 0.68 and existing:
        return C.delete(rng.choice(existing), expected_version=rng.choice([None, None, None, 0]),
                        recursive=rng.random() < 0.5)
    if roll < 0.80 and not in_txn:
        ops = []
        for _ in range(rng.randint(1, 4)):
            sub = _random_command(rng, tree, in_txn=True)
            if sub["op"] in ("create", "set", "delete"):
                ops.append(sub)
            else:
                exists = rng.choice([True, False, None])
                version = rng.choice([0, 1]) if exists is not False else None
                ops.append(C.check(rng.choice(existing or ["/x"]), version=version,
                                   exists=exists))
        return C.txn(*ops)
    if roll < 0.90:
        return C.session_open(rng.choice([1, 2, 3]), rng.choice([1, 7.5, 300]), "owner")
    if roll < 0.99:
        return C.session_close(rng.choice([1, 2, 3]), rng.choice(["closed", "expired"]))
    return rng.choice([C.create("rel", creator=U), {"op": "nope"}, C.set_value("/a/", b"")])


@pytest.mark.parametrize("seed", range(40))
def test_random_walk_replicas_agree(seed):
    import random
    rng = random.Random(seed)
    limits = TreeLimits(watch_history_max=60, children_per_dir_max=8, nodes_max=30,
                        sequence_max=40)
    leader = Tree(limits)
    log, results = [], []
    follower = None
    split = rng.randrange(300)
    outcomes = set()
    for step in range(300):
        if step == split:
            follower = Tree.restore(leader.snapshot(), limits)
        cmd = decode_command(encode_command(_random_command(rng, leader)))
        rev_before = leader.revision
        r = leader.apply(cmd)
        log.append(cmd)
        results.append(r)
        outcomes.add("error" in r)
        assert r.get("error", {}).get("type") != "NuwaError", (seed, step, cmd, r)
        assert leader.validate_state() == [], (seed, step, cmd)
        assert ("error" in r) == (leader.revision == rev_before) or cmd["op"] == "txn", (seed, step)
        if follower is not None:
            assert follower.apply(cmd) == r, (seed, step, cmd)
    assert follower == leader
    replay = Tree(limits)
    assert [replay.apply(c) for c in log] == results and replay == leader
    assert outcomes == {True, False}
    # Every retained event is consistent with a watcher's view: in order, after the floor.
    evs = leader.events_since(leader.history_floor, "/", recursive=True)
    assert [e.revision for e in evs] == sorted(e.revision for e in evs)

"""Nuwa decides on what it executes (issue 14, defect 1).

``nuwa.core.wire.parse_request`` parses a client request, command tree included, before anything is
decided; the replica authorizes that tree and proposes the command rebuilt from it. Unit tests
of the parser, and two properties over arbitrary request maps: the parser never lets through a
command whose op differs from the request's or that re-parses differently, and -- through a
real replica with authentication on -- every command that reaches the state machine is one
whose every node operation the guard checked, and allowed, for the caller."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nuwa.core import commands as C
from nuwa import errors as E
from nuwa.core.wire import REQUEST_OPS, command_dict, command_ops, parse_request
from tests.adversarial.nuwa_local import Node

pytestmark = pytest.mark.timeout(300)

USERS_DIR = "/fuxi/zhongkui/users/"


# ------------------------------------------------------------------ the parser

def test_a_write_request_parses_its_command_tree():
    r = parse_request({"op": "txn", "id": 3, "cred": "t", "cmd": {"op": "txn", "ops": [
        {"op": "create", "path": "/a", "creator": "x"},
        {"op": "check", "path": "/a", "version": 0}]}})
    assert r.op == "txn" and r.id == 3 and r.cred == "t"
    assert r.cmd == C.Txn((C.Create("/a", b"", "x", None, False, False), C.Check("/a", 0, None)))
    assert command_dict(r.cmd) == C.txn(C.create("/a", creator="x"), C.check("/a", version=0))


@pytest.mark.parametrize("req,match", [
    ({"op": "txn", "cmd": {"op": "create", "path": "/a", "creator": "x"}}, "carries a command"),
    ({"op": "set", "cmd": {"op": "session_close", "session": 5}}, "carries a command"),
    ({"op": "create", "cmd": {"op": "txn", "ops": []}}, "carries a command"),
    ({"op": "session_open", "cmd": {"op": "create", "path": "/a", "creator": "x"}},
     "carries a command"),
    ({"op": "session_close", "cmd": {"op": "delete", "path": "/a"}}, "carries a command"),
    ({"op": "txn", "cmd": {"op": "txn", "ops": [{"op": "txn", "ops": []}]}}, "txn op 0"),
    ({"op": "txn", "cmd": {"op": "txn", "ops": [{"op": "session_close", "session": 1}]}},
     "txn op 0"),
    ({"op": "txn", "cmd": {"op": "txn", "ops": ["create"]}}, "txn op 0"),
    ({"op": "nope"}, "unknown op"),
    ({"op": 1}, "unknown op"),
    ({}, "unknown op"),
    ([], "a request is a map"),
    ({"op": "get", "path": "/a", "x": 1}, "unknown keys"),
    ({"op": "get"}, "missing path"),
    ({"op": "get", "path": 1}, "a path is a str"),
    ({"op": "get", "path": "/a", "linearizable": 1}, "true or false"),
    ({"op": "watch", "path": "/a", "from_revision": "1"}, "from_revision"),
    ({"op": "session_keepalive", "session": True}, "session"),
    ({"op": "session_open", "cmd": {"op": "session_open", "ttl_s": 5.0, "session": 1}},
     "picks the session id"),
    ({"op": "session_open", "cmd": {"op": "session_open", "ttl_s": 0.0}}, "ttl_s"),
    ({"op": "conf_change", "change": "drop", "member": 2}, "change"),
    ({"op": "transfer_leader", "to": 0}, "to must be"),
    ({"op": "status", "id": [1]}, "id must be"),
    ({"op": "status", "cred": 5}, "cred must be"),
    ({"op": "create", "cmd": {"op": "create", "path": "/a", "creator": "x", "owner": "y"}},
     "unknown keys"),
])
def test_bad_requests_are_refused_saying_why(req, match):
    with pytest.raises(E.BadRequest, match=match):
        parse_request(req)


# ------------------------------------------------------------------ arbitrary request maps

PATHS = ["/", "/fuxi/", "/fuxi/zhongkui/", USERS_DIR, USERS_DIR + "root", USERS_DIR + "x",
         "/zhongkui/", "/services/s", "/open/", "/open/a", "/open/d/", "/open/d/e",
         "/open/alice-lock", "rel", "//x", "/a/../b", ""]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 2 ** 64 - 1), st.text(max_size=3),
                    st.binary(max_size=3), st.floats(allow_nan=True))
paths = st.one_of(st.sampled_from(PATHS), scalars)
sessions = st.one_of(st.sampled_from(["ALICE", "MALLORY", 0, 1, 7]), scalars)
CMD_OPS = ["create", "set", "delete", "check", "txn", "session_open", "session_close", "get",
           "bogus"]


def command_maps(op_lists):
    return st.fixed_dictionaries({"op": st.one_of(st.sampled_from(CMD_OPS), scalars)}, optional={
        "path": paths,
        "value": st.one_of(st.binary(max_size=4), scalars),
        "creator": st.one_of(st.sampled_from(["mallory", "alice", "fuxi-master", "nuwa", ""]),
                             scalars),
        "ephemeral_session": sessions,
        "sequential": st.one_of(st.booleans(), scalars),
        "parents": st.one_of(st.booleans(), scalars),
        "recursive": st.one_of(st.booleans(), scalars),
        "expected_version": st.one_of(st.sampled_from([None, 0, 1]), scalars),
        "version": st.one_of(st.sampled_from([None, 0, 1]), scalars),
        "exists": st.one_of(st.booleans(), scalars),
        "session": sessions,
        "reason": st.one_of(st.sampled_from(["closed", "expired"]), scalars),
        "ttl_s": st.one_of(st.sampled_from([1.0, 30.0]), scalars),
        "owner": st.one_of(st.sampled_from(["alice", "mallory"]), scalars),
        "ops": st.one_of(op_lists, scalars),
        "request_id": st.one_of(st.text(max_size=3), scalars),
        "junk": scalars,
    })


commands = st.recursive(command_maps(st.just([])),
                        lambda children: command_maps(st.lists(children, max_size=4)),
                        max_leaves=8)
raw_requests = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from([*REQUEST_OPS, "bogus"]), scalars)}, optional={
        "cmd": st.one_of(commands, scalars),
        "path": paths,
        "session": sessions,
        "recursive": st.one_of(st.booleans(), scalars),
        "linearizable": st.one_of(st.booleans(), scalars),
        "from_revision": st.one_of(st.integers(0, 5), scalars),
        "watch": st.one_of(st.integers(0, 5), scalars),
        "change": st.one_of(st.sampled_from(["add_learner", "promote", "remove"]), scalars),
        "member": st.one_of(st.sampled_from([1, 2, 9]), scalars),
        "to": st.one_of(st.sampled_from([1, 2]), scalars),
        "id": st.one_of(st.integers(0, 9), scalars),
        "junk": scalars,
    })
# Requests whose outer op matches their command's: these get past the parser more often.
matched_requests = commands.filter(lambda c: isinstance(c.get("op"), str)).map(
    lambda c: {"op": c["op"], "cmd": c})
# Well-formed commands, so that many get as far as the guard (and some past it).
FILES = ["/open/a", "/open/b", "/open/d/e", "/open/alice-lock", "/top", USERS_DIR + "root",
         USERS_DIR + "x", "/zhongkui/x", "/services/s", "/fuxi/x"]
DIRS = ["/open/", "/open/d/", "/fuxi/", USERS_DIR, "/zhongkui/", "/services/", "/x/"]
creators = st.sampled_from(["mallory", "alice", "fuxi-master", "nuwa"])
node_ops = st.one_of(
    st.builds(lambda p, c, e, par: {"op": "create", "path": p, "creator": c,
                                    "ephemeral_session": e, "parents": par},
              st.sampled_from(FILES), creators, st.sampled_from([None, "ALICE", "MALLORY"]),
              st.booleans()),
    st.builds(lambda p, c: {"op": "create", "path": p, "creator": c, "parents": True},
              st.sampled_from(DIRS), creators),
    st.builds(lambda p, v: {"op": "set", "path": p, "value": v}, st.sampled_from(FILES),
              st.binary(max_size=4)),
    st.builds(lambda p, r: {"op": "delete", "path": p, "recursive": r},
              st.sampled_from(FILES + DIRS), st.booleans()),
    st.builds(lambda p: {"op": "check", "path": p, "exists": True}, st.sampled_from(FILES + DIRS)),
)
good_commands = st.one_of(
    node_ops,
    st.lists(node_ops, min_size=1, max_size=4).map(lambda ops: {"op": "txn", "ops": ops}),
    st.sampled_from(["ALICE", "MALLORY"]).map(lambda s: {"op": "session_close", "session": s}),
    st.just({"op": "session_open", "ttl_s": 30.0}),
)
good_requests = st.tuples(good_commands, st.sampled_from(
    [None, None, None, "create", "set", "delete", "txn", "session_open", "session_close"])).map(
    lambda t: {"op": t[1] or t[0]["op"], "cmd": t[0]})
requests = st.one_of(good_requests, matched_requests, raw_requests)  # first is drawn most


@settings(max_examples=600, deadline=None)
@given(req=requests)
def test_the_parser_passes_only_commands_of_the_requests_own_op(req):
    try:
        r = parse_request(req)
    except E.NuwaError as e:
        assert isinstance(e, E.BadRequest), e
        return
    assert r.op == req["op"]
    if r.cmd is not None:
        assert req["cmd"]["op"] == r.op
        again = C.parse_command(command_dict(r.cmd))  # what the replica proposes
        if isinstance(again, C.Txn):
            again = C.Txn(tuple(C.parse_command(o, in_txn=True) for o in again.ops))
        assert again == r.cmd
        for c in command_ops(r.cmd):
            assert isinstance(c, (C.Create, C.Set, C.Delete, C.Check, C.SessionClose))


def _substitute(obj, ids: dict):
    if isinstance(obj, str) and obj in ids:
        return ids[obj]
    if isinstance(obj, dict):
        return {k: _substitute(v, ids) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, ids) for v in obj]
    return obj


PERM = {C.Create: "create", C.Set: "write", C.Delete: "delete", C.Check: "read"}


def test_every_command_applied_was_checked_op_by_op_for_the_caller(tmp_path):
    """Mallory (no grants) sends arbitrary maps to a real replica. Whatever reaches the state
    machine must be a command each of whose node operations the guard allowed mallory, with
    mallory as the creator of what it creates, and only mallory's sessions named."""
    loop = asyncio.new_event_loop()

    async def setup():
        node = await Node(tmp_path).start()
        platform = await node.raw(node.token("fuxi-master", ["admins", "platform"]))
        assert "ok" in await platform.call({"op": "create", "cmd": {
            "op": "create", "path": USERS_DIR + "root", "value": b"h", "creator": "x",
            "parents": True}})
        alice = await node.raw(node.token("alice"))
        a_sid = (await alice.call({"op": "session_open", "cmd": {
            "op": "session_open", "ttl_s": 300.0}}))["ok"]["session"]
        assert "ok" in await alice.call({"op": "create", "cmd": {
            "op": "create", "path": "/open/", "creator": "alice"}})
        mallory = await node.raw(node.token("mallory"))
        m_sid = (await mallory.call({"op": "session_open", "cmd": {
            "op": "session_open", "ttl_s": 300.0}}))["ok"]["session"]
        return node, mallory, {"ALICE": a_sid, "MALLORY": m_sid}

    node, mallory, ids = loop.run_until_complete(setup())
    server, tree = node.server, node.server.tree
    applied: list[dict] = []
    real_apply = tree.apply
    tree.apply = lambda cmd: (applied.append(cmd), real_apply(cmd))[1]
    voters, learners = tuple(server.node.voters), tuple(server.node.learners)
    accepted = {"writes": 0}

    def check(req):
        req = _substitute(req, ids)
        req.pop("id", None)  # the connection numbers its requests (ids: the parser's test)
        owners = {sid: s.owner for sid, s in tree._sessions.items()}
        node.guard.allowed.clear()
        applied.clear()
        ans = loop.run_until_complete(mallory.call(req))
        assert "ok" in ans or "error" in ans
        allowed = set(node.guard.allowed)
        for cmd in applied:
            op = cmd["op"]
            if op == "session_open":
                assert cmd["owner"] == "mallory", cmd
                continue
            if op == "session_close":
                assert owners.get(cmd["session"]) in ("mallory", None), (cmd, owners)
                continue
            parsed = C.parse_command(cmd)
            for c in command_ops(parsed):
                c = C.parse_command(c, in_txn=True) if isinstance(c, dict) else c
                assert ("mallory", "nuwa", c.path, PERM[type(c)]) in allowed, (c, allowed)
                if isinstance(c, C.Create):
                    assert c.creator == "mallory", c
                    if c.ephemeral_session is not None:
                        assert owners.get(c.ephemeral_session) == "mallory", (c, owners)
            accepted["writes"] += 1
        # Nothing the ACLs deny happened.
        assert tree.exists(USERS_DIR + "root") and not tree.exists(USERS_DIR + "x")
        assert ids["ALICE"] in tree._sessions
        assert (tuple(server.node.voters), tuple(server.node.learners)) == (voters, learners)

    health = dict(deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

    @settings(max_examples=300, **health)
    @given(req=good_requests)
    def well_formed(req):
        check(req)

    @settings(max_examples=300, **health)
    @given(req=requests)
    def arbitrary(req):
        check(req)

    try:
        well_formed()
        assert accepted["writes"] > 20  # the property was not vacuous
        arbitrary()
    finally:
        tree.apply = real_apply
        loop.run_until_complete(node.stop())
        loop.close()

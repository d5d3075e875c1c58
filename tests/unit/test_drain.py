"""Node drain (issue 18 part 5): the pure state machine (``fuxi.core.drain``) as table-driven
scenarios and a Hypothesis property against a direct reading; and each consumer of it -- the
scheduler's drain exclusion (``fuxi.core.slots``), the service core's surge-first move
(``ServiceCore.plan(leaving=...)``), the job core's reaction (``JobCore.nodes_leaving``)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core import slots
from fuxi.core.drain import (DRAIN_TIMEOUT_MAX_S, DRAINS_MAX, TRANSITIONS, DrainBook, Holdings,
                             IllegalTransition, NodeRecord, NodeState)
from fuxi.core.jobcore import JobCore, StopWorker
from fuxi.core.servicecore import READY, STARTING, ServiceCore
from fuxi.errors import BadInput
from tests.unit.test_jobcore import SK, job, ok, pushed, run, task, up
from tests.unit.test_servicecore import spec

A, B, C = "a" * 56, "b" * 56, "c" * 56
EMPTY = Holdings()
BUSY = Holdings(replicas=1, slots=2, chunks=3)


def book(**alive) -> DrainBook:
    b = DrainBook()
    b.observe({n: h for n, h in alive.items()}, 0.0)
    return b


# ---------------------------------------------------------------- the state machine

def test_a_node_drains_to_removable_once_nothing_is_left_and_undrain_puts_it_back():
    b = book(**{A: BUSY, B: EMPTY})
    assert b.view(0.0)[A]["state"] == "active" and b.leaving() == frozenset()
    out = b.drain(A[:12], 1.0, timeout_s=30)  # a prefix, as `fuxi node list` shows it
    assert out["state"] == "draining" and out["move_in_s"] == 30 and not out["removable"]
    assert b.leaving() == {A}
    assert b.observe({A: Holdings(chunks=1), B: EMPTY}, 2.0) == []  # chunks still there
    assert b.observe({A: EMPTY, B: EMPTY}, 3.0) == [(A, "draining", "drained")]
    assert b.view_of(A, 3.0)["removable"] and b.leaving() == {A}
    assert b.observe({A: Holdings(slots=1), B: EMPTY}, 4.0) == [(A, "drained", "draining")]
    assert b.undrain(A, 5.0)["state"] == "active" and b.leaving() == frozenset()
    assert b.undrain(A, 5.0)["state"] == "active"  # idempotent


def test_overdue_after_the_timeout_only_while_draining():
    b = book(**{A: BUSY})
    b.drain(A, 10.0, timeout_s=5)
    assert b.overdue(14.9) == frozenset() and b.overdue(15.0) == {A}
    b.drain(A, 12.0, timeout_s=60)  # asked again: the first time stands, the timeout is new
    assert b.overdue(15.0) == frozenset() and b.overdue(70.0) == {A}
    b.observe({A: EMPTY}, 71.0)
    assert b.overdue(100.0) == frozenset()  # drained: nothing to move


def test_a_dead_node_comes_back_draining_if_the_drain_is_still_wanted():
    b = book(**{A: BUSY, B: BUSY})
    b.drain(A, 0.0)
    assert sorted(b.observe({B: BUSY}, 1.0)) == [(A, "draining", "dead")]
    assert b.leaving() == frozenset()  # dead: the scheduler does not see it anyway
    assert b.observe({A: BUSY, B: BUSY}, 2.0) == [(A, "dead", "draining")]
    b.observe({A: BUSY}, 3.0)
    assert b.observe({A: BUSY, B: BUSY}, 4.0) == [(B, "dead", "active")]


def test_intents_survive_a_take_over_and_states_are_rebuilt():
    b = book(**{A: BUSY, B: EMPTY})
    b.drain(A, 1.0, timeout_s=40)
    b2 = DrainBook.from_doc(b.to_doc(), 50.0)
    assert b2.leaving() == frozenset()  # dead until seen
    assert b2.observe({A: EMPTY, B: EMPTY}, 51.0) == [(A, "dead", "draining"),
                                                     (A, "draining", "drained")]
    b3 = DrainBook.from_doc(b.to_doc(), 50.0)
    b3.observe({A: BUSY, B: EMPTY}, 51.0)
    assert b3.overdue(51.0) == {A}  # requested at 1.0 with 40 s: overdue by now


@pytest.mark.parametrize("doc, what", [
    (None, "expected"), ([], "expected"), ({"v": 2, "drains": {}}, "expected"),
    ({"v": 1, "drains": {"x" * 500: {"requested_at": 1, "timeout_s": 1}}}, "node id"),
    ({"v": 1, "drains": {A: {"requested_at": "soon", "timeout_s": 1}}}, "requested_at"),
    ({"v": 1, "drains": {A: {"requested_at": float("nan"), "timeout_s": 1}}}, "requested_at"),
    ({"v": 1, "drains": {A: {"requested_at": 1, "timeout_s": -1}}}, "timeout"),
    ({"v": 1, "drains": {A: {"requested_at": 1, "timeout_s": float("inf")}}}, "timeout"),
    ({"v": 1, "drains": {A: 7}}, "mapping"),
    ({"v": 1, "drains": {f"{i:056x}": {"requested_at": 1, "timeout_s": 1}
                         for i in range(DRAINS_MAX + 1)}}, "DRAINS_MAX"),
])
def test_a_damaged_stored_record_is_refused_naming_what_is_wrong(doc, what):
    with pytest.raises(BadInput, match=what):
        DrainBook.from_doc(doc, 0.0)


@pytest.mark.parametrize("node, timeout_s, what", [
    ("", 1, "node id"), (None, 1, "node id"), ("zz/..", 1, "node id"), ("a" * 129, 1, "node id"),
    ("d" * 12, 1, "no node"), ("", 1, "node id"), (A, -1, "timeout"), (A, True, "timeout"),
    (A, "10", "timeout"), (A, float("nan"), "timeout"), (A, DRAIN_TIMEOUT_MAX_S + 1, "timeout"),
])
def test_bad_drain_requests_are_refused_and_change_nothing(node, timeout_s, what):
    b = book(**{A: BUSY, f"{A[:55]}0": BUSY})
    with pytest.raises(BadInput, match=what):
        b.drain(node, 0.0, timeout_s)
    assert b.leaving() == frozenset() and b.to_doc()["drains"] == {}


def test_an_ambiguous_prefix_is_refused():
    b = book(**{A: BUSY, f"{A[:55]}0": BUSY})
    with pytest.raises(BadInput, match="2 nodes"):
        b.drain(A[:12], 0.0)


def test_illegal_moves_raise():
    r = NodeRecord(A)
    with pytest.raises(IllegalTransition):
        r.move("emptied", 0.0)  # active nodes are not "emptied"
    assert all(to in NodeState for to in TRANSITIONS.values())


EVENTS = st.lists(st.one_of(
    st.tuples(st.just("drain"), st.sampled_from([A, B, C]), st.floats(0, 20)),
    st.tuples(st.just("undrain"), st.sampled_from([A, B, C])),
    st.tuples(st.just("observe"), st.dictionaries(
        st.sampled_from([A, B, C]),
        st.builds(Holdings, st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)))),
    st.tuples(st.just("takeover"))), max_size=40)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_the_state_always_equals_a_direct_reading(events):
    """After any sequence of drains, undrains, observations and take-overs: a node is dead iff
    it was not in the last observation, drained iff wanted and holding nothing, draining iff
    wanted and holding something, active otherwise; leaving/overdue agree."""
    b = book(**{A: BUSY, B: BUSY, C: BUSY})
    alive = {A: BUSY, B: BUSY, C: BUSY}
    wanted: dict[str, tuple[float, float]] = {}
    seen: set[str] = set()  # wanted nodes observed since their drain (a fresh reading)
    now = 0.0
    for ev in events:
        now += 1.0
        if ev[0] == "drain" and ev[1] in alive:
            if ev[1] not in wanted:
                seen.discard(ev[1])  # DRAINING until read afresh
            b.drain(ev[1], now, ev[2])
            wanted[ev[1]] = (wanted.get(ev[1], (now, 0.0))[0], ev[2])
        elif ev[0] == "undrain" and ev[1] in b.nodes:
            b.undrain(ev[1], now)
            wanted.pop(ev[1], None)
        elif ev[0] == "observe":
            alive = dict(ev[1])
            b.observe(alive, now)
            seen |= set(alive)
        elif ev[0] == "takeover":
            b = DrainBook.from_doc(b.to_doc(), now)
            b.observe(alive, now)
            seen |= set(alive)
        for n, rec in b.nodes.items():
            if n not in alive:
                expect = NodeState.DEAD
            elif n in wanted:
                expect = NodeState.DRAINED if alive[n].empty() and n in seen \
                    else NodeState.DRAINING
            else:
                expect = NodeState.ACTIVE
            assert rec.state is expect, (n[:1], rec.state, expect)
        assert b.leaving() == {n for n in wanted if n in alive}
        assert b.overdue(now) == {n for n, (at, t) in wanted.items() if n in alive
                                  and b.nodes[n].state is NodeState.DRAINING
                                  and now - at >= t}


# ---------------------------------------------------------------- the scheduler

def test_a_draining_node_gets_no_grant_and_keeps_what_it_holds_counted():
    nodes = {"n1": {"CPU": 2.0}, "n2": {"CPU": 2.0}}
    ledger = slots.Ledger()
    d = slots.Demand("j1/cpu", "j1", 0, 0, {"CPU": 1.0}, 4)
    ledger.grant(d, "n1", 1)
    plan = slots.grant(nodes, ledger, [d], "j1", draining_nodes={"n1"})
    assert {g.node_id for g in plan.grants} == {"n2"}
    applied = slots.apply_grants(ledger, nodes, slots.GrantPlan(
        grants=(slots.Grant("j1/cpu", "n1", 1), slots.Grant("j1/cpu", "n2", 1)), targets={},
        preempt=False),
        [d], draining_nodes={"n1"})
    assert [g.node_id for g in applied] == ["n2"]
    assert ledger.held("j1/cpu")["n1"] == 1  # still held until the JobMaster releases it
    # Negative control: without the drain, n1 would get one.
    plan = slots.grant(nodes, slots.Ledger(), [d], "j1")
    assert "n1" in {g.node_id for g in plan.grants}


# ---------------------------------------------------------------- services

@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2), st.integers(0, 2))
def test_replicas_leave_a_draining_node_surge_first(n, max_unavailable, max_surge):
    """Whatever the rollout bounds: replicas on a draining node are replaced elsewhere and the
    ready count never drops below ``replicas`` while they move."""
    if max_unavailable == 0 and max_surge == 0:
        max_surge = 1  # refused by the spec
    core = ServiceCore(spec("1", n, max_unavailable, max_surge))
    nodes = {"n1": 8.0, "n2": 8.0, "n3": 8.0}
    now = 0.0
    for _ in range(5):
        now += 1
        for a in core.plan(now, nodes):
            pass
        for r in core.replicas.values():
            if r.state == STARTING:
                core.ready(r.rid, now)
    leaving = frozenset({"n1"})
    ready_seen = []
    for _ in range(4 * n + 6):
        now += 1
        for a in core.plan(now, nodes, leaving):
            assert a.kind != "start" or a.node != "n1"
            if a.kind == "drain":
                core.stopped(a.rid, now)
        ready_seen.append(sum(r.state == READY for r in core.replicas.values()))
        for r in core.replicas.values():
            if r.state == STARTING:
                core.ready(r.rid, now)
    live = [r for r in core.replicas.values() if r.state in (READY, STARTING)]
    assert len(live) == n and all(r.node != "n1" for r in live)
    assert min(ready_seen) >= n
    assert any("node is draining" in e for e in core.events) or \
        all(r.node != "n1" for r in core.replicas.values())


# ---------------------------------------------------------------- batch

def test_workers_on_a_draining_node_finish_their_attempt_and_take_no_more():
    core = JobCore("j", job(task("a", 4, max_retries=0)), now=0.0)
    (w1, w2), acts = up(core, ["n1", "n2"])
    first = dict(pushed(acts))
    run(core, w1, first[w1], 0.5)
    acts = core.nodes_leaving({"n1"}, (), 1.0)
    assert not [a for a in acts if isinstance(a, StopWorker)]  # its attempt runs on
    acts = core.worker_report(w1, [], [ok(first[w1])], 2.0)
    assert [a.worker_id for a in acts if isinstance(a, StopWorker)] == [w1]
    assert all(w != w1 for w, _ in pushed(acts))
    # A later fair-share pass keeps it out of work.
    assert core.workers[w1].dead
    # A later fair-share pass never takes a worker on the node back into work.
    (w3,), _ = up(core, ["n1"], 2.5)  # a slot granted there before the drain was heard
    core.shrink(SK, 5, 3.0)
    assert core.workers[w3].draining
    # Negative control: without the drain it would take work.
    core.nodes_leaving((), (), 3.5)
    core.shrink(SK, 5, 4.0)
    assert not core.workers[w3].draining


def test_an_overdue_node_moves_its_attempts_without_counting_failures():
    core = JobCore("j", job(task("a", 2, max_retries=0)), now=0.0)
    (w1,), acts = up(core, ["n1"])
    key = pushed(acts)[0][1]
    run(core, w1, key, 0.5)
    acts = core.nodes_leaving({"n1"}, {"n1"}, 1.0)
    assert [a.worker_id for a in acts if isinstance(a, StopWorker)] == [w1]
    inst = core.instances["a"][key[1]]
    assert inst.state.value == "ready" and inst.failures == 0  # re-queued, not failed
    assert not core.done() and core.preempted == 1
    (w2,), acts = up(core, ["n2"], 2.0)  # the move: it runs elsewhere
    assert key[:2] in [k[:2] for _, k in pushed(acts)]


# ---------------------------------------------------------------- the CLI

def test_node_list_shows_each_nodes_state_and_what_it_holds(monkeypatch):
    from typer.testing import CliRunner

    from cli import node as cli_node
    from cli.main import app

    info = {"nodes": [{"node_id": A, "address": "10.0.0.1", "resources": {"CPU": 2.0},
                       "free": {"CPU": 2.0}, "blacklisted": None},
                      {"node_id": B, "address": "10.0.0.2", "resources": {"CPU": 2.0},
                       "free": {"CPU": 0.0}, "blacklisted": None}]}
    b = book(**{A: Holdings(replicas=1, chunks=40), B: EMPTY, C: EMPTY})
    b.drain(A, 0.0)
    b.drain(B, 0.0)
    b.observe({A: Holdings(replicas=1, chunks=40), B: EMPTY}, 1.0)
    monkeypatch.setattr(cli_node, "master_call", lambda *a, **k: info)
    monkeypatch.setattr(cli_node, "keeper_call", lambda *a, **k: {"nodes": b.view(1.0)})
    res = CliRunner().invoke(app, ["node", "list"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "STATE" in lines[0]
    assert "draining [1 replicas, 40 chunks]" in lines[1]
    assert "drained (removable)" in lines[2]
    assert lines[3].startswith(C[:12]) and "dead" in lines[3]


@pytest.mark.parametrize("args, what", [
    (["node", "drain", A, "--timeout", "-1"], "timeout"),
    (["node", "drain", A, "--timeout", "nan"], "timeout"),
    (["node", "drain", A, "--timeout", "1e9"], "timeout"),
])
def test_node_drain_refuses_bad_input_with_exit_2(args, what):
    from typer.testing import CliRunner

    from cli.main import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and what in res.output, res.output

"""FuxiAgent heartbeats as FuxiMaster sees them (fuxi.core.agentview): health thresholds,
missing agents, coming back, exit causes, and what a heartbeat may not do."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core import agentview as av
from fuxi.core.blacklist import ClusterBlacklist
from fuxi.errors import BadInput

GIB = 1024**3
A, B = "a" * 56, "b" * 56


def hb(node=A, seq=1, mem=8 * GIB, disk=50 * GIB, boot="boot1", **extra) -> dict:
    return {"node": node, "boot": boot, "seq": seq, "at": 1000.0 + seq, "load": 0.5,
            "mem_available_bytes": mem, "disk_free_bytes": disk, **extra}


def view(nodes=(A, B), now=0.0) -> av.AgentView:
    v = av.AgentView()
    for n in nodes:
        v.deployed(n, f"tok-{n[0]}", now)
    return v


def test_healthy_heartbeats_make_a_healthy_node_with_its_health_shown():
    v = view()
    assert v.heartbeat(A, "tok-a", hb(workers={123: "w1"}), now=1.0)
    out = v.view(now=1.5)[A]
    assert out["state"] == "healthy" and out["heartbeat_age_s"] == pytest.approx(0.5)
    assert out["mem_available_bytes"] == 8 * GIB and out["workers"] == 1
    assert v.view(1.5)[B]["state"] == "starting"
    assert v.tick(1.5).bad == {}


LIMIT = av.AGENT_HEARTBEAT_S * av.AGENT_MISSED_HEARTBEATS_MAX


def test_a_silent_agent_is_missing_after_the_named_number_of_heartbeats():
    v = view()
    v.heartbeat(A, "tok-a", hb(), now=1.0)
    v.heartbeat(B, "tok-b", hb(node=B), now=1.0)
    assert A not in v.tick(1.0 + LIMIT - 0.01).bad
    v.heartbeat(B, "tok-b", hb(node=B, seq=2), now=1.0 + LIMIT)  # B still speaks
    bad = v.tick(1.0 + LIMIT + 0.01).bad
    assert set(bad) == {A} and "missing" in bad[A] and "AGENT_MISSED_HEARTBEATS_MAX" in bad[A]


def test_a_master_that_hears_nobody_blames_nobody():
    v = view()
    v.heartbeat(A, "tok-a", hb(), now=1.0)
    v.heartbeat(B, "tok-b", hb(node=B), now=1.0)
    assert v.tick(1.0 + 3 * LIMIT).bad == {}  # every agent silent: the master's side
    one = view(nodes=(A,))
    one.heartbeat(A, "tok-a", hb(), now=1.0)
    assert A in one.tick(1.0 + LIMIT + 0.01).bad  # one agent alone is judged


def test_no_agent_is_judged_on_the_first_tick_after_the_master_stalled():
    v = view()
    for n in (A, B):
        v.heartbeat(n, f"tok-{n[0]}", hb(node=n), now=1.0)
    v.tick(1.0)
    v.heartbeat(B, "tok-b", hb(node=B, seq=2), now=1.0 + 2 * LIMIT)  # read late, before the tick
    assert v.tick(1.0 + 2 * LIMIT).bad == {}  # the view was not looked at: no verdict
    v.heartbeat(B, "tok-b", hb(node=B, seq=3), now=2.0 + 2 * LIMIT)
    assert set(v.tick(2.0 + 2 * LIMIT).bad) == {A}  # the next round judges


def test_an_agent_never_heard_from_is_missing_after_the_start_grace():
    v = view()
    assert v.tick(av.AGENT_START_GRACE_S - 1).bad == {}
    assert set(v.tick(av.AGENT_START_GRACE_S + 1).bad) == {A, B}


@pytest.mark.parametrize("mem,disk,word", [
    (av.MEM_AVAILABLE_BYTES_MIN - 1, 50 * GIB, "memory exhausted"),
    (8 * GIB, av.DISK_FREE_BYTES_MIN - 1, "disk full"),
])
def test_bad_health_makes_a_node_unhealthy_with_the_threshold_named(mem, disk, word):
    v = view()
    v.heartbeat(A, "tok-a", hb(mem=mem, disk=disk), now=1.0)
    reason = v.tick(1.0).bad[A]
    assert reason.startswith("unhealthy") and word in reason and "_MIN=" in reason


def test_a_node_comes_back_only_after_enough_good_heartbeats_in_a_row():
    v = view(nodes=(A,))
    v.heartbeat(A, "tok-a", hb(seq=1), now=1.0)
    v.tick(1.0)
    v.tick(1.0 + LIMIT / 2)
    assert A in v.tick(1.0 + LIMIT + 0.5).bad  # silent: missing
    now = 100.0
    for seq in range(2, 2 + av.AGENT_HEALTHY_HEARTBEATS_MIN - 1):
        now += 1
        v.heartbeat(A, "tok-a", hb(seq=seq), now=now)
        assert A in v.tick(now).bad
    now += 1
    v.heartbeat(A, "tok-a", hb(seq=99), now=now)
    t = v.tick(now)
    assert A not in t.bad and t.recovered == [A]
    assert v.tick(now).recovered == []  # told once


def test_one_bad_heartbeat_restarts_the_count():
    v = view()
    v.heartbeat(A, "tok-a", hb(seq=1, mem=0), now=1.0)
    seq = 2
    for _ in range(av.AGENT_HEALTHY_HEARTBEATS_MIN - 1):
        v.heartbeat(A, "tok-a", hb(seq=seq), now=seq)
        seq += 1
    v.heartbeat(A, "tok-a", hb(seq=seq, mem=0), now=seq)
    seq += 1
    for _ in range(av.AGENT_HEALTHY_HEARTBEATS_MIN - 1):
        v.heartbeat(A, "tok-a", hb(seq=seq), now=seq)
        seq += 1
    assert A in v.tick(seq).bad


def test_stale_heartbeats_are_ignored_but_a_new_boot_starts_afresh():
    v = view()
    assert v.heartbeat(A, "tok-a", hb(seq=5), now=1.0)
    assert not v.heartbeat(A, "tok-a", hb(seq=4, mem=0), now=1.1)  # reordered: dropped
    assert v.view(1.1)[A]["state"] == "healthy"
    assert v.heartbeat(A, "tok-a", hb(seq=0, boot="boot2"), now=1.2)  # the agent restarted


def test_exits_are_kept_bounded_per_node():
    v = view()
    for seq in range(1, 30):
        exits = [{"worker": f"w{seq}.{i}", "pid": seq * 10 + i, "cause": "crash",
                  "exit_code": 1, "at": 1.0} for i in range(3)]
        v.heartbeat(A, "tok-a", hb(seq=seq, exits=exits), now=seq)
    assert len(v.agents[A].exits) == av.EXITS_KEPT_PER_NODE_MAX
    assert v.agents[A].exits[-1].worker == "w29.2"


# --------------------------------------------------------------------------- exit causes


@pytest.mark.parametrize("kw,cause", [
    ({"exit_code": 0}, av.ExitCause.EXITED),
    ({"exit_code": 1}, av.ExitCause.CRASH),
    ({"signal": 11}, av.ExitCause.CRASH),
    ({"signal": av.SIGKILL}, av.ExitCause.CRASH),  # no memory pressure: somebody killed it
    ({"signal": av.SIGKILL, "mem_available_bytes": 10}, av.ExitCause.OOM),
    ({"message": "ray.exceptions.OutOfMemoryError: Task was killed due to the node running "
                 "low on memory."}, av.ExitCause.OOM),
    ({"signal": av.SIGKILL, "stopped_by_us": True}, av.ExitCause.PREEMPTED),
    ({"signal": av.SIGKILL, "deadline": True, "stopped_by_us": True}, av.ExitCause.TIMED_OUT),
])
def test_exits_are_classified(kw, cause):
    assert av.classify_exit(**kw) is cause


@pytest.mark.parametrize("etype,msg,cause", [
    ("ActorDiedError", "The actor died unexpectedly: worker exit code 1", av.ExitCause.CRASH),
    ("OutOfMemoryError", "Task was killed due to the node running low on memory",
     av.ExitCause.OOM),
    ("TimeoutError", "worker did not answer within 60s (WORKER_REPLY_TIMEOUT_S)",
     av.ExitCause.TIMED_OUT),
    ("ActorDiedError", "The actor was killed by ray.kill", av.ExitCause.PREEMPTED),
])
def test_a_jobmasters_error_is_classified(etype, msg, cause):
    assert av.cause_of_error(etype, msg) is cause


# --------------------------------------------------------------------------- adversarial


@pytest.mark.parametrize("doc,word", [
    ("garbage", "expected a dict"),
    ({**hb(), "seq": "1"}, "seq"),
    ({**hb(), "seq": -1}, "seq"),
    ({**hb(), "seq": True}, "seq"),
    ({**hb(), "load": float("nan")}, "load"),
    ({**hb(), "mem_available_bytes": 2**80}, "mem_available_bytes"),
    ({**hb(), "disk_free_bytes": 1.5}, "disk_free_bytes"),
    ({**hb(), "extra": 1}, "unknown field"),
    ({k: v for k, v in hb().items() if k != "boot"}, "missing field 'boot'"),
    ({**hb(), "workers": {"x": "w"}}, "pid"),
    ({**hb(), "workers": {i: "w" for i in range(av.HEARTBEAT_WORKERS_MAX + 1)}},
     "HEARTBEAT_WORKERS_MAX"),
    ({**hb(), "exits": [{"worker": "w", "pid": 1, "cause": "bored", "at": 1.0}]}, "cause"),
    ({**hb(), "exits": [{"worker": "w", "pid": 1, "cause": "crash", "at": 1.0}] *
      (av.HEARTBEAT_EXITS_MAX + 1)}, "HEARTBEAT_EXITS_MAX"),
    ({**hb(), "node": "x" * 10_000}, "node"),
])
def test_garbage_heartbeats_get_clear_errors_and_change_nothing(doc, word):
    v = view()
    v.heartbeat(A, "tok-a", hb(seq=1), now=1.0)
    before = v.view(2.0)
    with pytest.raises(BadInput, match=word):
        v.heartbeat(A, "tok-a", doc, now=2.0)
    assert v.view(2.0) == before and v.refused == 1


def test_a_heartbeat_cannot_speak_for_another_node():
    v = view()
    bl = ClusterBlacklist()
    alive = {A, B, "c" * 56}
    # B's agent (its own token) claiming A's bad health, either way round:
    with pytest.raises(BadInput, match="agent token"):
        v.heartbeat(A, "tok-b", hb(node=A, mem=0), now=1.0)
    with pytest.raises(BadInput, match="was sent for"):
        v.heartbeat(B, "tok-b", hb(node=A, mem=0), now=1.0)
    with pytest.raises(BadInput, match="no agent was deployed"):
        v.heartbeat("z" * 56, "tok-z", hb(node="z" * 56, mem=0), now=1.0)
    with pytest.raises(BadInput, match="agent token"):
        v.heartbeat(A, None, hb(node=A, mem=0), now=1.0)
    for n, reason in v.tick(1.0).bad.items():
        bl.unhealthy(n, reason, alive, 1.0)
    assert bl.entries == {} and v.view(1.0)[A]["state"] == "starting"


def test_an_unhealthy_entry_goes_when_the_node_recovers_but_a_failure_entry_stays():
    bl = ClusterBlacklist()
    alive = {A, B, "c" * 56, "d" * 56}
    assert bl.unhealthy(A, "missing", alive, 1.0)
    assert bl.recovered(A) and A not in bl.entries
    bl._add(B, "failures in 3 jobs", alive, 1.0)
    assert not bl.recovered(B) and B in bl.entries


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B]), st.booleans(), st.booleans(),
                          st.floats(0, 10)), max_size=60))
def test_property_state_follows_the_last_heartbeats(events):
    """Whatever the order of heartbeats and silences: a node is reported bad exactly when its
    agent is missing or unhealthy, a node that was never bad is never 'recovered', and
    only deployed nodes appear."""
    v = view()
    now, seq, ever_bad = 0.0, {A: 0, B: 0}, set()
    for node, healthy, speak, gap in events:
        now += gap
        if speak:
            seq[node] += 1
            v.heartbeat(node, f"tok-{node[0]}", hb(node=node, seq=seq[node],
                                                   mem=8 * GIB if healthy else 0), now)
        t = v.tick(now)
        states = {n: a.state for n, a in v.agents.items()}
        assert set(t.bad) == {n for n, s in states.items() if s in av.BAD_STATES}
        assert not set(t.recovered) - ever_bad
        ever_bad |= set(t.bad)
        assert set(t.bad) <= {A, B}


def test_a_dead_workers_error_carries_its_cause_first():
    assert av.death_text(TimeoutError("worker did not answer within 60s")) == \
        "[timed_out] TimeoutError: worker did not answer within 60s"
    assert av.death_text(RuntimeError("boom")).startswith("[crash] RuntimeError")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=3),
                     max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(av.HEARTBEAT_FIELDS) + ["x"]), _json, max_size=10),
       st.booleans())
def test_property_any_document_is_a_heartbeat_or_a_bad_input(fields, complete):
    """Whatever a stranger sends: a checked heartbeat or BadInput, never another exception."""
    doc = {**hb(), **fields} if complete else fields
    try:
        parsed = av.parse_heartbeat(doc)
    except BadInput:
        return
    assert isinstance(parsed.seq, int) and 0 <= parsed.mem_available_bytes <= av.REPORTED_BYTES_MAX

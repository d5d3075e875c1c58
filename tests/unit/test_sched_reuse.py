"""Slot reuse and heartbeat releases in the scheduling core (issue 16 part 2, ``held.py``):
``reuse(demand, node, n, now)`` lets a demand keep finished slots for its next waiting
instances only when the core's own order would give them the slot anyway; ``release_many``
is ``release`` on many nodes in one delta. Scenarios for each rule, the garbage a caller may
send, and a Hypothesis property: whatever reuse keeps, a fresh ``decide`` on the same state
with the slots given back would have granted to the same demand."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core.sched import DemandSpec, SchedConfig, Scheduler
from fuxi.errors import BadInput

CPU1 = {"CPU": 1.0}


def cluster(nodes: int = 1, cpu: float = 4.0, **cfg) -> Scheduler:
    s = Scheduler(SchedConfig(**cfg))
    for i in range(nodes):
        s.add_node(f"n{i}", {"CPU": cpu, "memory": 32.0}, rack=f"r{i % 2}")
    return s


def demand(s, did, wanted=0, shape=CPU1, priority=0, seq=0, group="default", job=None):
    s.set_demand(DemandSpec(did, job or did, priority, seq, shape, group), wanted=wanted)


def fill(s, did, now=0.0):
    """Grant ``did`` every slot it may get (one slot per decision)."""
    while True:
        g, _ = s.decide(now)
        if g is None:
            return
        assert g.demand_id == did


def held(s, did) -> int:
    return sum(s.held(did).values())


# --------------------------------------------------------------------------- keeping


def test_the_only_waiting_demand_keeps_its_slot_without_touching_the_node():
    s = cluster()
    demand(s, "a", 4)
    fill(s, "a")
    s.ask("a", 3)  # three more instances wait; the node is full
    free_before, decisions = s.free("n0"), s.decisions
    assert s.reuse("a", "n0", 2, now=5.0) == 2
    d = s.demands["a"]
    assert (held(s, "a"), d.wanted, d.pending) == (4, 5, 1)
    assert s.free("n0") == free_before
    assert (s.decisions - decisions, s.reused) == (2, 2)
    assert d.waiting_since == 5.0 and d.boost == 0  # served: its age starts again
    s.validate()


def test_a_kept_slot_is_the_most_recently_started_in_the_preemption_order():
    s = cluster()
    demand(s, "a", 2)
    demand(s, "b", 2, job="a", seq=1)  # the same job: b is not a rival by max-min
    s.decide(0.0)
    s.decide(0.0)
    s.decide(0.0)
    s.decide(0.0)
    s.ask("a", 1)
    first = next(s._victim_order())  # noqa: SLF001 - the order is what is tested
    assert s.reuse("a", "n0", 1) == 1
    seq, where = next(s._victim_order())  # noqa: SLF001
    assert where == ("a", "n0") and seq > first[0]
    s.validate()


def test_nothing_is_kept_when_nothing_waits_and_the_slots_go_back():
    s = cluster()
    demand(s, "a", 2)
    fill(s, "a")
    assert s.reuse("a", "n0", 2) == 0
    assert (held(s, "a"), s.demands["a"].wanted, s.free("n0")["CPU"]) == (0, 0, 4.0)
    s.validate()


def test_a_waiting_higher_priority_job_gets_the_slot_instead():
    s = cluster()
    demand(s, "low", 4, priority=0)
    fill(s, "low")
    s.ask("low", 1)
    demand(s, "high", 1, priority=5, seq=1)
    assert s.reuse("low", "n0", 1) == 0
    g, _ = s.decide(0.0)
    assert (g.demand_id, g.node_id) == ("high", "n0")
    s.validate()


def test_an_aged_demand_counts_with_its_ageing_boost():
    s = cluster(ageing_step_s=10.0)
    demand(s, "old", 4, priority=0)
    fill(s, "old")
    demand(s, "waiter", 1, priority=0, seq=1)  # waits from t=0
    s.ask("old", 1, now=0.0)
    s.decide(1.0)  # nothing fits: old's slots are all busy
    s.demands["old"].waiting_since = 100.0  # old was just served; waiter has aged 5 steps
    assert s.reuse("old", "n0", 1, now=50.0) == 0
    assert s.effective_priority("waiter") == 5
    s.validate()


def test_a_group_within_its_guarantee_beats_a_borrower_whatever_the_priorities():
    s = cluster(quota_groups={"prod": {"min": {"CPU": 2.0}}})
    demand(s, "borrower", 4, priority=9)
    fill(s, "borrower")
    s.ask("borrower", 1)
    demand(s, "owner", 1, priority=0, seq=1, group="prod")
    assert s.reuse("borrower", "n0", 1) == 0
    s.validate()


def test_a_guaranteed_rival_that_does_not_fit_still_wins_it_may_reclaim():
    s = cluster(quota_groups={"prod": {"min": {"CPU": 4.0}}})
    demand(s, "borrower", 4)
    fill(s, "borrower")
    s.ask("borrower", 1)
    demand(s, "owner", 1, shape={"CPU": 2.0}, seq=1, group="prod")
    assert s.reuse("borrower", "n0", 1) == 0
    s.validate()


def test_max_min_the_job_holding_fewer_slots_gets_it():
    s = cluster()
    demand(s, "big", 4, seq=0)
    fill(s, "big")
    s.ask("big", 1)
    demand(s, "small", 1, seq=1)  # holds 0: below big's 3 once the slot is back
    assert s.reuse("big", "n0", 1) == 0
    s.validate()


def test_max_min_caps_how_many_are_kept_against_an_equal_rival():
    s = cluster(cpu=8.0)
    demand(s, "a", 7, seq=0)
    demand(s, "b", 1, seq=1)
    s.schedule(0.0)
    assert (held(s, "a"), held(s, "b")) == (7, 1)
    s.ask("a", 7)
    s.ask("b", 3)
    # with its 7 back a holds 0 and goes first, but only until it is one past b's 1
    assert s.reuse("a", "n0", 7) == 2
    assert (held(s, "a"), s.free("n0")["CPU"]) == (2, 5.0)
    s.validate()


def test_a_rival_whose_shape_cannot_fit_there_does_not_block():
    s = cluster()
    demand(s, "a", 4)
    fill(s, "a")
    s.ask("a", 1)
    demand(s, "gpu", 1, shape={"CPU": 1.0, "GPU": 1.0}, priority=9, seq=1)
    assert s.reuse("a", "n0", 1) == 1
    s.validate()


def test_a_rival_that_excludes_the_node_does_not_block():
    s = cluster()
    demand(s, "a", 4)
    fill(s, "a")
    s.ask("a", 1)
    demand(s, "picky", 1, priority=9, seq=1)
    s.set_avoid("picky", excluded={"n0"})
    assert s.reuse("a", "n0", 1) == 1
    s.validate()


def test_not_kept_on_a_node_the_demand_avoids_or_excludes():
    for kw in ({"avoid": {"n0"}}, {"excluded": {"n0"}}):
        s = cluster()
        demand(s, "a", 4)
        fill(s, "a")
        s.ask("a", 1)
        s.set_avoid("a", **kw)
        assert s.reuse("a", "n0", 1) == 0, kw
        s.validate()
    s = cluster()
    demand(s, "a", 4)
    fill(s, "a")
    s.ask("a", 1)
    s.exclude_node("n0")
    assert s.reuse("a", "n0", 1) == 0
    s.validate()


def test_locality_kept_off_place_only_for_instances_that_prefer_no_node():
    s = cluster(nodes=2)
    demand(s, "a", 0)
    s.ask_at("a", {"n0": 4})
    s.schedule(0.0)  # the 4 preferred n0 and went there
    assert s.held("a") == {"n0": 4}
    demand(s, "filler", 4, seq=1)
    s.schedule(0.0)  # n1 is full too
    s.ask_at("a", {"n1": 1})  # the next instance prefers the other node, which is full
    before = s.demands["a"].pref_total
    assert s.reuse("a", "n0", 1) == 0  # n0 is not its place, and none prefers no node
    assert s.demands["a"].pref_total == before
    s.validate()


def test_a_kept_slot_on_its_preferred_node_consumes_the_preference():
    s = cluster()
    demand(s, "a", 4)
    fill(s, "a")
    s.ask_at("a", {"n0": 2})
    assert s.reuse("a", "n0", 1) == 1
    d = s.demands["a"]
    assert d.prefer_nodes == {"n0": 1} and d.pref_total == 1
    s.validate()


def test_never_above_what_the_demand_waits_for():
    s = cluster()
    demand(s, "a", 4)
    fill(s, "a")
    s.ask("a", 1)
    assert s.reuse("a", "n0", 3) == 1
    assert (held(s, "a"), s.demands["a"].wanted) == (2, 2)
    s.validate()


# --------------------------------------------------------------------------- release_many


def test_release_many_equals_one_release_per_node():
    def build():
        s = cluster(nodes=3)
        demand(s, "a", 9)
        s.schedule(0.0, slots_max=2)
        return s
    one, many = build(), build()
    counts = {n: h for n, h in one.held("a").items()}
    for n, h in counts.items():
        one.release("a", n, h, done=True)
    many.release_many("a", counts, done=True)
    for s in (one, many):
        s.validate()
    assert one.held("a") == many.held("a") == {}
    assert one.demands["a"].wanted == many.demands["a"].wanted == 0
    assert {n: one.free(n) for n in one.index.nodes} == {n: many.free(n) for n in many.index.nodes}


@pytest.mark.parametrize("counts", [{"n0": 5}, {"n0": -1}, {"n0": True}, {"n0": 1.0},
                                    {"nx": 1}, ["n0"], "n0", None])
def test_release_many_refuses_garbage_and_changes_nothing(counts):
    s = cluster(nodes=2)
    demand(s, "a", 4)
    s.schedule(0.0)
    before = (s.held("a"), s.demands["a"].wanted, s.free("n0"))
    with pytest.raises(BadInput):
        s.release_many("a", {"n1": s.held("a").get("n1", 0), **counts}
                       if isinstance(counts, dict) else counts, done=True)
    assert (s.held("a"), s.demands["a"].wanted, s.free("n0")) == before
    s.validate()


@pytest.mark.parametrize("n", [-1, 5, True, 1.5, "1", None])
def test_reuse_refuses_a_bad_count_and_changes_nothing(n):
    s = cluster()
    demand(s, "a", 4)
    fill(s, "a")
    s.ask("a", 1)
    with pytest.raises(BadInput):
        s.reuse("a", "n0", n)
    assert (held(s, "a"), s.demands["a"].wanted, s.decisions) == (4, 5, 4)
    with pytest.raises(BadInput, match="unknown demand"):
        s.reuse("nobody", "n0", 1)
    s.validate()


# --------------------------------------------------------------------------- the property

DEMAND = st.tuples(st.integers(0, 3),  # priority
                   st.sampled_from(["default", "prod", "adhoc"]),
                   st.sampled_from([{"CPU": 1.0}, {"CPU": 2.0}, {"CPU": 1.0, "GPU": 1.0}]),
                   st.integers(1, 6),  # wanted
                   st.integers(0, 2))  # job


@settings(max_examples=150, deadline=None)
@given(demands=st.lists(DEMAND, min_size=2, max_size=6), more=st.integers(1, 4),
       n=st.integers(1, 3), who=st.integers(0, 5), gap=st.sampled_from([None, 2]))
def test_whatever_reuse_keeps_a_decision_would_have_granted_to_the_same_demand(
        demands, more, n, who, gap):
    groups = {"prod": {"min": {"CPU": 3.0}, "weight": 2.0}, "adhoc": {"max": {"CPU": 5.0}}}
    s = Scheduler(SchedConfig(quota_groups=groups, preempt_priority_gap=gap))
    s.add_node("n0", {"CPU": 8.0, "memory": 32.0})
    for i, (prio, group, shape, wanted, job) in enumerate(demands):
        s.set_demand(DemandSpec(f"d{i}", f"j{job}", prio, i, shape, group), wanted=wanted)
    s.schedule(0.0)
    holders = [did for did in s.demands if s.held(did).get("n0")]
    if not holders:
        return
    did = holders[who % len(holders)]
    s.ask(did, more)
    n = min(n, s.held(did)["n0"])
    twin = copy.deepcopy(s)
    kept = s.reuse(did, "n0", n, now=1.0)
    s.validate()
    assert 0 <= kept <= n
    twin.release(did, "n0", n, done=True)
    twin.validate()
    if kept:
        g, _ = twin.decide(1.0)
        assert g is not None and g.demand_id == did, (kept, g)


@pytest.mark.timeout(20)
def test_ageing_ends_when_a_due_time_rounds_below_its_step():
    """``(now - since) // step`` gives 2 for since=50.468685581739024, now=since + 90 (float
    rounding), so the next due time was ``now`` again and ``decide`` never returned (found by
    the simulator's heartbeats, whose times fall on such sums)."""
    since = 50.468685581739024
    now = since + 3 * 30.0
    assert int((now - since) // 30.0) == 2  # the rounding this test is about
    s = cluster(ageing_step_s=30.0)
    demand(s, "busy", 4)
    fill(s, "busy")
    s.set_demand(DemandSpec("waiter", "waiter", 0, 1, CPU1), wanted=1, now=since)
    g, _ = s.decide(now)
    assert g is None
    assert s.effective_priority("waiter") == 3
    s.validate()

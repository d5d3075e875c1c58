"""The batched protocol of the scheduling core (issue 16 part 2): ``ask_at`` (many slots, per
node counts, in one delta), ``decide(now, slots_max)`` (one grant of up to ``slots_max``
slots of one demand on one node) and ``release(..., n, done=True)`` (many slots back and
fewer wanted in one call). Scenarios for each bound of ``batch.batch_slots``, the garbage a
caller may send, and a Hypothesis property over random batched sequences."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core.sched import DemandSpec, SchedConfig, Scheduler
from fuxi.core.sched.model import PREFERRED_PLACES_MAX
from fuxi.errors import BadInput, LimitExceeded

CPU1 = {"CPU": 1.0}


def cluster(nodes: int = 4, cpu: float = 8.0, **cfg) -> Scheduler:
    s = Scheduler(SchedConfig(**cfg))
    for i in range(nodes):
        s.add_node(f"n{i}", {"CPU": cpu, "memory": 32.0}, rack=f"r{i % 2}")
    return s


def demand(s, did, wanted=0, shape=CPU1, priority=0, seq=0, group="default", job=None):
    s.set_demand(DemandSpec(did, job or did, priority, seq, shape, group), wanted=wanted)


def held(s, did) -> int:
    return sum(s.held(did).values())


# --------------------------------------------------------------------------- garbage


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "4", None])
def test_decide_refuses_a_bad_slots_max(bad):
    s = cluster()
    demand(s, "a", 3)
    with pytest.raises(BadInput, match="slots_max"):
        s.decide(0.0, bad)
    assert held(s, "a") == 0
    s.validate()


@pytest.mark.parametrize("counts", [{"n0": 0}, {"n0": -2}, {"n0": True}, {"n0": 1.5},
                                    {"n0": "3"}, {"": 1}, {None: 1}, {3: 1}, ["n0"], "n0"])
def test_ask_at_refuses_bad_counts_and_changes_nothing(counts):
    s = cluster()
    demand(s, "a", 2)
    with pytest.raises(BadInput):
        s.ask_at("a", {"n1": 2, **counts} if isinstance(counts, dict) else counts)
    d = s.demands["a"]
    assert (d.wanted, d.prefer_nodes, d.pref_total) == (2, {}, 0)


@pytest.mark.parametrize("anywhere", [-1, True, 2.0, None])
def test_ask_at_refuses_a_bad_anywhere(anywhere):
    s = cluster()
    demand(s, "a")
    with pytest.raises(BadInput, match="anywhere"):
        s.ask_at("a", {"n0": 1}, 0.0, anywhere)
    assert s.demands["a"].wanted == 0


def test_ask_at_bounds_the_places_of_one_demand_all_or_nothing():
    s = cluster()
    demand(s, "a")
    too_many = {f"x{i}": 1 for i in range(PREFERRED_PLACES_MAX + 1)}
    with pytest.raises(LimitExceeded, match="PREFERRED_PLACES_MAX"):
        s.ask_at("a", too_many)
    assert s.demands["a"].wanted == 0 and not s.demands["a"].prefer_nodes
    s.ask_at("a", {"n0": 2, "n1": 1}, 0.0, 4)
    assert s.demands["a"].wanted == 7 and s.demands["a"].pref_total == 3
    with pytest.raises(BadInput, match="unknown demand"):
        s.ask_at("nobody", {"n0": 1})


@pytest.mark.parametrize("n", [-1, True, 1.5, "1", 4])
def test_release_refuses_bad_counts(n):
    s = cluster()
    demand(s, "a", 3)
    g, _ = s.decide(0.0, 8)
    assert g.n == 3
    with pytest.raises(BadInput, match="release"):
        s.release("a", g.node_id, n)
    assert held(s, "a") == 3
    s.validate()


def test_release_done_needs_slots_still_wanted():
    s = cluster()
    demand(s, "a", 2)
    g, _ = s.decide(0.0, 8)
    s.set_wanted("a", 1)  # holds 2, wants 1: "done" for 2 would make wanted negative
    with pytest.raises(BadInput, match="done"):
        s.release("a", g.node_id, 2, True)
    assert held(s, "a") == 2
    s.release("a", g.node_id, 1, True)
    assert (held(s, "a"), s.demands["a"].wanted) == (1, 0)
    s.validate()


def test_load_grant_refuses_a_bad_count():
    s = cluster()
    demand(s, "a")
    with pytest.raises(BadInput, match="load_grant"):
        s.load_grant("a", "n0", -1)
    s.load_grant("a", "n0", 3)
    assert s.held("a") == {"n0": 3}
    s.validate()


# --------------------------------------------------------------------------- the bounds


def test_one_grant_carries_many_slots_but_never_more_than_fit_or_wanted():
    s = cluster(nodes=2, cpu=8.0)
    demand(s, "a", 20)
    g, _ = s.decide(0.0, 64)
    assert (g.n, g.locality) == (8, "cluster")  # a whole node: its fit
    g2, _ = s.decide(0.0, 3)
    assert g2.n == 3 and g2.node_id != g.node_id  # slots_max
    demand(s, "b", 2)
    s.set_wanted("a", 11)  # a waits for no more
    g3, _ = s.decide(0.0, 64)
    assert (g3.demand_id, g3.n) == ("b", 2)
    assert s.decide(0.0, 64) == (None, [])
    s.validate()


def test_node_local_grants_take_that_node_s_count_and_cluster_grants_leave_the_rest():
    s = cluster(nodes=4, cpu=8.0)
    demand(s, "a")
    s.ask_at("a", {"n2": 3, "n3": 1}, 0.0, 5)
    got = []
    while True:
        g, _ = s.decide(0.0, 64)
        if g is None:
            break
        got.append((g.node_id, g.n, g.locality))
    assert sorted(got[:2]) == [("n2", 3, "node"), ("n3", 1, "node")]
    assert all(loc == "cluster" for _, _, loc in got[2:]) and sum(n for _, n, _ in got) == 9
    s.validate()


def test_a_cluster_grant_never_takes_slots_asked_for_at_a_place():
    s = cluster(nodes=3, cpu=4.0)
    demand(s, "fill", 4)
    s.decide(0.0, 64)  # one node full: say n0
    full = next(iter(s.held("fill")))
    demand(s, "a")
    s.ask_at("a", {full: 3}, 0.0, 2)  # 3 at the full node, 2 anywhere
    g, _ = s.decide(0.0, 64)
    assert g.locality == "cluster" and g.n == 2  # not 4 nor 5: three wait for their node
    g, _ = s.decide(0.0, 64)
    assert g.n == 1  # still only one at a time while they wait for their place
    s.validate()


def test_a_batch_stays_below_the_group_max_and_within_the_guarantee():
    s = cluster(nodes=2, cpu=16.0, quota_groups={"cap": {"max": {"CPU": 5.0}},
                                                  "own": {"min": {"CPU": 3.0}}})
    demand(s, "c", 10, group="cap")
    g, _ = s.decide(0.0, 64)
    assert (g.demand_id, g.n) == ("c", 5)
    assert s.decide(0.0, 64) == (None, [])
    demand(s, "o", 10, group="own", seq=1)
    g, _ = s.decide(0.0, 64)
    assert (g.demand_id, g.n) == ("o", 3)  # its guaranteed slots (tier 0) in one grant
    g, _ = s.decide(0.0, 64)
    assert g.demand_id == "o" and held(s, "o") == 3 + g.n  # then borrowed ones, separately
    s.validate()


def test_batches_keep_max_min_fairness_between_jobs_waiting_together():
    s = cluster(nodes=2, cpu=32.0)
    demand(s, "a", 20, seq=0)
    demand(s, "b", 20, seq=1)
    while True:
        g, _ = s.decide(0.0, 64)
        if g is None:
            break
        assert abs(held(s, "a") - held(s, "b")) <= 1, (held(s, "a"), held(s, "b"))
    assert held(s, "a") == held(s, "b") == 20
    demand(s, "c", 30, seq=2)  # alone now: one grant fills what is free on a node
    g, _ = s.decide(0.0, 64)
    assert g.n == 12


def test_priority_first_whatever_the_batches():
    s = cluster(nodes=1, cpu=8.0)
    demand(s, "low", 8, priority=0, seq=0)
    demand(s, "high", 6, priority=5, seq=1)
    g, _ = s.decide(0.0, 64)
    assert (g.demand_id, g.n) == ("high", 6)
    g, _ = s.decide(0.0, 64)
    assert (g.demand_id, g.n) == ("low", 2)


def test_release_of_many_slots_gives_all_their_room_back():
    s = cluster(nodes=1, cpu=8.0)
    demand(s, "a", 8)
    g, _ = s.decide(0.0, 64)
    s.release("a", "n0", 5, True)
    assert s.free("n0")["CPU"] == 5.0 and s.demands["a"].wanted == 3 and held(s, "a") == 3
    s.validate()


# --------------------------------------------------------------------------- property

ops = st.lists(st.one_of(
    st.tuples(st.just("ask_at"), st.integers(0, 3), st.dictionaries(
        st.sampled_from(["n0", "n1", "n2", "n3", "gone"]), st.integers(1, 6), max_size=3),
        st.integers(0, 8)),
    st.tuples(st.just("ask"), st.integers(0, 3), st.integers(-4, 6)),
    st.tuples(st.just("release"), st.integers(0, 3), st.integers(1, 9), st.booleans()),
    st.tuples(st.just("decide"), st.integers(1, 70)),
    st.tuples(st.just("node-"), st.integers(0, 3)),
    st.tuples(st.just("node+"), st.integers(0, 3)),
), max_size=50)

GROUPS = {"g1": {"min": {"CPU": 5.0}}, "g2": {"max": {"CPU": 7.0}}}


@settings(max_examples=300, deadline=None)
@given(ops, st.sampled_from([None, 2]))
def test_random_batched_sequences_keep_every_book_and_bound(script, gap):
    s = Scheduler(SchedConfig(workers_per_node_max=10, quota_groups=GROUPS,
                              preempt_priority_gap=gap))
    for i in range(4):
        s.add_node(f"n{i}", {"CPU": [4.0, 8.0, 2.0, 16.0][i], "memory": 32.0}, rack=f"r{i % 2}")
    shapes = [CPU1, {"CPU": 2.0, "memory": 4.0}, {"CPU": 0.5}, CPU1]
    for i, group in enumerate(["default", "g1", "g2", "g1"]):
        demand(s, f"d{i}", 0, shapes[i], priority=i % 3, seq=i, group=group, job=f"j{i % 3}")
    now = 0.0
    for op in script:
        now += 0.5
        kind = op[0]
        if kind == "ask_at":
            s.ask_at(f"d{op[1]}", op[2], now, op[3])
        elif kind == "ask":
            d = s.demands[f"d{op[1]}"]
            s.ask(d.did, max(op[2], -d.wanted), now)
        elif kind == "release":
            d = s.demands[f"d{op[1]}"]
            for node, n in list(d.held.items())[:1]:
                k = min(n, op[2])
                if op[3] and d.wanted >= k:
                    s.release(d.did, node, k, True)
                else:
                    s.release(d.did, node, k)
        elif kind == "decide":
            fits = {(did, nid): s.index.fit(node, d.needs)
                    for did, d in s.demands.items() for nid, node in s.index.nodes.items()}
            pending = {did: d.wanted - d.held_total for did, d in s.demands.items()}
            g, revs = s.decide(now, op[1])
            if g is not None:
                assert 1 <= g.n <= op[1]
                assert g.n <= pending[g.demand_id]  # never more than it waited for
                if not revs:  # never more than fitted on the node (revocations add room)
                    assert g.n <= fits[(g.demand_id, g.node_id)]
        elif kind == "node-":
            s.remove_node(f"n{op[1]}")
        elif kind == "node+" and f"n{op[1]}" not in s.index.nodes:
            s.add_node(f"n{op[1]}", {"CPU": 4.0, "memory": 32.0}, rack="r0")
        s.validate()
        for node in s.index.nodes.values():
            assert node.workers <= 10 and all(v >= -1e-9 for v in node.free.values())
        assert s.group_used["g2"].get("CPU", 0.0) <= 7.0 + 1e-6

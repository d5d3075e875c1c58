"""The incremental scheduling core (fuxi.core.sched): readable scenarios, one rule each."""

from __future__ import annotations

import pytest

from fuxi.core.sched import DemandSpec, Plan, Revocation, SchedConfig, Scheduler, scheduler
from fuxi.errors import BadInput, LimitExceeded

CPU1 = {"CPU": 1.0}


def cluster(nodes: int = 4, cpu: float = 4.0, racks: int = 1, **cfg) -> Scheduler:
    s = Scheduler(SchedConfig(**cfg))
    for i in range(nodes):
        s.add_node(f"n{i}", {"CPU": cpu, "memory": 16.0}, rack=f"r{i % racks}")
    return s


def demand(s: Scheduler, did: str, wanted: int, shape=CPU1, priority: int = 0, seq: int = 0,
           group: str = "default", job: str | None = None, now: float = 0.0) -> None:
    s.set_demand(DemandSpec(did, job or did, priority, seq, shape, group), wanted=wanted, now=now)


def total(s: Scheduler, did: str) -> int:
    return sum(s.held(did).values())


# --------------------------------------------------------------------------- placement


def test_a_jobs_slots_spread_over_the_nodes():
    s = cluster(4)
    demand(s, "a", 8)
    s.schedule(0.0)
    assert s.held("a") == {"n0": 2, "n1": 2, "n2": 2, "n3": 2}
    s.validate()


def test_spread_comes_before_room():
    """A demand's next slot goes to a node where it holds none, even if another has more room
    (one lost machine should cost a job few instances)."""
    s = Scheduler()
    s.add_node("big", {"CPU": 8.0})
    s.add_node("small", {"CPU": 2.0})
    demand(s, "a", 3)
    s.schedule(0.0)
    assert s.held("a") == {"big": 2, "small": 1}


def test_locality_node_then_rack_then_cluster():
    s = cluster(4, cpu=1.0, racks=2)  # r0: n0, n2; r1: n1, n3
    demand(s, "a", 0)
    s.ask("a", 1, node="n3")
    s.ask("a", 1, rack="r0")
    s.ask("a", 1, node="n3")  # n3 holds one slot only: the second goes elsewhere
    plan = s.schedule(0.0)
    where = [(g.node_id, g.locality) for g in plan.grants]
    assert where[0] == ("n3", "node")
    assert where[1][0] in {"n0", "n2"} and where[1][1] == "rack"
    assert len(where) == 3 and where[2][0] != "n3"


def test_a_rack_heap_is_made_when_first_preferred_and_then_kept_true():
    """Rack heaps are built on first use: a rack preferred after its nodes filled, emptied and
    grew again still finds them, and a node joining the rack later is found there too."""
    s = cluster(4, cpu=1.0, racks=2)  # r0: n0, n2; r1: n1, n3
    demand(s, "fill", 4)
    s.schedule(0.0)
    s.release("fill", "n2")  # r0's n2 has room again, before anyone preferred r0
    demand(s, "a", 0)
    s.ask("a", 1, rack="r0")
    g = s.schedule(0.0).grants
    assert [(x.node_id, x.locality) for x in g] == [("n2", "rack")]
    s.add_node("n9", {"CPU": 1.0, "memory": 16.0}, rack="r0")  # joins a rack with a heap now
    s.ask("a", 1, rack="r0")
    g = s.schedule(0.0).grants
    assert [(x.node_id, x.locality) for x in g] == [("n9", "rack")]
    s.validate()


def test_preferring_racks_that_do_not_exist_keeps_nothing_for_them():
    """A hostile caller naming made-up racks gets cluster-level grants and leaves no heap per
    name behind (the index would otherwise grow by one list per name and shape)."""
    s = cluster(2, cpu=4.0)
    demand(s, "a", 0)
    for i in range(200):
        s.ask("a", 1, rack=f"nope{i}")
    plan = s.schedule(0.0)
    assert len(plan.grants) == 8 and {g.locality for g in plan.grants} == {"cluster"}
    assert all(set(sh.racks) <= set(s.index.racks) for sh in s.index.shapes.values())
    s.validate()


def test_avoided_nodes_are_a_last_choice_and_excluded_ones_never():
    s = cluster(2, cpu=2.0)
    demand(s, "a", 4)
    s.set_avoid("a", avoid={"n0"})
    s.schedule(0.0)
    assert s.held("a") == {"n1": 2, "n0": 2}  # n0 only once n1 was full
    s = cluster(2, cpu=2.0)
    demand(s, "a", 4)
    s.set_avoid("a", excluded={"n0"})
    s.schedule(0.0)
    assert s.held("a") == {"n1": 2}


def test_cluster_level_exclusion_holds_for_every_demand():
    s = cluster(2, cpu=2.0)
    s.exclude_node("n1")
    demand(s, "a", 4)
    demand(s, "b", 4)
    s.schedule(0.0)
    assert set(s.held("a")) | set(s.held("b")) == {"n0"}
    s.exclude_node("n1", excluded=False)
    s.schedule(0.0)
    assert total(s, "a") + total(s, "b") == 4


def test_multi_dimensional_resources_all_count():
    s = Scheduler()
    s.add_node("big-mem", {"CPU": 8.0, "memory": 64.0})
    s.add_node("gpu", {"CPU": 8.0, "memory": 8.0, "GPU": 2.0})
    demand(s, "g", 10, {"CPU": 1.0, "GPU": 1.0})
    demand(s, "m", 10, {"CPU": 1.0, "memory": 16.0})
    s.schedule(0.0)
    assert s.held("g") == {"gpu": 2} and s.held("m") == {"big-mem": 4}
    s.validate()


def test_workers_per_node_cap_holds_for_shapes_that_need_nothing():
    s = cluster(2, workers_per_node_max=3)
    demand(s, "a", 10, {"CPU": 0.0})
    s.schedule(0.0)
    assert s.held("a") == {"n0": 3, "n1": 3}


def test_a_release_wakes_a_shape_that_fit_nowhere():
    s = cluster(1, cpu=2.0)
    demand(s, "a", 2, {"CPU": 2.0}, seq=1)
    s.schedule(0.0)
    demand(s, "b", 1, {"CPU": 2.0}, seq=0)
    assert s.schedule(0.0).grants == () and s.index.shapes[(("CPU", 2.0),)].full
    s.release("a", "n0")
    g, _ = s.decide(1.0)
    assert g is not None and g.demand_id == "b"  # both hold none now: the earlier submit


def test_a_removed_node_voids_its_slots():
    s = cluster(2)
    demand(s, "a", 8)
    s.schedule(0.0)
    revs = s.remove_node("n1")
    assert revs == [Revocation("a", "n1", 4, "node_gone")]
    assert s.held("a") == {"n0": 4}
    s.validate()


def test_decisions_visit_few_nodes_on_a_big_cluster():
    """O(log N) per decision: the free index looks at a bounded number of entries, not N."""
    s = cluster(2000, cpu=8.0)
    for j in range(50):
        demand(s, f"j{j}", 200, seq=j)
    before = s.index.visits
    plan = s.schedule(0.0)
    assert len(plan.grants) == 10_000
    per_decision = (s.index.visits - before) / len(plan.grants)
    assert per_decision < 8, per_decision
    s.validate()


# --------------------------------------------------------------------------- order


def test_strict_priority_between_classes():
    s = cluster(1, cpu=4.0)
    demand(s, "low", 10, priority=0, seq=0)
    demand(s, "high", 3, priority=5, seq=1)
    s.schedule(0.0)
    assert total(s, "high") == 3 and total(s, "low") == 1


def test_max_min_fairness_within_a_class():
    s = cluster(1, cpu=6.0)
    demand(s, "small", 1, seq=0)
    demand(s, "big", 100, seq=1)
    demand(s, "mid", 2, seq=2)
    demand(s, "late", 100, seq=3)
    s.schedule(0.0)
    # 6 CPUs: small and mid get what they ask, big and late share the rest
    assert [total(s, x) for x in ("small", "mid", "big", "late")] == [1, 2, 2, 1]


def test_fairness_is_by_job_across_its_demands():
    s = cluster(1, cpu=4.0)
    demand(s, "a/cpu", 10, job="a")
    demand(s, "a/mem", 10, {"CPU": 1.0, "memory": 1.0}, job="a")
    demand(s, "b/cpu", 10, job="b", seq=1)
    s.schedule(0.0)
    assert total(s, "a/cpu") == total(s, "a/mem") == 1 and total(s, "b/cpu") == 2


def test_ageing_serves_a_low_priority_demand_eventually():
    """A hog of a higher class re-asks every slot it frees; the low demand waits until its
    priority has risen to the hog's, then gets the next freed slot."""
    s = cluster(1, cpu=2.0, ageing_step_s=10.0)
    demand(s, "hog", 2, priority=3)
    s.schedule(0.0)
    demand(s, "low", 1, priority=0, seq=1, now=0.0)
    served_at = None
    for t in range(1, 100):
        node = next(iter(s.held("hog")))
        s.release("hog", node)  # the hog finishes one and asks again (wanted stays 2)
        g, _ = s.decide(float(t))
        if g.demand_id == "low":
            served_at = t
            break
    assert served_at is not None and 30 <= served_at <= 40  # 3 steps of 10 s close the gap


def test_without_ageing_the_low_demand_starves():
    s = cluster(1, cpu=2.0, ageing_boost_max=0)
    demand(s, "hog", 2, priority=3)
    s.schedule(0.0)
    demand(s, "low", 1, priority=0, seq=1)
    for t in range(1, 200):
        s.release("hog", next(iter(s.held("hog"))))
        g, _ = s.decide(float(t))
        assert g.demand_id == "hog"


# --------------------------------------------------------------------------- quota groups


GROUPS = {"prod": {"min": {"CPU": 8.0}}, "dev": {"max": {"CPU": 6.0}}}


def test_quota_max_is_never_exceeded():
    s = cluster(4, quota_groups=GROUPS)
    demand(s, "d", 100, group="dev")
    s.schedule(0.0)
    assert total(s, "d") == 6
    assert s.group_used["dev"]["CPU"] == 6.0


def test_quota_min_comes_before_a_higher_priority_of_another_group():
    s = cluster(2, quota_groups=GROUPS)  # 8 CPUs: all prod's guarantee
    demand(s, "p", 20, group="prod", priority=0)
    demand(s, "x", 20, group="default", priority=9)
    s.schedule(0.0)
    assert total(s, "p") == 8 and total(s, "x") == 0


def test_idle_quota_is_lent_and_reclaimed_when_the_owner_asks():
    s = cluster(4, quota_groups=GROUPS)  # 16 CPUs, prod is guaranteed 8
    demand(s, "d", 6, group="dev", seq=0)
    demand(s, "x", 10, group="default", seq=1)
    s.schedule(0.0)
    assert total(s, "d") == 6 and total(s, "x") == 10  # prod is idle: its 8 are lent
    demand(s, "p", 8, group="prod", now=5.0)
    plan = s.schedule(5.0)
    assert total(s, "p") == 8
    assert sum(r.n for r in plan.revocations) == 8 and all(
        r.reason == "reclaim" for r in plan.revocations)
    s.validate()


def test_reclaim_takes_the_most_recently_started_slots_first():
    s = cluster(1, cpu=4.0, quota_groups={"prod": {"min": {"CPU": 2.0}}})
    demand(s, "old", 2, seq=0)
    s.schedule(0.0)
    demand(s, "new", 2, seq=1)
    s.schedule(1.0)
    demand(s, "p", 1, group="prod")
    plan = s.schedule(2.0)
    assert [(r.demand_id, r.n) for r in plan.revocations] == [("new", 1)]


def test_reclaim_never_takes_from_a_group_within_its_guarantee():
    """Two groups guaranteed CPU only, both below their guarantee, slots that also use memory:
    a resource the guarantee does not name is no borrowing. Before the fix each group counted
    the other as a borrower (it held memory, and its min names none), so each reclaim made the
    victim's group guaranteed again, it reclaimed back, and ``schedule`` never returned (the
    5,000-node simulation's endless run)."""
    groups = {"a": {"min": {"CPU": 4.0}}, "b": {"min": {"CPU": 4.0}}}
    s = cluster(1, cpu=8.0, quota_groups=groups)
    shape = {"CPU": 1.0, "memory": 1.0}
    demand(s, "x", 4, shape, priority=9, seq=0)  # no guarantee: borrows the idle quota
    demand(s, "a", 2, shape, group="a", seq=1)
    demand(s, "b", 2, shape, group="b", seq=2)
    s.schedule(0.0)
    assert (total(s, "x"), total(s, "a"), total(s, "b")) == (4, 2, 2)
    s.set_wanted("a", 4, 1.0)
    s.set_wanted("b", 4, 1.0)
    plan = s.schedule(1.0, decisions_max=100)  # bounded: the bug made it endless
    assert (total(s, "a"), total(s, "b"), total(s, "x")) == (4, 4, 0)
    assert sorted((r.demand_id, r.n) for r in plan.revocations) == [("x", 1)] * 4
    assert s.schedule(2.0, decisions_max=100) == Plan()  # quiet: nothing more moves
    s.validate()


def test_a_guarantee_covers_only_slots_that_use_what_it_names():
    """A group guaranteed GPUs has no claim on CPU-only slots: they wait behind higher
    priorities like anyone's and cannot reclaim; and such slots it holds are borrowed."""
    s = Scheduler(SchedConfig(quota_groups={"g": {"min": {"GPU": 2.0}}}))
    s.add_node("n0", {"CPU": 4.0, "GPU": 2.0})
    demand(s, "x", 4, priority=9)
    s.schedule(0.0)
    demand(s, "cpu-only", 2, group="g", seq=1)
    assert s.schedule(1.0) == Plan() and total(s, "x") == 4
    s.set_wanted("x", 2, 2.0)
    s.release("x", "n0", 2)
    s.schedule(2.0)
    assert total(s, "cpu-only") == 2
    demand(s, "gpu", 1, {"CPU": 1.0, "GPU": 1.0}, group="g", seq=2)
    plan = s.schedule(3.0)  # within the guarantee: reclaims from the borrower x
    assert total(s, "gpu") == 1
    assert all(r.reason == "reclaim" and r.demand_id == "x" for r in plan.revocations)
    s.validate()


def test_lending_in_proportion_to_weight():
    groups = {"owner": {"min": {"CPU": 16.0}}, "a": {"weight": 1.0}, "b": {"weight": 3.0}}
    s = cluster(4, quota_groups=groups)  # the owner's 16 CPUs idle, lent to a and b
    demand(s, "a", 100, group="a")
    demand(s, "b", 100, group="b", seq=1)
    s.schedule(0.0)
    assert (total(s, "a"), total(s, "b")) == (4, 12)


def test_quota_groups_change_the_fair_targets_too():
    s = cluster(4, quota_groups=GROUPS)
    demand(s, "d", 100, group="dev")
    demand(s, "p", 4, group="prod", seq=1)
    assert s.targets() == {"d": 6, "p": 4}


# --------------------------------------------------------------------------- preemption


def test_priority_preemption_takes_the_least_important_most_recent_first():
    s = cluster(1, cpu=4.0, preempt_priority_gap=1)
    demand(s, "p5-early", 1, priority=5, seq=0)
    demand(s, "p1", 1, priority=1, seq=1)
    s.schedule(0.0)
    demand(s, "p5-late", 1, priority=5, seq=2)
    s.schedule(1.0)
    demand(s, "p1-late", 1, priority=1, seq=3)
    s.schedule(2.0)
    demand(s, "top", 2, priority=9, seq=4)
    plan = s.schedule(3.0)
    assert [r.demand_id for r in plan.revocations] == ["p1-late", "p1"]
    assert all(r.reason == "priority" for r in plan.revocations)
    assert total(s, "top") == 2 and total(s, "p5-early") == total(s, "p5-late") == 1


def test_no_priority_preemption_unless_configured():
    s = cluster(1, cpu=1.0)
    demand(s, "low", 1, priority=0)
    s.schedule(0.0)
    demand(s, "high", 1, priority=9)
    assert s.schedule(1.0).revocations == () and total(s, "high") == 0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, match", [
    (lambda s: s.add_node("n0", {"CPU": 1.0}), "known already"),
    (lambda s: s.add_node("x", {"CPU": -1.0}), "expected a finite number >= 0"),
    (lambda s: s.set_wanted("nobody", 1), "unknown demand"),
    (lambda s: s.release("a", "n0", 5), "0 held"),
    (lambda s: s.set_demand(DemandSpec("b", "b", 0, 0, CPU1, "nope")), "not configured"),
    (lambda s: s.set_wanted("a", -1), "expected an integer >= 0"),
])
def test_bad_input_says_what_was_wrong(call, match):
    s = cluster(1)
    demand(s, "a", 0)
    with pytest.raises(BadInput, match=match):
        call(s)


def test_a_preference_past_its_limit_is_refused_and_changes_nothing(monkeypatch):
    """A job asking for more preferred places than PREFERRED_PLACES_MAX: the ask that goes
    past it is refused with the limit named, and its slot is not counted as wanted either (it
    used to be: wanted went up, then the error), so the caller can ask again without a place."""
    monkeypatch.setattr(scheduler, "PREFERRED_PLACES_MAX", 3)
    s = cluster(1, cpu=1.0)
    demand(s, "a", 0)
    for i in range(3):
        s.ask("a", 1, node=f"n{i}")
    with pytest.raises(LimitExceeded, match="PREFERRED_PLACES_MAX is 3"):
        s.ask("a", 1, node="n9")
    assert s.demands["a"].wanted == 3
    s.ask("a", 1)  # without a place: fine
    assert s.demands["a"].wanted == 4


def test_quota_config_is_checked():
    with pytest.raises(BadInput, match="below"):
        Scheduler(SchedConfig(quota_groups={"g": {"min": {"CPU": 4}, "max": {"CPU": 2}}}))
    with pytest.raises(BadInput, match="unknown keys"):
        Scheduler(SchedConfig(quota_groups={"g": {"minimum": {}}}))
    with pytest.raises(LimitExceeded, match="QUOTA_GROUPS_MAX"):
        Scheduler(SchedConfig(quota_groups={f"g{i}": {} for i in range(80)}))

"""One sync as a plan: ``slots.grant`` proposes (pure), ``slots.apply_grants`` re-checks and
commits. FuxiMaster's ``sync`` and the simulator (``tests/sim``) both call exactly these."""

from __future__ import annotations

import asyncio

import ast
import inspect
import random
import textwrap
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core import slots
from fuxi.core.blacklist import ClusterBlacklist
from fuxi.core.slots import Demand, Grant, GrantPlan, Ledger, apply_grants, grant

CPU1 = {"CPU": 1.0}


def d(job, wanted, shape=CPU1, priority=50, seq=1, sk="cpu"):
    return Demand(f"{job}/{sk}", job, priority, seq, shape, wanted)


@pytest.mark.parametrize("name, nodes, held, demands, job, avoid, grants, targets", [
    ("alone: all it wants, spread", {"n1": {"CPU": 2}, "n2": {"CPU": 2}}, {},
     [d("a", 3)], "a", (), {("a/cpu", "n1"): 2, ("a/cpu", "n2"): 1}, {"a/cpu": 3}),
    ("two jobs share fairly", {"n1": {"CPU": 4}}, {},
     [d("a", 10, seq=1), d("b", 10, seq=2)], "a", (), {("a/cpu", "n1"): 2},
     {"a/cpu": 2}),
    ("already at target: nothing new", {"n1": {"CPU": 4}}, {("a/cpu", "n1"): 2},
     [d("a", 2)], "a", (), {}, {"a/cpu": 2}),
    ("over target: the target says give back", {"n1": {"CPU": 4}}, {("a/cpu", "n1"): 4},
     [d("a", 4, seq=1), d("b", 4, seq=2)], "a", (), {}, {"a/cpu": 2}),
    ("avoided node only when nothing else fits", {"n1": {"CPU": 1}, "n2": {"CPU": 1}}, {},
     [d("a", 1)], "a", ("n1",), {("a/cpu", "n2"): 1}, {"a/cpu": 1}),
    ("full cluster: nothing to place", {"n1": {"CPU": 1}}, {("b/cpu", "n1"): 1},
     [d("a", 1, seq=1), d("b", 1, seq=2)], "a", (), {}, {"a/cpu": 1}),
])
def test_grant_plans_table(name, nodes, held, demands, job, avoid, grants, targets):
    ledger = Ledger()
    by_id = {x.demand_id: x for x in demands}
    for (did, node), n in held.items():
        ledger.grant(by_id[did], node, n)
    before = ledger.to_dict()
    plan = grant(nodes, ledger, demands, job, avoid_nodes=avoid)
    assert ledger.to_dict() == before, name  # planning changes nothing
    assert {(g.demand_id, g.node_id): g.n for g in plan.grants} == grants, name
    assert dict(plan.targets) == targets, name


def test_workers_per_node_cap_holds_for_shapes_that_need_nothing():
    plan = grant({"n1": {"CPU": 1}}, Ledger(), [d("a", 10, shape={"CPU": 0.0})], "a",
                 workers_per_node_max=3)
    assert [(g.node_id, g.n) for g in plan.grants] == [("n1", 3)]


def test_an_online_replica_waiting_for_room_asks_jobs_to_preempt():
    ledger = Ledger()
    job = d("a", 2, priority=50)
    ledger.grant(job, "n1", 2)
    svc = Demand("svc:x", "svc:x", 1000, 0, CPU1, 1)
    plan = grant({"n1": {"CPU": 2}}, ledger, [job, svc], "a", online_ids={"svc:x"})
    assert plan.preempt and plan.targets == {"a/cpu": 1} and plan.grants == ()
    ledger.release("a/cpu", "n1", 1)
    ledger.grant(svc, "n1", 1)  # the replica got its slot: nobody needs to hurry
    assert not grant({"n1": {"CPU": 2}}, ledger, [job, svc], "a", online_ids={"svc:x"}).preempt


def test_apply_rechecks_and_drops_what_no_longer_fits():
    nodes = {"n1": {"CPU": 2}, "n2": {"CPU": 2}}
    ledger = Ledger()
    a, b = d("a", 4), d("b", 2, seq=2)
    plan = GrantPlan(grants=(Grant("a/cpu", "n1", 2), Grant("a/cpu", "gone", 1),
                             Grant("b/cpu", "n1", 1), Grant("nobody/cpu", "n2", 1)),
                     targets={}, preempt=False)
    applied = apply_grants(ledger, nodes, plan, [a, b])
    assert applied == [Grant("a/cpu", "n1", 2)]  # n1 is full after it; "gone" and unknown dropped
    assert ledger.held("a/cpu") == {"n1": 2} and ledger.held("b/cpu") == {}


nodes_st = st.dictionaries(st.sampled_from(["n1", "n2", "n3"]),
                           st.fixed_dictionaries({"CPU": st.integers(0, 4).map(float)}),
                           max_size=3)


@settings(max_examples=200, deadline=None)
@given(nodes_st, st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 8),
                                    st.sampled_from([0.0, 0.5, 1.0, 2.0])), max_size=5),
       st.integers(0, 10_000))
def test_a_plan_made_now_applies_whole_and_never_overcommits(nodes, wants, seed):
    rng = random.Random(seed)
    demands, seen = [], set()
    for job, n, cpu in wants:
        did = f"{job}/{cpu:g}"
        if did in seen:
            continue
        seen.add(did)
        demands.append(Demand(did, job, rng.choice([0, 50]), rng.randint(0, 3), {"CPU": cpu}, n))
    ledger = Ledger()
    for job in ("a", "b", "c"):
        plan = grant(nodes, ledger, demands, job, workers_per_node_max=6)
        assert apply_grants(ledger, nodes, plan, demands, workers_per_node_max=6) == list(plan.grants)
        for g in plan.grants:
            assert sum(ledger.held(g.demand_id).values()) <= plan.targets[g.demand_id]
    for node, total in nodes.items():
        assert slots.fits(total, ledger.used_on(node))  # nothing is overcommitted
        assert sum(ledger.held(x.demand_id).get(node, 0) for x in demands) <= 6


# --------------------------------------------------------------------------- one function, two callers


def _calls(fn) -> set[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    return {f"{n.func.value.id}.{n.func.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and isinstance(n.func.value, ast.Name)}


def _master_sync():
    from fuxi.shells.master import FuxiMaster  # imports Ray, starts nothing

    return FuxiMaster.__ray_metadata__.modified_class.sync


def test_the_simulator_and_the_master_call_the_same_grant_functions():
    from tests.sim import harness

    assert harness.slotlib is slots  # the core module itself, not a copy
    sim_calls = _calls(harness.Sim.on_sync)
    master_calls = _calls(_master_sync())
    for fn in ("grant", "apply_grants"):
        assert f"slotlib.{fn}" in sim_calls and f"slots.{fn}" in master_calls
    for copy in ("place", "fair_targets", "fair_assignment"):  # no policy of their own
        assert f"slotlib.{copy}" not in sim_calls and f"slots.{copy}" not in master_calls


def _fake_master(nodes):
    fake = SimpleNamespace(
        auth_enabled=False, ledger=Ledger(), jobmasters={"j": object()}, demands={},
        priorities={}, submit_seq={"j": 1}, nodes=nodes, blacklists=ClusterBlacklist())
    from fuxi.shells.adoption import Adoption

    fake.adoption = Adoption(False, set())  # a master that found no job to adopt
    from fuxi.shells.hotnodes import HotNodeWatch

    fake.agents = SimpleNamespace(hot=HotNodeWatch())  # no node judged hot
    from fuxi.shells.admission import Admissions

    fake.admissions = Admissions(None, None, running=lambda: fake.jobmasters,
                                 start=lambda *a: None, tasks=set())  # queues: default only
    async def refresh(force=False):
        return None

    fake._refresh_nodes = refresh
    fake._service_slots = lambda: []
    from fuxi.shells.leadership import Leadership

    fake.leadership = Leadership(fake, "FuxiMaster", ["FuxiMaster"], None, None)  # no election
    from fuxi.shells.drains import MasterDrains

    fake.drains = MasterDrains(fake)  # no node is draining unless a test says so
    return fake


def test_the_master_grants_nothing_on_a_draining_node_and_tells_the_jobmaster():
    master_sync = _master_sync()
    demands = {"cpu=1": {"shape": CPU1, "wanted": 6}}
    fake = _fake_master({"n1": {"CPU": 4}, "n2": {"CPU": 4}})
    fake.drains.draining, fake.drains.overdue = frozenset({"n1"}), frozenset({"n1"})
    out = asyncio.run(master_sync(fake, "j", 50, demands, [], []))
    assert {g["node_id"] for g in out["grants"]} == {"n2"}
    assert out["draining"] == ["n1"] and out["overdue"] == ["n1"]
    fake = _fake_master({"n1": {"CPU": 4}, "n2": {"CPU": 4}})  # negative control
    out = asyncio.run(master_sync(fake, "j", 50, demands, [], []))
    assert {g["node_id"] for g in out["grants"]} == {"n1", "n2"} and out["draining"] == []


def test_a_change_of_policy_in_the_core_shows_in_the_master_and_the_simulator(monkeypatch):
    from tests.sim import harness

    master_sync = _master_sync()

    def sync(*args):  # FuxiMaster.sync is a coroutine (it must not block the actor's loop)
        return asyncio.run(master_sync(*args))

    demands = {"cpu=1": {"shape": CPU1, "wanted": 3}}
    normal = sync(_fake_master({"n1": {"CPU": 4}}), "j", 50, demands, [], [])
    assert sum(g["n"] for g in normal["grants"]) == 3

    # A policy that grants one slot per sync at most: both callers follow it at once.
    real = slots.grant
    seen = {"sim": 0}

    def one_at_a_time(*args, **kwargs):
        plan = real(*args, **kwargs)
        seen["sim"] += 1
        return GrantPlan(plan.grants[:1] and (Grant(plan.grants[0].demand_id,
                                                    plan.grants[0].node_id, 1),),
                         plan.targets, plan.preempt)

    monkeypatch.setattr(slots, "grant", one_at_a_time)
    changed = sync(_fake_master({"n1": {"CPU": 4}}), "j", 50, demands, [], [])
    assert [g["n"] for g in changed["grants"]] == [1]

    seen["sim"] = 0
    sim = harness.Sim(harness.make_scenario(3))
    sim.on_sync()
    held = sum(sim.ledger.held(f"me/{harness.SK}").values())
    assert seen["sim"] == 1 and held <= 1

"""Hypothesis properties of the scheduling core: safety under any sequence of deltas, and the
policy's promises (fairness, strict priority, quotas, ageing, preemption order)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core.sched import RESOURCE_TOLERANCE, DemandSpec, Plan, SchedConfig, Scheduler

SHAPES = [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 2.0, "memory": 4.0}, {"CPU": 1.0, "GPU": 1.0},
          {"memory": 2.0}, {"CPU": 0.0}]
NODE_KINDS = [{"CPU": 4.0, "memory": 16.0}, {"CPU": 2.0, "memory": 4.0},
              {"CPU": 8.0, "memory": 8.0, "GPU": 2.0}, {"CPU": 1.0}]
GROUPS = {"g1": {"min": {"CPU": 4.0}, "weight": 2.0}, "g2": {"max": {"CPU": 6.0, "memory": 8.0}},
          "g3": {"min": {"CPU": 2.0, "memory": 4.0}, "max": {"CPU": 10.0}}}

ops = st.lists(st.one_of(
    st.tuples(st.just("node+"), st.integers(0, 7), st.sampled_from(range(len(NODE_KINDS))),
              st.integers(0, 2)),
    st.tuples(st.just("node-"), st.integers(0, 7)),
    st.tuples(st.just("demand"), st.integers(0, 7), st.sampled_from(range(len(SHAPES))),
              st.integers(0, 3), st.sampled_from(["default", "g1", "g2", "g3"]),
              st.integers(0, 12)),
    st.tuples(st.just("ask"), st.integers(0, 7), st.integers(-3, 5), st.integers(-1, 7)),
    st.tuples(st.just("release"), st.integers(0, 7), st.integers(1, 3)),
    st.tuples(st.just("exclude"), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("schedule"), st.integers(0, 20)),
    st.tuples(st.just("decide"),),
), max_size=40)


def check_safe(s: Scheduler) -> None:
    s.validate()
    for node in s.index.nodes.values():
        assert node.workers <= s.config.workers_per_node_max
        for k, v in node.free.items():
            assert v >= -RESOURCE_TOLERANCE, (node.node_id, k, v)  # never overcommitted
    for name, group in s.groups.items():
        if group.max is not None:
            for k, cap in group.max.items():
                assert s.group_used[name].get(k, 0.0) <= cap + 1e-6, (name, k)


@settings(max_examples=300, deadline=None)
@given(ops, st.sampled_from([None, 1, 3]))
def test_no_sequence_of_deltas_overcommits_a_node_or_a_quota(script, gap):
    s = Scheduler(SchedConfig(workers_per_node_max=6, quota_groups=GROUPS,
                              preempt_priority_gap=gap, ageing_step_s=1.0))
    now = 0.0
    for op in script:
        now += 0.5
        kind = op[0]
        if kind == "node+" and f"n{op[1]}" not in s.index.nodes:
            s.add_node(f"n{op[1]}", NODE_KINDS[op[2]], rack=f"r{op[3]}")
        elif kind == "node-":
            revs = s.remove_node(f"n{op[1]}")
            assert all(r.reason == "node_gone" and r.node_id == f"n{op[1]}" for r in revs)
        elif kind == "demand":
            did = f"d{op[1]}"
            old = s.demands.get(did)
            shape = SHAPES[op[2]] if old is None or not old.held_total else dict(old.spec.shape)
            s.set_demand(DemandSpec(did, f"j{op[1] % 4}", op[3], op[1], shape, op[4]),
                         wanted=op[5], now=now)
        elif kind == "ask" and f"d{op[1]}" in s.demands:
            d = s.demands[f"d{op[1]}"]
            n = max(op[2], -d.wanted)
            s.ask(d.did, n, now, node=f"n{op[3]}" if op[3] >= 0 else None)
        elif kind == "release" and f"d{op[1]}" in s.demands:
            d = s.demands[f"d{op[1]}"]
            for node, n in list(d.held.items())[:1]:
                s.release(d.did, node, min(n, op[2]))
        elif kind == "exclude":
            s.exclude_node(f"n{op[1]}", op[2])
        elif kind == "schedule":
            plan = s.schedule(now, decisions_max=op[1] or None)
            assert not any(g.node_id in s.excluded_nodes for g in plan.grants)
        elif kind == "decide":
            s.decide(now)
        check_safe(s)
    s.targets()  # computes on any state


@st.composite
def same_shape_clusters(draw):
    nodes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=6))
    wants = draw(st.lists(st.integers(0, 12), min_size=1, max_size=5))
    prios = draw(st.lists(st.integers(0, 2), min_size=len(wants), max_size=len(wants)))
    return nodes, wants, prios


def build(nodes, wants, prios, **cfg) -> Scheduler:
    s = Scheduler(SchedConfig(**cfg))
    for i, cpu in enumerate(nodes):
        s.add_node(f"n{i}", {"CPU": float(cpu)})
    for i, (w, p) in enumerate(zip(wants, prios)):
        s.set_demand(DemandSpec(f"j{i}", f"j{i}", p, i, {"CPU": 1.0}), wanted=w)
    return s


@settings(max_examples=200, deadline=None)
@given(same_shape_clusters())
def test_max_min_fair_within_a_class_and_work_conserving(case):
    nodes, wants, prios = case
    s = build(nodes, wants, [0] * len(wants))
    s.schedule(0.0)
    held = [sum(s.held(f"j{i}").values()) for i in range(len(wants))]
    for i, w in enumerate(wants):
        assert held[i] <= w
        if held[i] < w:  # left wanting: nobody holds more than one slot more, and no room left
            assert all(h <= held[i] + 1 for h in held)
            assert all(n.free.get("CPU", 0.0) < 1.0 for n in s.index.nodes.values())
    assert s.targets() == {f"j{i}": h for i, h in enumerate(held)}  # the fluid model agrees


@settings(max_examples=200, deadline=None)
@given(same_shape_clusters())
def test_strict_priority_between_classes(case):
    nodes, wants, prios = case
    s = build(nodes, wants, prios)
    s.schedule(0.0)
    for cut in set(prios):
        upper = [i for i, p in enumerate(prios) if p >= cut]
        alone = build(nodes, [wants[i] for i in upper], [prios[i] for i in upper])
        alone.schedule(0.0)
        got = {i: sum(s.held(f"j{i}").values()) for i in upper}
        assert sum(got.values()) == sum(sum(alone.held(f"j{k}").values())
                                        for k in range(len(upper)))
    for i, p in enumerate(prios):
        if sum(s.held(f"j{i}").values()) < wants[i]:  # left wanting: no lower class holds any
            assert all(not s.held(f"j{k}") for k, q in enumerate(prios) if q < p)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=4), st.lists(st.integers(1, 3), min_size=4,
       max_size=4), st.integers(0, 30), st.integers(0, 2))
def test_quota_min_is_guaranteed_by_reclaiming_lent_slots(mins, weights, borrower_want, pri):
    """Groups whose minimums the cluster can hold all get min(want, min) even when borrowers
    filled the cluster first; reclaim revokes only slots of groups above their minimum."""
    cpus = 4 * 4
    if sum(mins) > cpus:
        return
    groups = {f"g{i}": {"min": {"CPU": float(m)}, "weight": float(weights[i])}
              for i, m in enumerate(mins)}
    s = Scheduler(SchedConfig(quota_groups=groups))
    for i in range(4):
        s.add_node(f"n{i}", {"CPU": 4.0})
    s.set_demand(DemandSpec("borrow", "borrow", pri, 0, {"CPU": 1.0}), wanted=borrower_want)
    s.schedule(0.0)
    for i, m in enumerate(mins):
        s.set_demand(DemandSpec(f"own{i}", f"own{i}", 0, 1 + i, {"CPU": 1.0}, f"g{i}"),
                     wanted=m + 1)
    plan = s.schedule(1.0)
    for i, m in enumerate(mins):
        assert sum(s.held(f"own{i}").values()) >= m
    assert all(r.demand_id == "borrow" and r.reason == "reclaim" for r in plan.revocations)
    check_safe(s)


RECLAIM_SHAPES = [{"CPU": 1.0, "memory": 1.0}, {"CPU": 2.0, "memory": 8.0}, {"CPU": 1.0},
                  {"memory": 4.0}, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 4.0, "memory": 2.0}]
GUARANTEED_KINDS = ["CPU", "memory", "GPU"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.dictionaries(st.sampled_from(GUARANTEED_KINDS), st.integers(1, 8),
                                          min_size=1, max_size=2),
                          st.lists(st.tuples(st.sampled_from(range(len(RECLAIM_SHAPES))),
                                             st.integers(0, 6)), min_size=1, max_size=2)),
                min_size=2, max_size=4),
       st.sampled_from(range(len(RECLAIM_SHAPES))), st.integers(0, 40), st.integers(0, 9))
def test_reclaim_ends_and_never_takes_slots_within_a_guarantee(groups, borrower_shape,
                                                               borrower_want, borrower_pri):
    """Groups guaranteed some resources (not all they use), a borrower that filled the
    cluster first, then every group asks: with nothing released meanwhile, the pass ends on
    its own (reclaim does not chase its tail: a slot taken back is never re-granted to its old
    group by reclaiming from the new one), nothing moves in a second pass, and a group that
    asked only for what its guarantee covers loses nothing."""
    cfg = {f"g{i}": {"min": {k: float(v) for k, v in mins.items()}}
           for i, (mins, _) in enumerate(groups)}
    s = Scheduler(SchedConfig(quota_groups=cfg, workers_per_node_max=16))
    for i in range(3):
        s.add_node(f"n{i}", {"CPU": 6.0, "memory": 12.0, "GPU": 2.0 if i == 0 else 0.0})
    s.set_demand(DemandSpec("borrow", "borrow", borrower_pri, 0,
                            RECLAIM_SHAPES[borrower_shape]), wanted=borrower_want)
    s.schedule(0.0)
    seq = 1
    within: set[str] = set()  # demands of groups that ask only what their guarantee covers
    for i, (mins, asks) in enumerate(groups):
        ask_total: dict[str, float] = {}
        dids = []
        for shape_i, want in asks:
            did = f"g{i}d{seq}"
            s.set_demand(DemandSpec(did, did, 0, seq, RECLAIM_SHAPES[shape_i], f"g{i}"),
                         wanted=want)
            for k, v in RECLAIM_SHAPES[shape_i].items():
                ask_total[k] = ask_total.get(k, 0.0) + v * want
            dids.append(did)
            seq += 1
        covered = all(any(k in mins for k in RECLAIM_SHAPES[si]) for si, w in asks if w)
        if covered and all(ask_total.get(k, 0.0) <= v for k, v in mins.items()):
            within.update(dids)
    wanted = borrower_want + sum(w for _, asks in groups for _, w in asks)
    bound = 10 * wanted + 10  # far more than any ending pass needs
    plan = s.schedule(1.0, decisions_max=bound)
    assert len(plan.grants) < bound, "reclaim went round in circles"
    assert s.schedule(2.0, decisions_max=bound) == Plan()  # quiet: nothing changed, nothing moves
    assert not [r for r in plan.revocations if r.demand_id in within]
    check_safe(s)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(2, 40))
def test_lending_is_in_proportion_to_weight(w1, w2, cpus):
    groups = {"a": {"weight": float(w1)}, "b": {"weight": float(w2)}}
    s = Scheduler(SchedConfig(quota_groups=groups))
    s.add_node("n0", {"CPU": float(cpus)})
    s.set_demand(DemandSpec("a", "a", 0, 0, {"CPU": 1.0}, "a"), wanted=1000)
    s.set_demand(DemandSpec("b", "b", 0, 1, {"CPU": 1.0}, "b"), wanted=1000)
    s.schedule(0.0)
    a, b = sum(s.held("a").values()), sum(s.held("b").values())
    assert a + b == cpus
    assert abs(a / w1 - b / w2) <= 1.0 / min(w1, w2) + 1e-9  # shares within one slot


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20), st.sampled_from([1.0, 5.0, 30.0]), st.integers(1, 4))
def test_ageing_serves_a_starved_demand_within_its_gap(gap, step, slots):
    s = Scheduler(SchedConfig(ageing_step_s=step))
    s.add_node("n0", {"CPU": float(slots)})
    s.set_demand(DemandSpec("hog", "hog", gap, 0, {"CPU": 1.0}), wanted=slots)
    s.schedule(0.0)
    s.set_demand(DemandSpec("low", "low", 0, 1, {"CPU": 1.0}), wanted=1, now=0.0)
    t = 0.0
    while True:
        t += step / 2
        s.release("hog", "n0")
        g, _ = s.decide(t)
        if g.demand_id == "low":
            break
        assert t <= (gap + 1) * step, "still starved past its gap in ageing steps"
    assert t >= gap * step  # and not before its priority caught up


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 3)), min_size=1, max_size=8),
       st.integers(1, 4))
def test_preemption_order_least_important_then_most_recent(running, need):
    """Whatever runs, a priority preemption revokes the lowest priority first and, within it,
    the most recently started."""
    s = Scheduler(SchedConfig(preempt_priority_gap=1))
    s.add_node("n0", {"CPU": 8.0})
    started = []  # (priority, order started, demand)
    fits = []
    for prio, n in running:  # what fits on the node without preempting anyone
        if sum(x[1] for x in fits) + n <= 8:
            fits.append((prio, n))
    for i, (prio, n) in enumerate(fits):
        s.set_demand(DemandSpec(f"r{i}", f"r{i}", prio, i, {"CPU": 1.0}), wanted=n)
        for g in s.schedule(float(i)).grants:
            started.append((prio, len(started), g.demand_id))
    free = 8 - len(started)
    s.set_demand(DemandSpec("top", "top", 9, 99, {"CPU": 1.0}), wanted=free + need)
    plan = s.schedule(100.0)
    revoked = sum(r.n for r in plan.revocations)
    expected = sorted(started, key=lambda x: (x[0], -x[1]))[:min(need, len(started))]
    assert revoked == len(expected)
    want: dict[str, int] = {}
    for _, _, did in expected:
        want[did] = want.get(did, 0) + 1
    got: dict[str, int] = {}
    for r in plan.revocations:
        got[r.demand_id] = got.get(r.demand_id, 0) + r.n
    assert got == want

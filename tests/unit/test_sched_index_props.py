"""Hypothesis properties of the scheduling core's indexes against brute-force scans.

The core answers "which node has the most room for a shape" from lazy heaps (``index``) and
"which demand goes next" from lazy per-(group, shape) queues walked through a cached list
(``Scheduler._pick``, with each demand's queue and each group's facts cached). After any
sequence of deltas (nodes added and removed, demands set and moved between groups, asks at
places, batched decisions, releases, slot reuse, exclusions) each must say what a scan of
every node and every demand says.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core.sched import DemandSpec, SchedConfig, Scheduler
from fuxi.core.sched.held import SHARE
from fuxi.core.sched.quota import borrow_share, guaranteed, under_max
from fuxi.core.sched.resources import fit_count

SHAPES = [{"CPU": 1.0}, {"CPU": 0.5, "memory": 1.0}, {"CPU": 2.0, "memory": 4.0},
          {"CPU": 1.0, "GPU": 1.0}, {"memory": 3.0}]
NODE_KINDS = [{"CPU": 4.0, "memory": 16.0}, {"CPU": 2.0, "memory": 4.0},
              {"CPU": 8.0, "memory": 8.0, "GPU": 2.0}, {"CPU": 1.0}]
GROUPS = {"g1": {"min": {"CPU": 4.0}, "weight": 2.0}, "g2": {"max": {"CPU": 6.0, "memory": 8.0}},
          "g3": {"min": {"CPU": 2.0, "memory": 4.0}, "max": {"CPU": 10.0}}}
GROUP_NAMES = ["default", "g1", "g2", "g3"]

ops = st.lists(st.one_of(
    st.tuples(st.just("node+"), st.integers(0, 7), st.integers(0, len(NODE_KINDS) - 1),
              st.integers(0, 2)),
    st.tuples(st.just("node-"), st.integers(0, 7)),
    st.tuples(st.just("demand"), st.integers(0, 7), st.integers(0, len(SHAPES) - 1),
              st.integers(0, 3), st.sampled_from(GROUP_NAMES), st.integers(0, 10)),
    st.tuples(st.just("ask_at"), st.integers(0, 7),
              st.dictionaries(st.integers(0, 7), st.integers(1, 3), max_size=3),
              st.integers(0, 4)),
    st.tuples(st.just("decide"), st.integers(1, 8)),
    st.tuples(st.just("decide"), st.integers(1, 8)),
    st.tuples(st.just("release"), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("reuse"), st.integers(0, 7)),
    st.tuples(st.just("exclude"), st.integers(0, 7), st.booleans()),
), min_size=8, max_size=40)


def brute_fit(s: Scheduler, node, needs) -> int:
    return fit_count(node.free, needs, s.config.workers_per_node_max - node.workers)


def check_free_index(s: Scheduler) -> None:
    """Every shape's heap knows every node with room (an entry claiming at least its real
    fit), and its top says the most any node has: what a scan of all nodes says."""
    idx = s.index
    for needs, sh in idx.shapes.items():
        claim = {}
        for negf, nid in sh.heap:
            claim[nid] = max(claim.get(nid, 0), -negf)
        for nid, node in idx.nodes.items():
            f = brute_fit(s, node, needs)
            assert claim.get(nid, 0) >= f, (needs, nid, f, claim.get(nid))
        best = max((brute_fit(s, n, needs) for n in idx.nodes.values()), default=0)
        assert idx.top_fit(sh) == best, (needs, best)
        if best > 0:
            assert not sh.full, f"{needs}: marked full, yet {best} fit somewhere"


def brute_pick(s: Scheduler):
    """The demand ``_pick`` must return, from a scan of every demand with fresh keys and
    fresh group facts (no heap, no cached queue list, no cached facts)."""
    preempting = s.config.preempt_priority_gap is not None
    best = None
    for d in s.demands.values():
        q = (d.group, d.needs)
        sh = s.index.shapes.get(d.needs)
        if d.pending <= 0 or d.parked is not None or sh is None or q in s._quota_full:
            continue
        group = s.groups[d.group]
        if sh.full and not preempting and not group.min:
            continue
        if sh.full and q in s._room_failed:
            prio, at = s._room_failed[q]
            # the queue is skipped when its *top* may not retry: compare with that top
            top = min((x for x in s.demands.values() if (x.group, x.needs) == q
                       and x.pending > 0 and x.parked is None), key=s.key)
            if prio >= top.priority and s._slot_seq - at < s._room_retry:
                continue
        within = bool(group.min) and guaranteed(group, s.group_used[d.group], d.needs)
        if sh.full and not preempting and not within:
            continue
        gk = (0 if within else 1, s.key(d)[0],
              borrow_share(group, s.group_used[d.group], s.index.capacity), s.key(d))
        if best is None or gk < best[0]:
            best = (gk, d)
    return None if best is None else best[1]


def check_caches(s: Scheduler) -> None:
    for d in s.demands.values():  # a demand's cached queue is the one of its group and shape
        if d.queue is not None:
            assert d.queue is s._queues[(d.group, d.needs)], d.did
    if s._qlist is not None and s._qlist_epoch == s.index.shape_epoch:
        fresh = [(q, heap, s.index.shapes.get(q[1]), q[0], s.groups[q[0]])
                 for q, heap in s._queues.items()]
        assert [(e[0], id(e[1]), id(e[2])) for e in s._qlist] == \
               [(e[0], id(e[1]), id(e[2])) for e in fresh]
    for g, facts in s._group_facts.items():
        for key in facts:
            assert key == SHARE or key in s.index.shapes.values() or not key.demands


@settings(max_examples=300, deadline=None)
@given(ops, st.sampled_from([None, 2]))
def test_indexes_agree_with_a_scan_after_any_deltas(script, gap):
    s = Scheduler(SchedConfig(workers_per_node_max=5, quota_groups=GROUPS,
                              preempt_priority_gap=gap, ageing_step_s=1.0))
    for i in range(4):  # a cluster with work to place, so every example has decisions
        s.add_node(f"n{i}", NODE_KINDS[i], rack=f"r{i % 2}")
    for i, group in enumerate(GROUP_NAMES):
        s.set_demand(DemandSpec(f"d{i}", f"j{i % 3}", i % 2, i, SHAPES[i], group), wanted=3)
    now = 0.0
    for op in script:
        now += 0.5
        kind = op[0]
        if kind == "node+" and f"n{op[1]}" not in s.index.nodes:
            s.add_node(f"n{op[1]}", NODE_KINDS[op[2]], rack=f"r{op[3]}")
        elif kind == "node-":
            s.remove_node(f"n{op[1]}")
        elif kind == "demand":
            did = f"d{op[1]}"
            old = s.demands.get(did)
            shape = SHAPES[op[2]] if old is None or not old.held_total else dict(old.spec.shape)
            s.set_demand(DemandSpec(did, f"j{op[1] % 3}", op[3], op[1], shape, op[4]),
                         wanted=max(op[5], old.held_total if old else 0), now=now)
        elif kind == "ask_at" and f"d{op[1]}" in s.demands:
            d = s.demands[f"d{op[1]}"]
            counts = {f"n{k}": v for k, v in op[2].items()}
            if len(set(d.prefer_nodes) | set(counts)) <= 64:
                s.ask_at(d.did, counts, now, anywhere=op[3])
        elif kind == "decide":
            s._advance(now)  # what decide does first: the ageing due by now
            expect = brute_pick(s)
            got = s._pick()
            assert got is expect, (got and got.did, expect and expect.did)
            if got is not None:
                s._push(got)  # the pick took it off its queue: file it again
            s.decide(now, op[1])
        elif kind == "release" and f"d{op[1]}" in s.demands:
            d = s.demands[f"d{op[1]}"]
            if d.held:
                s.release_many(d.did, dict(d.held), done=op[2])
        elif kind == "reuse" and f"d{op[1]}" in s.demands:
            d = s.demands[f"d{op[1]}"]
            if d.held:
                node, n = next(iter(d.held.items()))
                k = s.reuse(d.did, node, n, now)
                assert 0 <= k <= n
        elif kind == "exclude":
            s.exclude_node(f"n{op[1]}", op[2])
        s.validate()
        check_caches(s)
        check_free_index(s)


def test_negative_control_a_release_the_index_does_not_hear_of_fails_the_check():
    """The check above can fail: a node whose room grew without ``grew`` (no heap entry
    claims its new room) is caught."""
    s = Scheduler(SchedConfig(workers_per_node_max=5))
    s.add_node("n0", {"CPU": 4.0})
    s.set_demand(DemandSpec("d0", "j0", 0, 0, {"CPU": 1.0}), wanted=4)
    s.schedule(0.0, slots_max=4)
    node = s.index.nodes["n0"]
    sh = s.index.shapes[s.demands["d0"].needs]
    s.release("d0", "n0", 4)
    sh.heap.clear()  # the index forgets the release
    node.claims.clear()
    try:
        check_free_index(s)
    except AssertionError:
        return
    raise AssertionError("a node with room but no heap entry passed the index check")


def test_negative_control_a_stale_queue_list_fails_the_pick_check(monkeypatch):
    """The pick check can fail: a queue list not rebuilt for a new queue hides its demand."""
    s = Scheduler(SchedConfig(workers_per_node_max=5))
    s.add_node("n0", {"CPU": 4.0, "memory": 8.0})
    s.set_demand(DemandSpec("d0", "j0", 0, 0, {"CPU": 1.0}), wanted=2)
    s._push(s._pick())  # the list is built, with d0's queue only
    stale = s._qlist
    monkeypatch.setattr(Scheduler, "_queue_list", lambda self: stale)
    s.set_demand(DemandSpec("d1", "j1", 3, 1, {"CPU": 1.0, "memory": 1.0}), wanted=2)
    assert brute_pick(s) is s.demands["d1"]
    assert s._pick() is s.demands["d0"], "the stale list should have hidden d1's queue"


def test_a_demand_set_again_is_not_picked_from_its_old_queue():
    """Hypothesis's first find (fixed): d3 waits in g3's GPU queue, is removed and set again
    under its id in group default with a CPU shape; with versions counted per demand its new
    version matched an entry left in g3's queue, so it was re-filed there and picked at g3's
    guaranteed tier, ahead of d1, which is within g1's guarantee and the one to go next."""
    s = Scheduler(SchedConfig(workers_per_node_max=5, quota_groups=GROUPS, ageing_step_s=1.0))
    for i in range(4):
        s.add_node(f"n{i}", NODE_KINDS[i], rack=f"r{i % 2}")
    for i, group in enumerate(GROUP_NAMES):
        s.set_demand(DemandSpec(f"d{i}", f"j{i % 3}", i % 2, i, SHAPES[i], group), wanted=3)
    s.remove_node("n0")
    s.decide(2.5)
    s.set_demand(DemandSpec("d0", "j0", 0, 0, SHAPES[3], "default"), wanted=0, now=3.0)
    s.set_demand(DemandSpec("d3", "j0", 2, 3, SHAPES[0], "default"), wanted=1, now=3.5)
    s._advance(4.0)
    assert brute_pick(s) is s.demands["d1"]
    grant, _ = s.decide(4.0)
    assert grant is not None and grant.demand_id == "d1", grant

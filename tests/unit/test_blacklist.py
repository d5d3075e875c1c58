"""The multi-level blacklist (fuxi.core.blacklist): job-level entries from repeated failures
(and stragglers), hard and with expiry, a node coming back once; cluster-level entries from
failures across distinct jobs or a health report; never all of a job's nodes; bounded.

Scenarios first, then Hypothesis properties of the invariants, then JobCore using it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core import blacklist as bl
from fuxi.core.blacklist import (
    BLACKLIST_ENTRIES_MAX,
    CLUSTER_BLACKLIST_EXPIRY_S,
    CLUSTER_FAILURE_JOBS_MIN,
    CLUSTER_FAILURE_WINDOW_S,
    JOB_BLACKLIST_EXPIRY_S,
    JOBS_PER_NODE_TRACKED_MAX,
    ClusterBlacklist,
    JobBlacklist,
    cap,
)
from fuxi.errors import BadInput

NODES = [f"n{i}" for i in range(6)]


def job_bl(nodes=NODES, failures_max=2, **kw) -> JobBlacklist:
    b = JobBlacklist(failures_max, **kw)
    for n in nodes:
        b.saw(n)
    return b


# ---------------------------------------------------------------- the cap


@pytest.mark.parametrize("nodes, allowed", [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2),
                                            (100, 50)])
def test_the_cap_is_a_fraction_of_the_nodes_and_never_all(nodes, allowed):
    assert cap(nodes) == allowed


# ---------------------------------------------------------------- job level


def test_a_node_is_blacklisted_after_failures_from_two_workers_and_expires_once():
    b = job_bl()
    assert not b.charge("n0", "w1", 1.0, others_usable=True)
    assert not b.charge("n0", "w1", 2.0, others_usable=True)  # one worker: its own fault
    assert b.charge("n0", "w2", 3.0, others_usable=True)
    assert b.nodes() == {"n0"}
    [e] = b.view(10.0)
    assert e["level"] == "job" and e["expires_in_s"] == pytest.approx(JOB_BLACKLIST_EXPIRY_S - 7.0)
    assert "3 failed or slow attempts of this job from 2 workers" in e["reason"]
    assert b.expire(3.0 + JOB_BLACKLIST_EXPIRY_S - 0.001) == []
    assert b.expire(3.0 + JOB_BLACKLIST_EXPIRY_S) == ["n0"]
    assert b.nodes() == frozenset()
    # Back with clean counts: it takes two workers' failures again...
    assert not b.charge("n0", "w3", 400.0, others_usable=True)
    assert b.charge("n0", "w4", 401.0, others_usable=True)
    # ...and it came back once: this time it stays out for the rest of the job.
    assert b.view(401.0)[0]["expires_at"] is None
    assert b.expire(1e12) == [] and b.nodes() == {"n0"}
    assert b.totals["n0"] == 5  # what FuxiMaster hears: every failure in the job


def test_random_faults_on_every_node_blacklist_none_a_broken_node_stands_out():
    """Faults at 10 % everywhere: each node passes failures_max, none fails much more often
    than the others, so none is excluded. Then one node fails every attempt: it is."""
    b = job_bl(nodes=["a", "b", "c"], failures_max=3)
    t = 0.0
    for i in range(100):  # 10 % of each node's attempts fail, from two workers each
        for node in ("a", "b", "c"):
            t += 1.0
            if i % 10 == 0:
                assert not b.charge(node, f"{node}-w{i % 20}", t, others_usable=True)
            else:
                b.succeeded(node)
    assert b.totals == {"a": 10, "b": 10, "c": 10} and b.nodes() == frozenset()
    for i in range(40):  # now "c" is broken: 40 of its next 40 attempts fail
        made = b.charge("c", f"c-w{i % 2}", t + i, others_usable=True)
        if made:
            break
    assert b.nodes() == {"c"}
    assert b.totals["c"] / b.ended["c"] >= bl.NODE_FAILURE_RATE_MIN


def test_no_entry_without_another_usable_node():
    b = job_bl()
    for w in ("w1", "w2", "w3"):
        assert not b.charge("n0", w, 1.0, others_usable=False)
    assert b.nodes() == frozenset()


def test_never_more_than_the_fraction_of_the_jobs_nodes():
    b = job_bl(nodes=["a", "b", "c", "d"])
    assert b.add("a", "x", 0.0) and b.add("b", "x", 0.0)
    assert not b.add("c", "x", 0.0)  # 2 of 4 is the cap
    assert b.nodes() == {"a", "b"} and b.refused == 1


def test_gone_nodes_do_not_count_as_usable():
    b = job_bl(nodes=["a", "b", "c", "d"])
    assert not b.add("a", "x", 0.0, gone={"b", "c", "d"})  # only a is left: cap(1) == 0...
    assert b.add("a", "x", 0.0, gone={"c"})  # ...a, b, d: cap(3) == 1
    assert not b.add("b", "x", 0.0, gone={"c"})


def test_outside_exclusions_join_the_jobs_own():
    b = job_bl()
    b.add("n0", "x", 0.0)
    b.set_outside({"n5"})
    assert b.set_outside({"n5"}) == frozenset()  # told again: nothing newly excluded
    assert b.nodes() == {"n0", "n5"} and b.ordered() == ["n0"]  # only its own are reported
    b.expire(1e9)
    assert b.nodes() == {"n5"}


@pytest.mark.parametrize("kw", [{"failures_max": 0}, {"failures_max": True},
                                {"failures_max": 2, "expiry_s": float("nan")},
                                {"failures_max": 2, "expiry_s": -1.0}])
def test_bad_limits_are_refused(kw):
    with pytest.raises(ValueError, match="expected a finite number > 0"):
        JobBlacklist(**kw)


# ---------------------------------------------------------------- cluster level


def alive(n=6):
    return {f"n{i}": {"CPU": 2.0} for i in range(n)}


def test_failures_in_enough_distinct_jobs_blacklist_a_node_for_every_job():
    c, nodes = ClusterBlacklist(), alive()
    for i in range(CLUSTER_FAILURE_JOBS_MIN - 1):
        c.report(f"j{i}", [], {"n1": 2}, nodes, 10.0 + i)
    assert c.view(20.0) == []
    c.report("late", [], {"n1": 1}, nodes, 20.0)  # one failure is not enough for a job to count
    assert c.view(20.0) == []
    c.report("late", [], {"n1": 2}, nodes, 21.0)
    [e] = c.view(21.0)
    assert e["node"] == "n1" and e["level"] == "cluster"
    assert e["expires_in_s"] == pytest.approx(CLUSTER_BLACKLIST_EXPIRY_S)
    assert f"failures in {CLUSTER_FAILURE_JOBS_MIN} jobs" in e["reason"]
    excluded, avoided = c.for_job([], nodes)
    assert excluded == {"n1"} and avoided == set()
    # It expires, and its old tallies do not bring it back at once.
    assert c.expire(21.0 + CLUSTER_BLACKLIST_EXPIRY_S, nodes) == ["n1"]
    c.report("late", [], {"n1": 3}, nodes, 21.0 + CLUSTER_BLACKLIST_EXPIRY_S)
    assert c.view(21.0 + CLUSTER_BLACKLIST_EXPIRY_S) == []


def test_a_jobs_own_blacklisting_counts_for_that_job():
    c, nodes = ClusterBlacklist(), alive()
    for i in range(CLUSTER_FAILURE_JOBS_MIN):
        c.report(f"j{i}", ["n2"], {}, nodes, float(i))
    assert [e["node"] for e in c.view(5.0)] == ["n2"]


def test_failures_outside_the_window_do_not_add_up():
    c, nodes = ClusterBlacklist(), alive()
    t = 0.0
    for i in range(CLUSTER_FAILURE_JOBS_MIN):
        c.expire(t, nodes)
        c.report(f"j{i}", [], {"n1": 2}, nodes, t)
        t += CLUSTER_FAILURE_WINDOW_S / 2 + 1.0
    assert c.view(t) == []


def test_one_job_alone_never_blacklists_a_node_for_the_others():
    c, nodes = ClusterBlacklist(), alive()
    for k in range(50):
        c.report("greedy", NODES, {n: 10**6 + k for n in NODES}, nodes, float(k))
    assert c.view(60.0) == []
    excluded, avoided = c.for_job([], nodes)  # another job: nothing excluded
    assert excluded == set() and avoided == set()
    excluded, avoided = c.for_job(NODES, nodes)  # the greedy job itself: capped at half
    assert len(excluded) == cap(len(nodes)) and excluded | avoided == set(NODES)


def test_a_jobs_own_entries_beyond_the_cap_are_only_avoided_cluster_first():
    c, nodes = ClusterBlacklist(), alive(4)
    assert c.unhealthy("n3", "missed 3 heartbeats", nodes, 0.0)
    excluded, avoided = c.for_job(["n0", "n1", "n2"], nodes)
    assert excluded == {"n3", "n0"} and avoided == {"n1", "n2"}


def test_health_reports_are_capped_and_unknown_nodes_ignored():
    c, nodes = ClusterBlacklist(), alive(4)
    assert c.unhealthy("n0", "x", nodes, 0.0) and c.unhealthy("n1", "x", nodes, 0.0)
    assert not c.unhealthy("n2", "x", nodes, 0.0)  # 2 of 4 is the cap
    assert not c.unhealthy("ghost", "x", nodes, 0.0) and not c.unhealthy(7, "x", nodes, 0.0)
    assert c.refused == 1 and [e["node"] for e in c.view(0.0)] == ["n0", "n1"]
    assert c.view(0.0)[0]["reason"] == "unhealthy: x"


def test_a_gone_node_leaves_the_blacklist():
    c, nodes = ClusterBlacklist(), alive(4)
    c.unhealthy("n0", "x", nodes, 0.0)
    del nodes["n0"]
    c.expire(1.0, nodes)
    assert c.view(1.0) == []


@pytest.mark.parametrize("blacklisted, failures, match", [
    ("n1", {}, "avoid_nodes: got str, expected a list of node ids"),
    ([1, 2], {}, "avoid_nodes: 1 is not a node id"),
    ([["n1"]], {}, "is not a node id"),
    (["n"] * (bl.NODE_REPORT_ENTRIES_MAX + 1), {}, "NODE_REPORT_ENTRIES_MAX"),
    ([], ["n1"], "node_failures: got list, expected a dict"),
    ([], {1: 2}, "key 1 is not a node id"),
    ([], {"n1": -1}, r"node_failures\['n1'\]=-1: expected an integer"),
    ([], {"n1": 1.5}, "expected an integer"),
    ([], {"n1": True}, "expected an integer"),
    ([], {"n1": 10**30}, "FAILURE_COUNT_MAX"),
    ([], {f"x{i}": 1 for i in range(bl.NODE_REPORT_ENTRIES_MAX + 1)}, "NODE_REPORT_ENTRIES_MAX"),
])
def test_garbage_reports_get_a_clear_error_and_change_nothing(blacklisted, failures, match):
    c, nodes = ClusterBlacklist(), alive()
    with pytest.raises(BadInput, match=match):
        c.sync("j", blacklisted, failures, nodes, 0.0)
    assert c.tallies == {} and c.entries == {}


def test_tallies_are_bounded_per_node_and_only_for_alive_nodes():
    c, nodes = ClusterBlacklist(jobs_min=10**6), alive(2)
    for i in range(JOBS_PER_NODE_TRACKED_MAX + 50):
        c.report(f"j{i}", ["ghost"], {"n0": 5, "ghost": 5, "other-ghost": 5}, nodes, 0.0)
    assert set(c.tallies) == {"n0"}
    assert len(c.tallies["n0"]) == JOBS_PER_NODE_TRACKED_MAX


# ---------------------------------------------------------------- properties

events = st.lists(st.tuples(
    st.sampled_from(["charge", "expire", "gone"]),
    st.sampled_from(NODES), st.sampled_from(["w1", "w2", "w3"]),
    st.floats(0.0, 50.0), st.booleans()), max_size=80)


@settings(max_examples=200, deadline=None)
@given(events, st.integers(1, 4), st.floats(1.0, 100.0))
def test_job_level_never_all_nodes_and_expiry_is_honoured(evs, failures_max, expiry_s):
    b = job_bl(failures_max=failures_max, expiry_s=expiry_s)
    gone: set[str] = set()
    now = 0.0
    for kind, node, worker, dt, flag in evs:
        now += dt
        if kind == "charge":
            b.charge(node, worker, now, others_usable=flag, gone=gone)
        elif kind == "expire":
            back = b.expire(now)
            assert all(n not in b.nodes() for n in back)
        elif len(gone) < len(NODES) - 1:
            gone.add(node)
        usable = set(NODES) - gone
        # Within the cap of the nodes usable when each entry was made: never all of them.
        assert len(b.entries) <= cap(len(NODES)) and len(b.entries) <= BLACKLIST_ENTRIES_MAX
        assert b.nodes() == frozenset(b.entries)
        for e in b.entries.values():
            assert e.expires_at is None or e.expires_at > e.since
            assert e.expires_at is None or b.returns.get(e.node, 0) < b.returns_max
        assert usable  # the model keeps one node
    b.expire(now + expiry_s)  # every timed entry is gone after its expiry
    assert all(e.expires_at is None for e in b.entries.values())


reports = st.lists(st.tuples(
    st.sampled_from([f"j{i}" for i in range(8)]),
    st.lists(st.sampled_from(NODES + ["ghost"]), max_size=6),
    st.dictionaries(st.sampled_from(NODES + ["ghost"]), st.integers(0, 20), max_size=6),
    st.floats(0.0, 300.0), st.sampled_from(NODES + [None])), max_size=60)


@settings(max_examples=200, deadline=None)
@given(reports, st.integers(2, 6))
def test_cluster_level_capped_bounded_and_expiring(evs, n_alive):
    c = ClusterBlacklist()
    nodes = alive(n_alive)
    now = 0.0
    for job, blacklisted, failures, dt, sick in evs:
        now += dt
        excluded, avoided = c.sync(job, blacklisted, failures, nodes, now)
        if sick is not None:
            c.unhealthy(sick, "missed heartbeats", nodes, now)
        assert excluded <= set(nodes) and not excluded & avoided
        assert len(excluded) <= cap(len(nodes)) < len(nodes)  # a job can always run somewhere
        assert len(c.entries) <= cap(len(nodes))
        assert set(c.entries) <= set(nodes) and set(c.tallies) <= set(nodes)
        assert all(len(jobs) <= JOBS_PER_NODE_TRACKED_MAX for jobs in c.tallies.values())
        for e in c.entries.values():
            assert e.since <= now < e.expires_at or e.expires_at <= now  # a timed entry
        c.expire(now, nodes)
        assert all(e.expires_at > now for e in c.entries.values())
        # Another job, whose own list is empty, is excluded only from cluster entries.
        assert c.for_job([], nodes)[0] == set(c.entries)
    c.expire(now + CLUSTER_BLACKLIST_EXPIRY_S, nodes)
    assert c.entries == {}


# ---------------------------------------------------------------- JobCore uses it

from fuxi.core.jobcore import JobCore, JobLimits, ReleaseSlot, StartWorker, StopWorker  # noqa: E402
from fuxi.core.speculation import SpeculationPolicy  # noqa: E402
from tests.unit.test_jobcore import (  # noqa: E402
    CPU1, SK, fail, finish, job, ok, of, pushed, run, task, up)


def blacklisted_core(expiry_s=100.0):
    """Node "bad" blacklisted at t=1 by failures of two of its workers; "good" is fine."""
    limits = JobLimits(worker_failures_max=100, node_failures_max=2, node_blacklist_s=expiry_s,
                       idle_release_s=1e6)
    core = JobCore("j", job(task("a", 6, max_retries=5), backoff_s=0.0), now=0.0, limits=limits)
    (w1, w2, w3), _ = up(core, ["bad", "bad", "good"])
    finish(core, w1, fail(("a", 0, 0)), 1.0)
    finish(core, w2, fail(("a", 1, 0)), 1.0)
    assert core.bad_nodes == {"bad"}
    return core


def test_a_grant_on_a_blacklisted_node_is_given_back_at_once():
    core = blacklisted_core()
    acts = core.slots_granted(SK, CPU1, "bad", 2, 2.0)
    assert acts == [ReleaseSlot(SK, "bad"), ReleaseSlot(SK, "bad")]
    assert [a.node_id for a in core.slots_granted(SK, CPU1, "good", 1, 2.0)] == ["good"]


def test_the_job_status_shows_level_reason_and_expiry():
    core = blacklisted_core(expiry_s=100.0)
    [e] = core.status(31.0)["blacklisted_nodes"]
    assert e["node"] == "bad" and e["level"] == "job" and e["expires_in_s"] == pytest.approx(70.0)
    assert "2 failed or slow attempts of this job from 2 workers" in e["reason"]


def test_after_expiry_the_node_takes_workers_again():
    core = blacklisted_core(expiry_s=100.0)
    core.tick(100.5)
    assert core.bad_nodes == {"bad"}
    core.tick(101.0)
    assert core.bad_nodes == frozenset() and core.status(101.0)["blacklisted_nodes"] == []
    assert [type(a) for a in core.slots_granted(SK, CPU1, "bad", 1, 101.0)] == [StartWorker]


def test_fuxi_masters_exclusions_are_hard_for_the_job_too():
    limits = JobLimits(idle_release_s=1e6)
    core = JobCore("j", job(task("a", 4, max_retries=5), backoff_s=0.0), now=0.0, limits=limits)
    (w1, w2), _ = up(core, ["n1", "n2"])
    run(core, w1, ("a", 0, 0), 0.5)
    acts = core.exclude({"n1"}, 1.0)  # the cluster level, from the last sync
    assert [a.worker_id for a in of(acts, StopWorker)] == [w1] and not of(acts, StartWorker)
    assert ReleaseSlot(SK, "n1") in acts
    assert core.instances["a"][0].failures == 0  # its attempt goes back, uncharged
    assert of(core.slots_granted(SK, CPU1, "n1", 1, 1.0), ReleaseSlot)
    assert core.exclude({"n1"}, 2.0) == []  # told again: nothing new
    core.exclude(set(), 3.0)
    assert core.bad_nodes == frozenset()


def test_a_straggler_beaten_by_its_backup_elsewhere_counts_against_its_node():
    """Two stragglers on node n1 (two workers), both beaten by backups elsewhere: with
    node_failures_max=2, n1 is blacklisted for the job as if they had failed."""
    limits = JobLimits(node_failures_max=2, idle_release_s=1e6)
    spec = SpeculationPolicy(min_done_fraction=0.5, slowdown=2.0, min_runtime_s=0.0,
                             max_backup_fraction=1.0)
    core = JobCore("j", job(task("a", 6, output="/o"), speculation=spec), now=0.0, limits=limits)
    wids, acts = up(core, ["n1", "n1", "n2", "n3", "n4", "n5"])
    for i, w in enumerate(wids):
        run(core, w, ("a", i, 0), 0.1, elapsed_s=0.1)
    for i in range(2, 6):
        finish(core, wids[i], ok(("a", i, 0), duration_s=1.0), 1.0)
    backups = pushed(core.tick(2.5))
    assert {k for _, k in backups} == {("a", 0, 1), ("a", 1, 1)}
    for where, key in backups:
        assert core.workers[where].node_id != "n1"
        run(core, where, key, 2.6)
    for where, key in backups:
        acts = finish(core, where, ok(key, duration_s=0.5), 3.0)
    assert core.bad_nodes == {"n1"}
    assert core.status(3.0)["blacklisted_nodes"][0]["reason"].startswith("2 failed or slow")
    assert core.blacklist.totals == {"n1": 2}  # what FuxiMaster hears


def test_the_ledgers_recheck_refuses_a_grant_on_an_excluded_node():
    from fuxi.core.slots import Demand, Grant, GrantPlan, Ledger, apply_grants

    d = Demand("j/cpu", "j", 50, 1, CPU1, 4)
    plan = GrantPlan(grants=(Grant("j/cpu", "bad", 2), Grant("j/cpu", "good", 1)),
                     targets={"j/cpu": 3}, preempt=False)
    ledger = Ledger()
    totals = {"bad": {"CPU": 4.0}, "good": {"CPU": 4.0}}
    applied = apply_grants(ledger, totals, plan, [d], excluded_nodes={"bad"})
    assert applied == [Grant("j/cpu", "good", 1)] and ledger.held("j/cpu") == {"good": 1}

"""Forced reclaim of a queue's guarantee (issue 16 part 1: "reclaim when the owner needs it";
batch may preempt batch across quota groups): the plan names the demands waiting within their
guarantee, the clock says preempt once one has waited RECLAIM_GRACE_S, and the borrower's
JobMaster core stops its workers beyond its target at once, with that reason."""

from __future__ import annotations

import pytest

from fuxi.core import slots
from fuxi.core.jobcore import JobCore, StopWorker
from fuxi.core.reclaim import RECLAIM_GRACE_S, ReclaimClock
from fuxi.core.states import AttemptState
from fuxi.shells import quotas
from tests.unit.test_jobcore import SK, job, pushed, run, task, up
from tests.unit.test_quotas import CONF, NODES, _demands, _held, _sync


def test_the_plan_names_a_guarantee_waiting_on_a_borrower_and_nothing_else():
    ledger = slots.Ledger()
    ds = _demands({"b": 10})
    plan = _sync(ledger, ds, "b")
    assert plan.reclaim_wait == ()  # bronze borrows; nobody is owed anything
    assert _held(ledger, "b") == 3
    ds = _demands({"b": 10, "a": 10})
    plan_a = _sync(ledger, ds, "a")
    assert _held(ledger, "a") == 1  # the one free CPU; two more are within gold's minimum
    assert plan_a.reclaim_wait == ("a/t",)
    plan_b = slots.grant(NODES, ledger, ds, "b", quota_groups=quotas.core_groups(CONF))
    assert plan_b.reclaim_wait == ("a/t",) and plan_b.targets == {"b/t": 1}
    assert not plan_b.preempt  # not an online replica: the clock decides
    # bronze gives back; gold reaches its minimum; nothing is owed any more
    for node, n in list(ledger.held("b/t").items()):
        give = min(n, _held(ledger, "b") - 1)
        if give > 0:
            ledger.release("b/t", node, give)
    plan_a = _sync(ledger, ds, "a")
    assert _held(ledger, "a") == 3 and plan_a.reclaim_wait == ()


def test_a_job_past_its_guarantee_or_in_a_queue_without_one_is_not_owed():
    ledger = slots.Ledger()
    ds = _demands({"a": 10, "c": 10})  # gold (min 3) and the default queue on 4 CPUs
    _sync(ledger, ds, "c")
    _sync(ledger, ds, "a")
    plan = slots.grant(NODES, ledger, ds, "c", quota_groups=quotas.core_groups(CONF))
    assert "c/t" not in plan.reclaim_wait  # the default queue has no minimum


def test_the_clock_waits_the_grace_then_names_the_longest_waiter():
    clock = ReclaimClock(grace_s=5.0)
    assert clock.due(["a/t"], 100.0) is None
    assert clock.due(["a/t", "x/t"], 103.0) is None
    why = clock.due(["a/t", "x/t"], 105.0)
    assert why and "a/t waited 5.0 s" in why and "guarantee" in why
    assert clock.forced == 1
    # a/t got its slots: x/t's own wait counts from when it began (103)
    assert clock.due(["x/t"], 106.0) is None
    assert "x/t" in clock.due(["x/t"], 108.0)
    assert clock.due([], 109.0) is None and clock.since == {}  # nothing kept for the served


def test_the_clock_keeps_no_entry_for_a_demand_that_stopped_waiting():
    clock = ReclaimClock()
    for i in range(1000):
        clock.due([f"j{i}/t"], float(i))
    assert list(clock.since) == ["j999/t"]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), 1e9, "5", True, None])
def test_a_bad_grace_is_refused_naming_the_range(bad):
    with pytest.raises(ValueError, match="RECLAIM_GRACE_S_MAX"):
        ReclaimClock(grace_s=bad)


def test_the_default_grace_is_short_but_not_zero():
    assert 0 < RECLAIM_GRACE_S <= 30


def test_a_forced_reclaim_stops_the_borrowers_busy_workers_with_the_reason():
    core = JobCore("j", job(task("a", 10)), now=0.0)
    wids, acts = up(core, ["n1", "n2", "n3"])
    busy = dict(pushed(acts))
    for wid, key in busy.items():
        run(core, wid, key, 0.5)
    assert core.shrink(SK, 1, 1.0) == []  # drain: nobody is killed mid-attempt
    why = "preempted: q/t waited 10.2 s (RECLAIM_GRACE_S=10) for slots within its guarantee"
    acts = core.shrink(SK, 1, 12.0, preempt=why)
    stops = [a for a in acts if isinstance(a, StopWorker)]
    assert len(stops) == 2 and all(s.reason == why for s in stops)
    killed = [core.attempts[busy[s.worker_id]] for s in stops]
    assert all(a.state is AttemptState.KILLED for a in killed)
    assert core.preempted == 2
    st = core.status(12.0)
    assert st["state"] == "running"  # the instances went back to ready, no failure counted
    assert all(i.failures == 0 for i in core.instances["a"])


def test_the_admissions_shell_says_preempt_only_after_the_grace():
    from fuxi.shells.admission import Admissions

    adm = Admissions(None, {}, lambda: [], lambda *a: None, set())
    plan = slots.GrantPlan((), {}, False, ("a/t",))
    assert adm.preempt(plan, 0.0) is None
    assert "a/t" in adm.preempt(plan, RECLAIM_GRACE_S + 0.1)
    online = slots.GrantPlan((), {}, True, ())
    assert adm.preempt(online, 0.0) == "preempted: its slot went to an online service"

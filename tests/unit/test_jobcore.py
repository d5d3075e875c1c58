"""JobCore scenarios: events in, actions out, time passed as ``now``.

Each test builds a small JobPlan by hand, feeds the events the Ray shell (``fuxi.shells.jobmaster``)
would feed, and asserts on the actions a user would notice: what runs where and when, what is
retried, what is committed, what the failure report says.
"""

from __future__ import annotations

import pytest

from fuxi.core.jobcore import (
    AttemptResult,
    Commit,
    JobCore,
    JobDone,
    JobLimits,
    Push,
    ReleaseSlot,
    StartWorker,
    StopAttempt,
    StopWorker,
)
from fuxi.core.plan import Edge, JobPlan, TaskPlan
from fuxi.core.speculation import SpeculationPolicy
from fuxi.core.states import AttemptState, IllegalTransition, InstanceState, JobState, move

CPU1 = {"CPU": 1.0}
SK = "CPU=1"
NO_SPECULATION = SpeculationPolicy(enabled=False)


# ---------------------------------------------------------------- helpers


def task(name, n=1, max_retries=1, timeout_s=600.0, upstream=(), downstream=(), output=None):
    return TaskPlan(name=name, fn="m:f", num_instances=n, inputs=((),) * n, shape=dict(CPU1),
                    max_retries=max_retries, timeout_s=timeout_s, upstream=tuple(upstream),
                    downstream=tuple(downstream), output=output)


def job(*tasks, speculation=NO_SPECULATION, backoff_s=0.2, backoff_max_s=10.0):
    return JobPlan(name="t", tasks=tuple(tasks), speculation=speculation,
                   retry_backoff_s=backoff_s, retry_backoff_max_s=backoff_max_s)


def two_stage(n_map, n_reduce, mode, output="/out"):
    e = Edge("map", "reduce", mode, ("k",) if mode == "hash" else (), n_reduce)
    return job(task("map", n_map, downstream=(e,)),
               task("reduce", n_reduce, upstream=(e,), output=output))


def of(acts, cls):
    return [a for a in acts if isinstance(a, cls)]


def pushed(acts):
    """(worker_id, (task, instance, attempt)) for every attempt pushed, in order."""
    return [(p.worker_id, spec.key) for p in of(acts, Push) for spec in p.attempts]


def specs(acts):
    return [spec for p in of(acts, Push) for spec in p.attempts]


def up(core, nodes, now=0.0):
    """Grant one slot per node in ``nodes`` and start the workers; returns (ids, actions)."""
    wids, acts = [], []
    for node in nodes:
        for sw in core.slots_granted(SK, CPU1, node, 1, now):
            wids.append(sw.worker_id)
    for wid in wids:
        acts += core.worker_started(wid, now)
    return wids, acts


def ok(key, duration_s=1.0, outputs=None):
    return AttemptResult(key=key, ok=True, duration_s=duration_s, outputs=outputs or {})


def fail(key, error="Traceback (most recent call last):\nValueError: bad row 7", duration_s=0.5):
    return AttemptResult(key=key, ok=False, duration_s=duration_s, error=error)


def finish(core, wid, res, now):
    return core.worker_report(wid, [], [res], now)


def run(core, wid, key, now, elapsed_s=0.0):
    return core.worker_report(wid, [(key, elapsed_s)], [], now)


# ---------------------------------------------------------------- first wave


def test_nothing_is_pushed_until_a_worker_has_started():
    core = JobCore("j", job(task("a", 3)), now=0.0)
    acts = core.slots_granted(SK, CPU1, "n1", 2, 0.0)
    assert [type(a) for a in acts] == [StartWorker, StartWorker]
    assert {a.node_id for a in acts} == {"n1"}
    assert core.state is JobState.PENDING
    assert core.tick(0.5) == []  # workers requested but not up: nothing can run yet

    first = core.worker_started(acts[0].worker_id, 1.0)
    assert core.state is JobState.RUNNING and core.started_at == 1.0
    assert pushed(first) == [(acts[0].worker_id, ("a", 0, 0))]  # depth 1 before any duration is known
    second = core.worker_started(acts[1].worker_id, 1.1)
    assert pushed(second) == [(acts[1].worker_id, ("a", 1, 0))]


def test_demands_cover_runnable_instances_only():
    core = JobCore("j", two_stage(4, 2, "hash"), now=0.0)
    # Only the map stage can run; reduce waits for it.
    assert core.demands() == {SK: (CPU1, 4)}


# ---------------------------------------------------------------- retries


def test_failed_attempt_is_retried_after_backoff_on_a_different_worker():
    core = JobCore("j", job(task("a", 1, max_retries=3), backoff_s=0.2), now=0.0,
                   limits=JobLimits(idle_release_s=1e6))  # keep the idle spare worker around
    (w1, w2), acts = up(core, ["n1", "n2"])
    assert pushed(acts) == [(w1, ("a", 0, 0))]
    assert finish(core, w1, fail(("a", 0, 0)), 1.0) == []  # w1 is free, but the backoff holds
    assert core.instances["a"][0].state is InstanceState.READY
    assert pushed(core.tick(1.19)) == []
    assert pushed(core.tick(1.2)) == [(w2, ("a", 0, 1))]  # not the worker that just failed it
    assert core.stats["a"].retries == 1


@pytest.mark.parametrize(
    "failures, backoff_s",
    [
        (1, 0.2),   # retry_backoff_s
        (2, 0.4),   # doubles
        (3, 0.8),
        (5, 1.0),   # capped at retry_backoff_max_s
    ],
)
def test_retry_backoff_doubles_up_to_its_max(failures, backoff_s):
    core = JobCore("j", job(task("a", 1, max_retries=10), backoff_s=0.2, backoff_max_s=1.0),
                   now=0.0)
    (w1,), acts = up(core, ["n1"])
    now = 1.0
    for attempt in range(failures):
        out = finish(core, w1, fail(("a", 0, attempt)), now)
        assert not of(out, JobDone)
        if attempt < failures - 1:
            now += 1.0  # >= any backoff here
            assert pushed(core.tick(now)) == [(w1, ("a", 0, attempt + 1))]
            now += 0.5
    assert core.instances["a"][0].not_before == pytest.approx(now + backoff_s)
    assert pushed(core.tick(now + backoff_s - 0.01)) == []  # too early
    assert pushed(core.tick(now + backoff_s)) == [(w1, ("a", 0, failures))]
    assert core.stats["a"].retries == failures


def test_retry_reuses_the_failed_worker_when_it_is_the_only_one():
    core = JobCore("j", job(task("a", 1, max_retries=3)), now=0.0)
    (w1,), _ = up(core, ["n1"])
    finish(core, w1, fail(("a", 0, 0)), 1.0)
    assert pushed(core.tick(1.2)) == [(w1, ("a", 0, 1))]


@pytest.mark.parametrize("max_retries", [0, 1, 2])
def test_failures_beyond_max_retries_fail_the_job_with_a_useful_report(max_retries):
    core = JobCore("j", job(task("parse", 2, max_retries=max_retries), backoff_s=0.0), now=0.0)
    (w1,), _ = up(core, ["n1"])
    finish(core, w1, ok(("parse", 0, 0)), 0.5)  # instance 0 is fine; instance 1 is pushed next
    now = 1.0
    for attempt in range(max_retries + 1):
        acts = finish(core, w1, fail(("parse", 1, attempt),
                                     error=f"Traceback ...\nKeyError: 'user_{attempt}'"), now)
        if attempt < max_retries:
            assert not of(acts, JobDone)
            now += 1.0
            assert pushed(core.tick(now)) == [(w1, ("parse", 1, attempt + 1))]
    done = of(acts, JobDone)
    assert len(done) == 1 and done[0].state is JobState.FAILED
    report = done[0].report
    assert f"task 'parse' instance 1 failed after {max_retries + 1} attempt(s)" in report
    assert f"max_retries={max_retries}" in report
    assert f"KeyError: 'user_{max_retries}'" in report  # the last traceback, verbatim
    assert report.count("attempt ") >= max_retries + 1  # the story lists every attempt
    assert core.state is JobState.FAILED
    assert StopWorker(w1, "job failed") in acts and ReleaseSlot(SK, "n1") in acts


# ---------------------------------------------------------------- worker death


def batch_up(core, wid, task_name, n_done, now):
    """Make instances short (1 ms each) so the worker gets a deep queue; returns the push."""
    acts = []
    for i in range(n_done):
        acts = finish(core, wid, ok((task_name, i, 0), duration_s=0.001), now)
    return acts


def test_worker_death_requeues_never_started_attempts_without_charging_a_retry():
    core = JobCore("j", job(task("a", 6, max_retries=0)), now=0.0)
    (w1,), _ = up(core, ["n1"])
    acts = batch_up(core, w1, "a", 1, 1.0)  # instance 0 done in 1 ms -> depth 50
    assert [k for _, k in pushed(acts)] == [("a", i, 0) for i in range(1, 6)]
    run(core, w1, ("a", 1, 0), 1.1)
    acts = core.worker_died(w1, "ActorDiedError: node lost", 1.2)

    # The running attempt is charged; with max_retries=0 that fails the job.
    assert of(acts, JobDone)[0].state is JobState.FAILED
    assert "task 'a' instance 1" in of(acts, JobDone)[0].report
    assert "died" in of(acts, JobDone)[0].report


def test_worker_death_running_attempt_retried_queued_ones_requeued_uncharged():
    core = JobCore("j", job(task("a", 6, max_retries=1)), now=0.0)
    (w1,), _ = up(core, ["n1"])
    batch_up(core, w1, "a", 1, 1.0)
    run(core, w1, ("a", 1, 0), 1.1)
    acts = core.worker_died(w1, "ActorDiedError", 1.2)
    # Replaced on the same slot, no slot released.
    assert [(a.node_id, type(a)) for a in acts if isinstance(a, (StartWorker, ReleaseSlot))] == [
        ("n1", StartWorker)]
    insts = core.instances["a"]
    assert insts[1].failures == 1 and insts[1].attempts[0].state is AttemptState.FAILED
    for i in range(2, 6):
        assert insts[i].failures == 0, "a never-started attempt must not cost a retry"
        assert insts[i].attempts[0].state is AttemptState.LOST
        assert insts[i].state is InstanceState.READY
    # The replacement gets the uncharged instances at once; the charged one waits its backoff.
    w2 = of(acts, StartWorker)[0].worker_id
    first = pushed(core.worker_started(w2, 1.21))
    assert sorted(k for _, k in first) == [("a", i, 1) for i in range(2, 6)]
    assert all(w == w2 for w, _ in first)
    assert pushed(core.tick(1.3)) == []
    assert pushed(core.tick(1.41)) == [(w2, ("a", 1, 1))]


def test_worker_we_killed_requeues_its_running_attempt_without_blame():
    core = JobCore("j", job(task("a", 2, max_retries=0)), now=0.0)
    (w1, w2), _ = up(core, ["n1", "n2"])
    run(core, w1, ("a", 0, 0), 1.0)
    # The JobMaster killed w1 itself (another attempt on it would not stop): not the attempt's
    # fault, so even with max_retries=0 the instance runs again and the job goes on.
    acts = core.worker_died(w1, "attempt would not stop", 1.1, blame=False)
    assert not of(acts, JobDone)
    inst = core.instances["a"][0]
    assert inst.failures == 0 and inst.attempts[0].state is AttemptState.KILLED
    assert inst.state is InstanceState.READY
    assert core.workers[w1].failures == 0  # no blacklisting credit either


def test_worker_on_a_dead_node_is_not_replaced_there():
    core = JobCore("j", job(task("a", 2, max_retries=2)), now=0.0)
    (w1, w2), _ = up(core, ["n1", "n2"])
    acts = core.worker_died(w1, "node died", 1.0, node_alive=False)
    assert not of(acts, StartWorker), "a replacement pinned to a dead node can never start"
    assert [(r.node_id, r.shape_key) for r in of(acts, ReleaseSlot)] == [("n1", SK)]
    # A start that fails because its node died does not count towards giving up on the job.
    (sw,) = core.slots_granted(SK, CPU1, "n3", 1, 1.1)
    for _ in range(core.limits.worker_start_failures_max + 2):
        (sw,) = [a for a in core.slots_granted(SK, CPU1, "n3", 1, 1.2)]
        acts = core.worker_start_failed(sw.worker_id, "ActorUnschedulableError", 1.2,
                                        node_alive=False)
        assert not of(acts, JobDone)
    assert core.state is JobState.RUNNING


def test_death_of_an_unknown_or_already_dead_worker_is_ignored():
    core = JobCore("j", job(task("a", 1)), now=0.0)
    (w1,), _ = up(core, ["n1"])
    core.worker_died(w1, "gone", 1.0)
    assert core.worker_died(w1, "gone again", 1.1) == []
    assert core.worker_died("w999", "never existed", 1.1) == []


# ---------------------------------------------------------------- timeouts


def test_timeout_fails_the_attempt_and_stops_it_on_its_worker():
    core = JobCore("j", job(task("a", 1, max_retries=1, timeout_s=5.0)), now=0.0,
                   limits=JobLimits(idle_release_s=1e6))  # keep the idle spare worker around
    (w1, w2), _ = up(core, ["n1", "n2"])
    run(core, w1, ("a", 0, 0), 10.0, elapsed_s=0.0)
    assert core.tick(15.0) == []  # exactly at the limit: not yet
    acts = core.tick(15.01)
    # The worker interrupts the attempt and carries on; the shell kills and reports the worker
    # dead only if the attempt will not stop (see fuxi.shells.worker).
    assert StopAttempt(w1, ("a", 0, 0)) in acts
    assert not of(acts, ReleaseSlot)
    inst = core.instances["a"][0]
    assert inst.attempts[0].state is AttemptState.FAILED
    assert core.workers[w1].queue == []
    assert "TimeoutError" in inst.last_error and "timeout_s=5" in inst.last_error
    # Retried after the backoff, on the worker that did not time out.
    assert pushed(core.tick(15.01 + 0.2)) == [(w2, ("a", 0, 1))]
    # A result of the stopped attempt that still trickles in changes nothing.
    assert finish(core, w1, ok(("a", 0, 0)), 15.3) == []
    assert core.instances["a"][0].state is InstanceState.RUNNING


def test_timed_out_attempt_that_will_not_stop_costs_the_worker():
    core = JobCore("j", job(task("a", 2, max_retries=1, timeout_s=5.0)), now=0.0)
    (w1,), _ = up(core, ["n1"])
    run(core, w1, ("a", 0, 0), 0.0)
    core.tick(5.1)
    # The shell reports the worker dead when the interrupted attempt is stuck.
    acts = core.worker_died(w1, "RuntimeError: attempt did not stop (STOP_GRACE_S)", 16.0)
    assert [s.node_id for s in of(acts, StartWorker)] == ["n1"]  # replaced in its slot
    assert core.instances["a"][0].failures == 1  # the timeout, not charged twice


def test_timeout_counts_from_when_the_worker_says_the_attempt_started():
    core = JobCore("j", job(task("a", 1, timeout_s=5.0)), now=0.0)
    (w1,), _ = up(core, ["n1"])
    run(core, w1, ("a", 0, 0), 10.0, elapsed_s=4.0)  # a late report: it has run 4 s already
    assert not of(core.tick(11.0), StopAttempt)
    assert of(core.tick(11.1), StopAttempt) == [StopAttempt(w1, ("a", 0, 0))]


# ---------------------------------------------------------------- speculation

SPEC = SpeculationPolicy(min_done_fraction=0.5, slowdown=2.0, min_runtime_s=0.0,
                         max_backup_fraction=0.1)


def straggler_job(output="/out"):
    """4 instances of 1 s on workers w1..w4 (nodes n1, n1, n2, n3) plus an idle w5 on n4;
    instances 0-2 finish in 1 s, instance 3 (on w4) keeps running."""
    core = JobCore("j", job(task("a", 4, output=output), speculation=SPEC), now=0.0)
    wids, acts = up(core, ["n1", "n1", "n2", "n3"])
    assert pushed(acts) == [(w, ("a", i, 0)) for i, w in enumerate(wids)]
    for i, w in enumerate(wids):
        run(core, w, ("a", i, 0), 0.1, elapsed_s=0.1)
    for i in range(3):
        finish(core, wids[i], ok(("a", i, 0), duration_s=1.0), 1.0)
    return core, wids


def test_straggler_gets_a_backup_on_another_worker_and_node():
    core, (w1, w2, w3, w4) = straggler_job()
    assert pushed(core.tick(1.9)) == []  # 1.9 s < 2 x median: not a straggler yet
    acts = core.tick(2.1)
    assert len(pushed(acts)) == 1
    where, key = pushed(acts)[0]
    assert key == ("a", 3, 1)
    assert where != w4 and core.workers[where].node_id != "n3"
    assert core.stats["a"].backups_launched == 1
    assert pushed(core.tick(3.0)) == []  # at most one backup per straggler


def test_backup_wins_the_running_original_is_killed_and_one_commit():
    core, (w1, w2, w3, w4) = straggler_job()
    where, key = pushed(core.tick(2.1))[0]
    run(core, where, key, 2.2)
    acts = finish(core, where, ok(key, duration_s=0.5), 2.7)
    assert of(acts, Commit) == [Commit("a", 3, 1, "/out")]
    assert StopAttempt(w4, ("a", 3, 0)) in acts  # the running original is interrupted
    assert core.attempts[("a", 3, 0)].state is AttemptState.KILLED
    assert of(acts, JobDone) == [JobDone(JobState.SUCCEEDED, "")]
    assert core.stats["a"].backups_won == 1
    # The original finishing late changes nothing: still exactly one commit.
    assert finish(core, w4, ok(("a", 3, 0)), 2.8) == []


def test_original_wins_the_queued_backup_is_skipped_not_killed():
    core, (w1, w2, w3, w4) = straggler_job()
    where, key = pushed(core.tick(2.1))[0]
    acts = finish(core, w4, ok(("a", 3, 0), duration_s=2.2), 2.3)  # backup still queued
    assert of(acts, Commit) == [Commit("a", 3, 0, "/out")]
    assert of(acts, StopAttempt) == [StopAttempt(where, key)]
    assert all(s.reason == "job succeeded" for s in of(acts, StopWorker))  # only the job's end
    assert core.stats["a"].backups_won == 0
    assert core.attempts[key].state is AttemptState.KILLED


def test_original_wins_while_backup_runs_the_backup_worker_is_killed():
    core = JobCore("j", job(task("a", 4, output="/out"), speculation=SPEC), now=0.0)
    wids, _ = up(core, ["n1", "n1", "n2", "n3", "n4"])
    for i in range(4):
        run(core, wids[i], ("a", i, 0), 0.1, elapsed_s=0.1)
    # Keep the job alive with work for others: only instance 3 is left after this.
    for i in range(3):
        finish(core, wids[i], ok(("a", i, 0), duration_s=1.0), 1.0)
    where, key = pushed(core.tick(2.1))[0]
    run(core, where, key, 2.15)
    acts = finish(core, wids[3], ok(("a", 3, 0), duration_s=2.1), 2.2)
    assert of(acts, Commit) == [Commit("a", 3, 0, "/out")]
    assert StopAttempt(where, key) in acts  # the running backup is interrupted
    assert core.attempts[key].state is AttemptState.KILLED


def test_both_attempts_report_success_in_one_report_exactly_one_commit():
    core, (w1, w2, w3, w4) = straggler_job()
    where, key = pushed(core.tick(2.1))[0]
    # Both results arrive at once (batched reports from two workers in the same loop round).
    acts = finish(core, where, ok(key, duration_s=0.1), 2.3)
    acts += finish(core, w4, ok(("a", 3, 0), duration_s=2.3), 2.3)
    assert len(of(acts, Commit)) == 1
    assert sum(1 for a in core.instances["a"][3].attempts if a.state is AttemptState.SUCCEEDED) == 1


def test_backup_waits_for_room_rather_than_overfilling_a_worker():
    """Regression: a backup may jump one past the queue depth, never past worker_queue_max."""
    policy = SpeculationPolicy(min_done_fraction=0.3, slowdown=2.0, min_runtime_s=0.0)
    core = JobCore("j", job(task("a", 3), speculation=policy), now=0.0,
                   limits=JobLimits(worker_queue_max=1))
    (w1, w2), _ = up(core, ["n1", "n2"])
    run(core, w1, ("a", 0, 0), 0.0)
    run(core, w2, ("a", 1, 0), 0.0)
    assert pushed(finish(core, w1, ok(("a", 0, 0), duration_s=1.0), 1.0)) == [(w1, ("a", 2, 0))]
    run(core, w1, ("a", 2, 0), 1.0)
    assert pushed(core.tick(2.5)) == []  # instance 1 straggles, but w1 is full
    assert core.demands()[SK][1] == 3  # two unfinished instances + the backup that waits
    acts = finish(core, w1, ok(("a", 2, 0), duration_s=1.0), 2.6)
    backup = [p for p in of(acts, Push) if p.attempts[0].key == ("a", 1, 1)]
    assert len(backup) == 1 and backup[0].worker_id == w1 and backup[0].front
    assert all(len(w.queue) <= 1 for w in core.workers.values())


def test_backup_lost_after_the_original_used_up_its_retries_ends_the_job():
    """Regression: the original fails (no retries left) while its backup is still queued;
    then the backup's worker dies before starting it. The instance has nothing left, so the
    job must fail *and say so* (JobDone, workers stopped) instead of ending silently."""
    core = JobCore("j", job(task("a", 4, max_retries=0, output="/out"), speculation=SPEC), now=0.0)
    wids, _ = up(core, ["n1", "n1", "n2", "n3", "n4"])
    for i in range(4):
        run(core, wids[i], ("a", i, 0), 0.1, elapsed_s=0.1)
    for i in range(3):
        finish(core, wids[i], ok(("a", i, 0), duration_s=1.0), 1.0)
    where, key = pushed(core.tick(2.1))[0]
    assert finish(core, wids[3], fail(("a", 3, 0)), 2.2) == []  # the backup may still save it
    others = {w.worker_id for w in core.workers.values() if not w.dead} - {where}
    acts = core.worker_died(where, "ActorDiedError", 2.3)
    done = of(acts, JobDone)
    assert len(done) == 1 and done[0].state is JobState.FAILED
    assert "task 'a' instance 3 failed" in done[0].report
    live = {w.worker_id for w in core.workers.values() if not w.dead}
    assert live == set()
    assert others and {a.worker_id for a in of(acts, StopWorker)} == others


# ---------------------------------------------------------------- data flow


@pytest.mark.parametrize("mode", ["hash", "broadcast"])
def test_downstream_ready_only_after_every_upstream_instance_with_the_right_refs(mode):
    core = JobCore("j", two_stage(3, 2, mode), now=0.0)
    wids, acts = up(core, ["n1", "n2", "n3"])
    keys = dict(pushed(acts))

    def outputs(i, attempt):
        if mode == "hash":
            return {("reduce", j): f"map{i}.{attempt}->r{j}" for j in range(2)}
        return {("reduce", -1): f"map{i}.{attempt}->all"}

    finish(core, wids[0], ok(keys[wids[0]], outputs=outputs(0, 0)), 1.0)
    # Map 1 fails once and succeeds on retry: only the winner's refs may flow downstream.
    finish(core, wids[1], fail(keys[wids[1]]), 1.0)
    assert all(i.state is InstanceState.WAITING for i in core.instances["reduce"])
    retry = pushed(core.tick(2.0))
    assert [k for _, k in retry] == [("map", 1, 1)]
    finish(core, wids[2], ok(keys[wids[2]], outputs=outputs(2, 0)), 2.0)
    assert not any(k[0] == "reduce" for _, k in pushed(core.tick(2.1)))
    assert all(i.state is InstanceState.WAITING for i in core.instances["reduce"])

    acts = finish(core, retry[0][0], ok(("map", 1, 1), outputs=outputs(1, 1)), 3.0)
    reduce_specs = sorted(specs(acts) + specs(core.tick(3.0)), key=lambda s: s.instance)
    assert [s.key for s in reduce_specs] == [("reduce", 0, 0), ("reduce", 1, 0)]
    for s in reduce_specs:
        j = s.instance
        if mode == "hash":
            assert s.upstream == (f"map0.0->r{j}", f"map1.1->r{j}", f"map2.0->r{j}")
        else:
            assert s.upstream == ("map0.0->all", "map1.1->all", "map2.0->all")
        assert s.output == "/out" and s.num_instances == 2


def test_two_stage_job_commits_each_output_instance_once_and_succeeds():
    core = JobCore("j", two_stage(2, 2, "hash"), now=0.0)
    (w1, w2), acts = up(core, ["n1", "n2"])
    reduces = []
    for w, key in pushed(acts):
        reduces += finish(core, w, ok(key, outputs={("reduce", 0): "x", ("reduce", 1): "y"}), 1.0)
    acts = reduces + core.tick(1.0)
    assert sorted(k for _, k in pushed(acts)) == [("reduce", 0, 0), ("reduce", 1, 0)]
    commits, done = [], []
    for w, key in pushed(acts):
        out = finish(core, w, ok(key), 2.0)
        commits += of(out, Commit)
        done += of(out, JobDone)
    assert sorted(commits, key=lambda c: c.instance) == [Commit("reduce", 0, 0, "/out"),
                                                        Commit("reduce", 1, 0, "/out")]
    assert done == [JobDone(JobState.SUCCEEDED, "")]
    assert core.status(2.0)["state"] == "succeeded"


# ---------------------------------------------------------------- cancel


def test_cancel_stops_every_worker_and_ends_the_job():
    core = JobCore("j", job(task("a", 4)), now=0.0)
    wids, _ = up(core, ["n1", "n2"])
    run(core, wids[0], ("a", 0, 0), 0.5)
    acts = core.cancel(1.0, "user pressed ctrl-c")
    assert {a.worker_id for a in of(acts, StopWorker)} == set(wids)
    assert sorted(a.node_id for a in of(acts, ReleaseSlot)) == ["n1", "n2"]
    assert acts[-1] == JobDone(JobState.CANCELLED, "user pressed ctrl-c")
    assert all(i.state is InstanceState.CANCELLED for i in core.instances["a"])
    # A finished job ignores everything that still trickles in.
    assert core.cancel(1.1) == []
    assert core.tick(2.0) == []
    assert finish(core, wids[0], ok(("a", 0, 0)), 2.0) == []
    assert core.demands() == {}


# ---------------------------------------------------------------- fair share


def test_shrink_drains_over_target_workers_and_releases_them_when_empty():
    core = JobCore("j", job(task("a", 10)), now=0.0)
    wids, acts = up(core, ["n1", "n2", "n3"])
    assert len(pushed(acts)) == 3
    busy = dict(pushed(acts))
    acts = core.shrink(SK, 1, 1.0)
    assert acts == []  # every worker is busy: nobody is killed mid-attempt
    draining = [w for w in wids if core.workers[w].draining]
    assert len(draining) == 2
    keeper = next(w for w in wids if w not in draining)

    # A draining worker that finishes gets no new work and gives its slot back.
    d = draining[0]
    acts = finish(core, d, ok(busy[d], duration_s=1.0), 2.0)
    assert StopWorker(d, "fair share: slot returned to FuxiMaster") in acts
    assert ReleaseSlot(SK, core.workers[d].node_id) in acts
    assert all(w == keeper for w, _ in pushed(acts))
    # The keeper keeps getting work.
    acts = finish(core, keeper, ok(busy[keeper], duration_s=1.0), 2.0)
    assert pushed(acts) and all(w == keeper for w, _ in pushed(acts))


def test_shrink_releases_idle_workers_at_once():
    core = JobCore("j", job(task("a", 1)), now=0.0)
    wids, _ = up(core, ["n1", "n2", "n3"])  # only one has work
    acts = core.shrink(SK, 1, 1.0)
    assert len(of(acts, StopWorker)) == 2 and len(of(acts, ReleaseSlot)) == 2
    assert not any(w.draining and not w.dead for w in core.workers.values())


# ---------------------------------------------------------------- adaptive batching


@pytest.mark.parametrize(
    "instance_s, expected_depth",
    [
        # batch_target_s=0.05 of work, plus one prefetched so the worker never waits a round trip
        (0.001, 51),
        (0.01, 6),
        (0.02, 4),
        (0.05, 2),
        (0.5, 2),      # below prefetch_below_s: one queued behind the running one
        (1.0, 1),      # long instances never wait behind each other
        (30.0, 1),
        (0.0001, 64),  # capped by worker_queue_max
        (0.0, 64),     # instant instances: capped too
    ],
)
def test_queue_depth_follows_instance_duration(instance_s, expected_depth):
    limits = JobLimits(batch_target_s=0.05, prefetch_below_s=1.0, worker_queue_max=64)
    core = JobCore("j", job(task("a", 100)), now=0.0, limits=limits)
    (w1,), acts = up(core, ["n1"])
    assert len(pushed(acts)) == 1  # nothing is known yet: one at a time
    acts = finish(core, w1, ok(("a", 0, 0), duration_s=instance_s), 1.0)
    assert len(pushed(acts)) == expected_depth
    assert len(core.workers[w1].queue) == expected_depth <= limits.worker_queue_max


# ---------------------------------------------------------------- blacklisting


@pytest.mark.parametrize("worker_queue_max", [1, 2])
def test_queue_depth_never_exceeds_worker_queue_max(worker_queue_max):
    """Regression: the prefetch slot must not push a worker past worker_queue_max."""
    limits = JobLimits(batch_target_s=0.05, worker_queue_max=worker_queue_max)
    core = JobCore("j", job(task("a", 10)), now=0.0, limits=limits)
    (w1,), _ = up(core, ["n1"])
    finish(core, w1, ok(("a", 0, 0), duration_s=0.01), 1.0)
    assert len(core.workers[w1].queue) == worker_queue_max


def test_worker_blacklisted_after_worker_failures_max_when_others_exist():
    limits = JobLimits(worker_failures_max=2)
    core = JobCore("j", job(task("a", 4, max_retries=5), backoff_s=0.0), now=0.0, limits=limits)
    (w1, w2), acts = up(core, ["n1", "n2"])
    run(core, w2, ("a", 1, 0), 0.5)
    nxt = pushed(finish(core, w1, fail(("a", 0, 0)), 1.0))
    assert nxt == [(w1, ("a", 2, 0))]  # a fresh instance may still use w1
    acts = finish(core, w1, fail(("a", 2, 0)), 2.0)
    assert StopWorker(w1, "blacklisted: 2 failed attempts in this job (2 in a row, 0 "
                          "succeeded)") in acts
    assert [s.node_id for s in of(acts, StartWorker)] == ["n1"]  # a fresh worker in its slot
    assert core.workers[w1].dead


def test_scattered_failures_do_not_blacklist_a_worker_but_a_high_share_does():
    """Random faults (10 % of attempts, bench/bench_faults.py) spread over every worker: a
    worker is blacklisted for failures in a row, or for failing more than
    worker_failure_fraction_max of what it ran -- not each time its total reaches
    worker_failures_max (that replaced a worker every ~30 attempts and cost +27 %)."""
    limits = JobLimits(worker_failures_max=3, prefetch_below_s=0.0)
    core = JobCore("j", job(task("a", 40, max_retries=5), backoff_s=0.0), now=0.0,
                   limits=limits)
    (w1, w2), acts = up(core, ["n1", "n2"])
    t = 1.0
    stops = []
    # w1: fail, ok, ok, fail, ok, ok, fail, ok: 3 failures of 8, never 2 in a row.
    for outcome in "FSSFSSFS":
        key = next(k for k in core.workers[w1].queue)
        res = fail(key) if outcome == "F" else ok(key, duration_s=0.1)
        acts = finish(core, w1, res, t)
        stops += [a for a in acts if isinstance(a, StopWorker)]
        t += 1.0
    assert not stops and not core.workers[w1].dead
    assert core.workers[w1].failures == 3 and core.workers[w1].succeeded == 5
    # w2: ok, fail, fail, ok, fail: 3 of 5 failed (> 0.5): blacklisted at the third.
    for outcome in "SFFSF":
        key = next(k for k in core.workers[w2].queue)
        res = fail(key) if outcome == "F" else ok(key, duration_s=0.1)
        acts = finish(core, w2, res, t)
        stops += [a for a in acts if isinstance(a, StopWorker)]
        t += 1.0
    assert [s.worker_id for s in stops] == [w2] and core.workers[w2].dead


def test_a_lone_worker_is_not_blacklisted():
    limits = JobLimits(worker_failures_max=2)
    core = JobCore("j", job(task("a", 4, max_retries=5), backoff_s=0.0), now=0.0, limits=limits)
    (w1,), _ = up(core, ["n1"])
    finish(core, w1, fail(("a", 0, 0)), 1.0)
    core.tick(1.0)
    acts = finish(core, w1, fail(("a", 0, 1)), 2.0)
    assert not of(acts, StopWorker) and not core.workers[w1].dead


def test_node_blacklisted_after_node_failures_max_from_two_workers():
    limits = JobLimits(worker_failures_max=100, node_failures_max=2)
    core = JobCore("j", job(task("a", 4, max_retries=5), backoff_s=0.0), now=0.0, limits=limits)
    (w1, w2, w3), _ = up(core, ["bad", "bad", "good"])
    finish(core, w1, fail(("a", 0, 0)), 1.0)
    acts = finish(core, w2, fail(("a", 1, 0)), 1.0)
    assert core.bad_nodes == {"bad"}
    assert {a.worker_id for a in of(acts, StopWorker)} == {w1, w2}
    assert sorted(a.node_id for a in of(acts, ReleaseSlot)) == ["bad", "bad"]
    assert not of(acts, StartWorker)  # never replaced on a blacklisted node


def test_blacklisting_never_buys_an_instance_a_retry_beyond_max_retries():
    """Regression: instance 0 fails once (max_retries=1), its retry straggles on w2 and gets a
    backup on w1. The retry then fails too, which blacklists node "bad" and retires w1 with
    the backup on it. Retries are used up, so the job fails instead of trying a third time."""
    limits = JobLimits(worker_failures_max=100, node_failures_max=2, idle_release_s=1e6,
                       worker_queue_max=1)  # so the busy good worker cannot take the backup
    core = JobCore("j", job(task("a", 4, max_retries=1, output="/out"), speculation=SPEC,
                            backoff_s=0.0), now=0.0, limits=limits)
    (w1, w2, w3), acts = up(core, ["bad", "bad", "good"])
    run(core, w1, ("a", 0, 0), 0.1)
    run(core, w2, ("a", 1, 0), 0.1)
    assert pushed(finish(core, w1, fail(("a", 0, 0)), 1.0)) == [(w1, ("a", 3, 0))]
    finish(core, w2, ok(("a", 1, 0), duration_s=1.0), 1.0)
    assert pushed(core.tick(1.0)) == [(w2, ("a", 0, 1))]  # the retry
    run(core, w2, ("a", 0, 1), 1.1)
    run(core, w1, ("a", 3, 0), 1.1)
    finish(core, w1, ok(("a", 3, 0), duration_s=1.0), 1.5)
    run(core, w3, ("a", 2, 0), 3.0)
    assert pushed(core.tick(3.2)) == [(w1, ("a", 0, 2))]  # the retry straggles: a backup
    acts = finish(core, w2, fail(("a", 0, 1)), 3.3)
    assert core.bad_nodes == {"bad"}
    done = of(acts, JobDone)
    assert len(done) == 1 and done[0].state is JobState.FAILED, acts
    assert "task 'a' instance 0 failed after 2 attempt(s) (max_retries=1)" in done[0].report
    assert core.tick(3.4) == []


# ---------------------------------------------------------------- named states


@pytest.mark.parametrize(
    "state, to",
    [
        (InstanceState.WAITING, InstanceState.RUNNING),     # must be READY first
        (InstanceState.SUCCEEDED, InstanceState.RUNNING),   # a winner is final
        (InstanceState.FAILED, InstanceState.READY),
        (AttemptState.SUCCEEDED, AttemptState.FAILED),
        (AttemptState.LOST, AttemptState.RUNNING),
        (AttemptState.KILLED, AttemptState.SUCCEEDED),
        (JobState.SUCCEEDED, JobState.RUNNING),
        (JobState.CANCELLED, JobState.FAILED),
    ],
)
def test_illegal_transitions_raise(state, to):
    class Thing:
        key = ("t", 0)

    thing = Thing()
    thing.state = state
    with pytest.raises(IllegalTransition, match=f"{state.value} -> {to.value}"):
        move(thing, to, "test")
    assert thing.state is state  # unchanged


def test_core_refuses_to_resurrect_a_finished_instance():
    core = JobCore("j", job(task("a", 1)), now=0.0)
    with pytest.raises(IllegalTransition):
        move(core.instances["a"][0], InstanceState.SUCCEEDED, "skipping READY and RUNNING")


# ---------------------------------------------------------------- data locality


def test_instances_go_to_workers_on_nodes_holding_their_input_and_are_counted():
    t = TaskPlan(name="map", fn="m:f", num_instances=4, inputs=(("a",), ("b",), ("c",), ("d",)),
                 shape=dict(CPU1), max_retries=1, timeout_s=600.0, upstream=(), downstream=(),
                 output="/out", preferred_nodes=(("n2",), ("n1",), ("n2", "n3"), ()))
    core = JobCore("j", job(t), 0.0, JobLimits(worker_queue_max=1, locality_wait_s=1.0))
    (w1, w2), acts = up(core, ["n1", "n2"])  # n1's worker starts first
    where = {key[1]: wid for wid, key in pushed(acts)}
    # Instance 0 waits for n2's worker (still starting when n1's was free); instance 1 runs
    # on n1; instance 2 waits for n2 too; instance 3 has no preference.
    assert where[0] == w2 and where[1] == w1
    acts = core.worker_report(w1, [], [ok(("map", 1, 0))], 0.5)
    where.update({k[1]: wid for wid, k in pushed(acts)})
    assert where[3] == w1 and 2 not in where  # 2 still waits for n2 (0.5 s < 1 s)
    acts = core.worker_report(w1, [], [ok(("map", 3, 0))], 0.6)
    assert pushed(acts) == []  # n1's worker is idle, but instance 2 is still in its wait
    acts = core.tick(1.2)  # the wait is over: it runs on the idle non-local worker
    assert pushed(acts) == [(w1, ("map", 2, 0))]
    core.worker_report(w1, [], [ok(("map", 2, 0))], 1.5)
    core.worker_report(w2, [], [ok(("map", 0, 0))], 1.6)
    st = core.status(2.0)
    assert st["tasks"]["map"]["succeeded"] == 4
    assert st["tasks"]["map"]["data_local"] == 2  # instances 0 and 1


def test_locality_never_delays_when_no_worker_is_on_a_preferred_node():
    t = TaskPlan(name="map", fn="m:f", num_instances=1, inputs=(("a",),), shape=dict(CPU1),
                 max_retries=1, timeout_s=600.0, upstream=(), downstream=(), output="/out",
                 preferred_nodes=(("elsewhere",),))
    core = JobCore("j", job(t), 0.0)
    (w1,), acts = up(core, ["n1"])
    assert pushed(acts) == [(w1, ("map", 0, 0))]


def test_status_has_no_data_local_count_without_pangu_inputs():
    core = JobCore("j", job(task("map", 2, output="/out")), 0.0)
    up(core, ["n1"])
    assert "data_local" not in core.status(1.0)["tasks"]["map"]

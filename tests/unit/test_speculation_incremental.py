"""The incremental pieces of speculation (issue 16) agree exactly with the from-scratch ones:
``RunningMedian`` with ``statistics.median`` after every addition, and ``StartOrder`` +
``pick_stragglers`` with ``pick_backups`` over every running instance."""

from __future__ import annotations

import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core.speculation import (
    CANDIDATE,
    GONE,
    NOT_NOW,
    RunningInstance,
    RunningMedian,
    SpeculationPolicy,
    StartOrder,
    pick_backups,
    pick_stragglers,
)

durations = st.lists(st.one_of(st.floats(0, 1e6, allow_nan=False), st.integers(0, 10),
                               st.sampled_from([0.1, 0.2, 0.3, 1e-300, 5e-324])), max_size=200)


@given(durations)
def test_running_median_equals_statistics_median_bit_for_bit(xs):
    m = RunningMedian()
    assert m.median() is None and len(m) == 0
    for i, x in enumerate(xs):
        m.add(x)
        assert len(m) == i + 1
        assert m.median() == statistics.median(xs[: i + 1])


policies = st.builds(SpeculationPolicy, min_done_fraction=st.sampled_from([0.1, 0.5, 1.0]),
                     slowdown=st.sampled_from([1.0, 1.5, 2.0]), min_runtime_s=st.sampled_from([0.0, 1.0]),
                     max_backup_fraction=st.sampled_from([0.05, 0.2, 1.0]))
# One entry per running attempt: (instance, started_at, what the caller says it is).
entries = st.lists(st.tuples(st.integers(0, 49), st.sampled_from([0.0, 1.0, 2.5, 3.0, 7.0, 9.75, 10.0]),
                             st.sampled_from([CANDIDATE, CANDIDATE, NOT_NOW, GONE])), max_size=60)


@settings(max_examples=300)
@given(policies, entries, st.lists(st.floats(0.1, 5.0), min_size=1, max_size=50),
       st.integers(0, 10), st.sampled_from([10.0, 12.0, 20.0]))
def test_start_order_finds_what_a_scan_of_every_instance_would(policy, ents, done, backups_running, now):
    n = 50
    order = StartOrder()
    verdict = {}
    for k, (inst, started, v) in enumerate(ents):
        order.add(started, inst, k)
        verdict[(inst, k)] = v
    scan = [RunningInstance(inst, now - started, 1) for k, (inst, started, v) in enumerate(ents)
            if v == CANDIDATE]
    want = pick_backups(policy, n, done, scan, backups_running)
    median = statistics.median(done)
    threshold = max(policy.slowdown * median, policy.min_runtime_s)
    room = max(1, policy.max_backup_fraction * n)  # at least what backup_cap allows
    running = order.older_than(now, threshold, int(room), lambda i, k: verdict[(i, k)])
    got = pick_stragglers(policy, n, len(done), median, running, backups_running)
    assert got == want
    # Ended attempts past the threshold were dropped; everything else is still there.
    left = {(i, k) for _, i, k in order.heap}
    for k, (inst, started, v) in enumerate(ents):
        if v != GONE or not now - started > threshold:
            assert (inst, k) in left

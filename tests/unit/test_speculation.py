"""Speculation policy on synthetic timelines, plus safety properties."""

from __future__ import annotations

import ast
import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuxi.core import speculation
from fuxi.core.speculation import RunningInstance, SpeculationPolicy, backup_cap, pick_backups, straggler_threshold_s


def task_timeline(
    num_instances: int, now_s: float, normal_s: float, straggler_ids: set[int], straggler_s: float
) -> tuple[list[float], list[RunningInstance]]:
    """All instances start at 0. Normal ones take ``normal_s`` (with a little jitter),
    stragglers ``straggler_s``. Returns (finished durations, running instances) at ``now_s``."""
    finished, running = [], []
    for i in range(num_instances):
        duration_s = straggler_s if i in straggler_ids else normal_s * (1 + (i % 5) / 100)
        if duration_s <= now_s:
            finished.append(duration_s)
        else:
            running.append(RunningInstance(instance=i, running_for_s=now_s, attempts_running=1))
    return finished, running


FAST = SpeculationPolicy(min_runtime_s=0.0)  # 50 ms instances: no runtime floor


@pytest.mark.parametrize(
    "case, policy, now_s, backups_running, expected",
    [
        # 95 normal instances have finished at 0.06 s; the 5 stragglers have run 0.2 s > 2 * median.
        ("stragglers get backups", FAST, 0.2, 0, [3, 17, 42, 61, 88]),
        # Same moment, but the policy wants 96 of 100 done before judging; only 95 are.
        ("before min_done_fraction", SpeculationPolicy(min_runtime_s=0.0, min_done_fraction=0.96), 0.2, 0, []),
        ("exactly at min_done_fraction", SpeculationPolicy(min_runtime_s=0.0, min_done_fraction=0.95), 0.2, 0,
         [3, 17, 42, 61, 88]),
        # Cap is 10 % of 100 = 10; 7 backups already run, so only 3 more.
        ("cap respected", FAST, 0.2, 7, [3, 17, 42]),
        ("cap already reached", FAST, 0.2, 10, []),
        ("cap overshot never negative", FAST, 0.2, 12, []),
        # Median is ~0.05 s, so 2x is 0.1 s, but the 1 s floor means 0.2 s is not slow yet.
        ("min_runtime_s floor", SpeculationPolicy(min_runtime_s=1.0), 0.2, 0, []),
        ("past min_runtime_s floor", SpeculationPolicy(min_runtime_s=1.0), 1.5, 0, [3, 17, 42, 61, 88]),
        ("disabled", SpeculationPolicy(enabled=False, min_runtime_s=0.0), 0.2, 0, []),
        # Only 0.09 s in: 2 * median (0.1 s) not yet exceeded.
        ("not slow enough yet", FAST, 0.09, 0, []),
    ],
)
def test_hundred_instance_task_with_five_stragglers(case, policy, now_s, backups_running, expected):
    finished, running = task_timeline(100, now_s, 0.05, {3, 17, 42, 61, 88}, straggler_s=10.0)
    assert pick_backups(policy, 100, finished, running, backups_running) == expected, case


def test_longest_running_first_and_ties_by_instance_id():
    running = [
        RunningInstance(7, 5.0, 1),
        RunningInstance(2, 9.0, 1),
        RunningInstance(4, 5.0, 1),
        RunningInstance(1, 5.0, 1),
    ]
    policy = SpeculationPolicy(min_runtime_s=0.0, max_backup_fraction=1.0)
    assert pick_backups(policy, 10, [1.0] * 6, running, 0) == [2, 1, 4, 7]


def test_instance_that_already_has_a_backup_is_not_picked_again():
    running = [RunningInstance(0, 50.0, 2), RunningInstance(1, 40.0, 1)]
    assert pick_backups(FAST, 4, [1.0, 1.0], running, 1) == []  # cap of 4 instances is 1, used
    assert pick_backups(SpeculationPolicy(max_backup_fraction=1.0), 4, [1.0, 1.0], running, 1) == [1]


def test_nothing_finished_means_no_threshold_and_no_backups():
    policy = SpeculationPolicy(min_done_fraction=0.01)
    assert straggler_threshold_s(policy, []) is None
    assert pick_backups(policy, 0, [], [RunningInstance(0, 100.0, 1)], 0) == []


def test_threshold_is_slowdown_times_median_with_a_floor():
    policy = SpeculationPolicy(slowdown=3.0, min_runtime_s=1.0)
    assert straggler_threshold_s(policy, [1.0, 2.0, 100.0]) == 6.0  # the median ignores the outlier
    assert straggler_threshold_s(policy, [0.1, 0.2]) == 1.0


def test_fraction_boundary_is_epsilon_safe():
    # 0.3 * 10 is 3.0000000000000004 in floating point; 3 of 10 done must count as 30 %.
    policy = SpeculationPolicy(min_done_fraction=0.3, min_runtime_s=0.0, max_backup_fraction=1.0)
    assert pick_backups(policy, 10, [1.0, 1.0, 1.0], [RunningInstance(5, 3.0, 1)], 0) == [5]
    assert pick_backups(policy, 10, [1.0, 1.0], [RunningInstance(5, 3.0, 1)], 0) == []


@pytest.mark.parametrize(
    "fraction, num_instances, cap",
    [(0.1, 100, 10), (0.1, 5, 1), (0.1, 0, 1), (0.29, 100, 29), (0.7, 10, 7), (1.0, 3, 3), (0.5, 3, 1)],
)
def test_backup_cap(fraction, num_instances, cap):
    assert backup_cap(SpeculationPolicy(max_backup_fraction=fraction), num_instances) == cap


@pytest.mark.parametrize(
    "field, value",
    [
        ("min_done_fraction", 0.0),
        ("min_done_fraction", 1.5),
        ("slowdown", 0.5),
        ("min_runtime_s", -1.0),
        ("max_backup_fraction", 0.0),
        ("max_backup_fraction", float("nan")),
        ("slowdown", float("inf")),
    ],
)
def test_policy_rejects_out_of_range_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SpeculationPolicy(**{field: value})


def test_module_is_pure():
    tree = ast.parse(inspect.getsource(speculation))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"ray", "time", "random", "os", "socket"}


# --------------------------------------------------------------------------- properties

policies = st.builds(
    SpeculationPolicy,
    enabled=st.booleans(),
    min_done_fraction=st.floats(0.01, 1.0),
    slowdown=st.floats(1.0, 5.0),
    min_runtime_s=st.floats(0.0, 10.0),
    max_backup_fraction=st.floats(0.01, 1.0),
)


@st.composite
def situations(draw):
    num_instances = draw(st.integers(0, 60))
    num_finished = draw(st.integers(0, num_instances))
    finished = draw(st.lists(st.floats(0.0, 100.0), min_size=num_finished, max_size=num_finished))
    ids = list(range(num_finished, num_instances))
    running = [
        RunningInstance(i, draw(st.floats(0.0, 500.0)), draw(st.integers(1, 3))) for i in ids
    ]
    backups_running = draw(st.integers(0, 10))
    return num_instances, finished, running, backups_running


@given(policies, situations())
def test_backup_safety_properties(policy, situation):
    num_instances, finished, running, backups_running = situation
    picked = pick_backups(policy, num_instances, finished, running, backups_running)
    by_id = {r.instance: r for r in running}

    assert len(picked) <= max(0, backup_cap(policy, num_instances) - backups_running)
    assert len(set(picked)) == len(picked)
    assert all(by_id[i].attempts_running == 1 for i in picked)
    if picked:
        threshold_s = straggler_threshold_s(policy, finished)
        assert policy.enabled and threshold_s is not None
        assert all(by_id[i].running_for_s > threshold_s for i in picked)
        assert all(by_id[i].running_for_s >= policy.min_runtime_s for i in picked)
    keys = [(-by_id[i].running_for_s, i) for i in picked]
    assert keys == sorted(keys)


@given(policies, situations())
def test_picks_are_the_slowest_eligible(policy, situation):
    """No eligible straggler is passed over for a faster one."""
    num_instances, finished, running, backups_running = situation
    picked = set(pick_backups(policy, num_instances, finished, running, backups_running))
    threshold_s = straggler_threshold_s(policy, finished)
    if not picked or threshold_s is None:
        return
    slowest_left_out = max(
        (r.running_for_s for r in running if r.instance not in picked and r.attempts_running == 1),
        default=-1.0,
    )
    assert all(r.running_for_s >= slowest_left_out for r in running if r.instance in picked)

"""Injected attempt faults (``fuxi.core.attempt_faults``, the spec's ``faults:``): off by
default, deterministic in the seed, in proportion, and strict about bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuxi.core import attempt_faults as af
from fuxi.core.plan import build_plan
from fuxi.core.spec import spec_from_dict
from fuxi.errors import SpecError

TASKS = {"t": {"fn": "bench.fns:noop", "instances": 4}}


def test_off_by_default():
    plan = build_plan(spec_from_dict({"name": "j", "tasks": TASKS}))
    assert plan.faults is None
    assert all(af.decide(plan.faults, "t", i, a) is None for i in range(100) for a in range(5))
    assert af.decide(af.FaultPolicy(), "t", 0, 0) is None  # zero fractions: nothing


def test_spec_reaches_the_plan():
    spec = spec_from_dict({"name": "j", "tasks": TASKS,
                           "faults": {"attempt_fail_fraction": 0.1, "attempt_hang_fraction": 0.05,
                                      "hang_s": 2.5, "seed": 9}})
    assert build_plan(spec).faults == af.FaultPolicy(0.1, 0.05, 2.5, 9)
    assert af.FaultPolicy.from_dict(build_plan(spec).faults.to_dict()) == build_plan(spec).faults


@pytest.mark.parametrize("faults,expected", [
    ({"attempt_fail_fraction": 0.95}, "faults.attempt_fail_fraction: got 0.95"),
    ({"attempt_fail_fraction": -0.1}, "faults.attempt_fail_fraction: got -0.1"),
    ({"attempt_fail_fraction": 0.5, "attempt_hang_fraction": 0.5}, "expected at most 0.9"),
    ({"hang_s": 0}, "faults.hang_s: got 0"),
    ({"hang_s": 1e9}, "faults.hang_s: got 1000000000.0"),
    ({"seed": "x"}, "faults.seed: got 'x', expected an integer"),
    ({"attempt_fail_fraction": True}, "faults.attempt_fail_fraction"),
    ({"fail": 0.1}, "faults.fail: unknown field; expected one of: attempt_fail_fraction"),
    (7, "faults: got 7, expected a mapping (attempt_fail_fraction"),
])
def test_bad_fault_specs_say_what_was_wrong(faults, expected):
    with pytest.raises(SpecError) as e:
        spec_from_dict({"name": "j", "tasks": TASKS, "faults": faults})
    assert expected in str(e.value)


@pytest.mark.parametrize("kwargs", [{"attempt_fail_fraction": 1.0}, {"hang_s": -1},
                                    {"seed": 1.5}, {"attempt_hang_fraction": float("nan")}])
def test_the_core_policy_refuses_bad_values_too(kwargs):
    with pytest.raises(ValueError):
        af.FaultPolicy(**kwargs)


def test_same_seed_same_faults_other_seed_other_faults():
    a = af.FaultPolicy(attempt_fail_fraction=0.3, seed=1)
    b = af.FaultPolicy(attempt_fail_fraction=0.3, seed=2)
    keys = [("t", i, n) for i in range(200) for n in range(3)]
    da = [af.decide(a, *k) for k in keys]
    assert da == [af.decide(af.FaultPolicy(attempt_fail_fraction=0.3, seed=1), *k) for k in keys]
    assert da != [af.decide(b, *k) for k in keys]


def test_faults_come_in_proportion():
    # Deterministic (a hash of the seed), so this bound cannot flake: 100k draws at 5 % and
    # 10 % land within 0.5 percentage points of the asked share.
    pol = af.FaultPolicy(attempt_fail_fraction=0.05, attempt_hang_fraction=0.10, seed=4)
    got = [af.decide(pol, "map", i, 0) for i in range(100_000)]
    assert abs(got.count(af.FAIL) / len(got) - 0.05) < 0.005
    assert abs(got.count(af.HANG) / len(got) - 0.10) < 0.005


@given(fail=st.floats(0, 0.9), seed=st.integers(), task=st.text(max_size=8),
       instance=st.integers(0, 10**6), attempt=st.integers(0, 100))
def test_a_fraction_of_zero_never_fires_and_the_answer_is_stable(fail, seed, task, instance, attempt):
    pol = af.FaultPolicy(attempt_fail_fraction=fail, seed=seed)
    d = af.decide(pol, task, instance, attempt)
    assert d in (None, af.FAIL)
    assert d == af.decide(pol, task, instance, attempt)
    assert af.decide(af.FaultPolicy(seed=seed), task, instance, attempt) is None

"""Injected attempt faults on a real two-node Ray cluster: a job whose attempts fail or hang
on purpose (the spec's ``faults:``) still gives exactly the right output, and spends exactly
the attempts the seed predicts (speculation pinned off, so no backup adds one)."""

from __future__ import annotations


import pytest

from fuxi.core import attempt_faults as af
from tests.integration.jobhelpers import read_output

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

FNS = "tests.integration.taskfns"


def predicted_attempts(policy: af.FaultPolicy, task: str, instances: int) -> int:
    """Attempts the job must spend on ``task``: each instance runs until its first attempt
    that the policy lets through."""
    total = 0
    for i in range(instances):
        n = 0
        while af.decide(policy, task, i, n) is not None:
            n += 1
        total += n + 1
    return total


def test_failing_attempts_are_retried_to_the_exact_answer(job, tmp_path):
    policy = af.FaultPolicy(attempt_fail_fraction=0.3, seed=11)
    spec = {
        "name": "faulty-sums",
        "params": {"n": 500},
        "speculation": {"enabled": False},
        "retry_backoff_s": 0.0,
        "faults": {"attempt_fail_fraction": 0.3, "seed": 11},
        "tasks": {
            "gen": {"fn": f"{FNS}:gen_numbers", "instances": 8, "max_retries": 20},
            "sum": {"fn": f"{FNS}:sum_by_key", "instances": 3, "depends_on": ["gen"],
                    "partition_by": ["key"], "max_retries": 20, "output": str(tmp_path / "out")},
        },
    }
    want_gen, want_sum = predicted_attempts(policy, "gen", 8), predicted_attempts(policy, "sum", 3)
    assert want_gen + want_sum > 11  # the seed does inject faults (else this proves nothing)
    st = job(spec)
    assert st["state"] == "succeeded", st.get("report")
    assert st["tasks"]["gen"]["attempts"] == want_gen
    assert st["tasks"]["sum"]["attempts"] == want_sum
    out = read_output(str(tmp_path / "out"))
    got = dict(zip(out.column("key").to_pylist(), out.column("v_sum").to_pylist()))
    want: dict[int, int] = {}
    for v in range(8 * 500):
        want[v % 97] = want.get(v % 97, 0) + v
    assert got == want


def test_hanging_attempts_time_out_and_are_retried(job, tmp_path):
    policy = af.FaultPolicy(attempt_hang_fraction=0.4, hang_s=120.0, seed=5)
    spec = {
        "name": "hangs",
        "speculation": {"enabled": False},
        "retry_backoff_s": 0.0,
        "faults": {"attempt_hang_fraction": 0.4, "hang_s": 120.0, "seed": 5},
        "tasks": {"t": {"fn": f"{FNS}:emit_instance", "instances": 6, "max_retries": 20,
                        "timeout_s": 1.5, "output": str(tmp_path / "out")}},
    }
    want = predicted_attempts(policy, "t", 6)
    assert want > 6
    st = job(spec, timeout_s=200)
    assert st["state"] == "succeeded", st.get("report")
    assert st["tasks"]["t"]["attempts"] == want
    out = read_output(str(tmp_path / "out"))
    assert sorted(set(out.column("instance").to_pylist())) == list(range(6))


def test_a_job_that_runs_out_of_retries_under_faults_fails_and_says_why(job, tmp_path):
    spec = {
        "name": "too-faulty",
        "speculation": {"enabled": False},
        "retry_backoff_s": 0.0,
        "faults": {"attempt_fail_fraction": 0.9, "seed": 1},
        "tasks": {"t": {"fn": f"{FNS}:emit_instance", "instances": 4, "max_retries": 0}},
    }
    st = job(spec)
    assert st["state"] == "failed"
    assert "injected attempt failure" in (st.get("report") or "")

"""A JobMaster paused (SIGSTOP) past the time it allows FuxiMaster to stay silent, then
resumed (issue 14, faults): the time it lost is its own, not FuxiMaster's or the workers'.
Before the fix it woke up, saw no successful sync for longer than MASTER_LOST_S and abandoned
a healthy job at once ("FuxiMaster unreachable"); workers whose replies it had not read yet
were at risk of being killed as wedged. Now it moves its deadlines on by the pause, syncs
first, and the job succeeds.

Known gap: after such a pause the workers are replaced once and their attempts run again
(counted as retries). The cause is not settled: the Ray logs of the run show the workers
killed and reported out of scope by the GCS right at the resume, which suggests Ray itself
gives up on actors whose owner (the JobMaster) stopped answering. This test therefore does
not assert that nothing ran twice."""

from __future__ import annotations

import glob
import os
import signal
import time

import pytest

from fuxi.shells import jobmaster as JM

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
# The JobMaster's loop deadlines, shortened in the live actor (its attributes, the module's
# limits by default) so the pause need not last MASTER_LOST_S = 120 s: the same three deadlines
# are crossed, in the same order of size as the defaults (lost > call > reply here).
LIMITS = {"master_lost_s": 15.0, "master_call_timeout_s": 8.0, "worker_reply_timeout_s": 6.0}
PAUSE_S = max(LIMITS.values()) + 5.0  # past every deadline the JobMaster keeps
SLEEP_S = 5.0  # each instance: ends during the pause, its reply waiting for the JobMaster
WAIT_S = 120.0


def _shorten(limits: dict):
    """Set the live JobMaster's loop deadlines; returns them as it now holds them."""
    def apply(self, limits=limits):
        for k, v in limits.items():
            assert hasattr(self, k), f"JobMaster has no limit {k!r}"
            setattr(self, k, float(v))
        return {k: getattr(self, k) for k in limits}

    return apply


def test_the_shortened_limits_are_the_ones_the_loop_uses():
    # The module's limits are the defaults the test shortens: a pause past the short ones
    # only proves something if the loop reads the attributes (checked in the source, which
    # must not go back to the module constants in the loop).
    import inspect

    src = inspect.getsource(JM.JobMaster.__ray_actor_class__)
    for name in LIMITS:
        assert f"self.{name}" in src
    loop = inspect.getsource(JM.JobMaster.__ray_actor_class__._loop)
    assert "self.master_lost_s" in loop and "MASTER_LOST_S:" not in loop


def test_a_paused_jobmaster_resumes_its_job(client, tmp_path):
    import ray

    marks = tmp_path / "marks"
    spec = {"name": "paused-master", "params": {"dir": str(marks), "sleep_s": SLEEP_S},
            "tasks": {"t": {"fn": "tests.integration.taskfns:sleepy", "instances": 2,
                            "output": str(tmp_path / "out")}}}
    job_id = client.submit(spec)
    deadline = time.time() + WAIT_S
    while len(glob.glob(str(marks / "run-*"))) < 2:  # both instances are running
        assert time.time() < deadline, "the instances never started"
        time.sleep(0.2)
    jm = ray.get_actor(f"jobmaster-{job_id}")
    pid = ray.get(jm.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
    held = ray.get(jm.__ray_call__.remote(_shorten(LIMITS)), timeout=30)
    assert held == LIMITS, held
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(PAUSE_S)  # the instances finish meanwhile; their replies wait for it
    finally:
        os.kill(pid, signal.SIGCONT)
    st = client.wait(job_id, timeout_s=WAIT_S)
    assert st["state"] == "succeeded", st.get("report")
    assert st["tasks"]["t"]["succeeded"] == 2

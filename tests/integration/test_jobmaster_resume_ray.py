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

pytestmark = [pytest.mark.ray, pytest.mark.timeout(500)]
PAUSE_S = JM.MASTER_LOST_S + 5.0  # past every deadline the JobMaster keeps
WAIT_S = 120.0


def test_a_paused_jobmaster_resumes_its_job(client, tmp_path):
    import ray

    marks = tmp_path / "marks"
    spec = {"name": "paused-master", "params": {"dir": str(marks), "sleep_s": 20.0},
            "tasks": {"t": {"fn": "tests.integration.taskfns:sleepy", "instances": 2,
                            "output": str(tmp_path / "out")}}}
    job_id = client.submit(spec)
    deadline = time.time() + WAIT_S
    while len(glob.glob(str(marks / "run-*"))) < 2:  # both instances are running
        assert time.time() < deadline, "the instances never started"
        time.sleep(0.2)
    jm = ray.get_actor(f"jobmaster-{job_id}")
    pid = ray.get(jm.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(PAUSE_S)  # the instances finish meanwhile; their replies wait for it
    finally:
        os.kill(pid, signal.SIGCONT)
    st = client.wait(job_id, timeout_s=WAIT_S)
    assert st["state"] == "succeeded", st.get("report")
    assert st["tasks"]["t"]["succeeded"] == 2

"""Hard state in the store (issue 16 parts 3 and 4): FuxiMaster dies and is restarted by Ray;
the new one adopts the running job; then the job's JobMaster dies too. The adopted job is
restarted from its checkpoint exactly as if the FuxiMaster that submitted it were still there
(its launch record -- plan, user, sys_path -- is in the job record store): exactly the right
output, and the instances checkpointed before the kill are not run again. A job whose plan
was too big to keep still runs, says in its status that it is not recoverable after a master
restart, and fails with that reason when its JobMaster then dies.

Its own FuxiMaster, with a data directory (a file store that outlives the process, as on a
`fuxi up` cluster without Nuwa), in a namespace of its own on the shared two-node cluster.
Every task function leaves one file per attempt it ran, so "not run again" is counted on
disk."""

from __future__ import annotations

import time

import pytest
from tests.integration.jobhelpers import jobmaster, kill_jobmaster, ran, read_output, wait_status

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]

FNS = "tests.integration.taskfns"
WAIT_S = 180.0
ANSWER_TIMEOUT_S = 30.0
MASTER_BACK_S = 60.0
POLL_S = 0.1


@pytest.fixture(scope="module")
def durable(ray_cluster, tmp_path_factory):
    """(client, master, jobs): a restartable FuxiMaster with a data dir; the ids of the jobs
    submitted to it go into ``jobs``."""
    import ray

    from fuxi.client import FuxiClient
    from fuxi.shells.master import FuxiMaster

    stamp = time.time_ns()
    cluster, ns = f"adopt-{stamp}", f"fuxi-adopt-{stamp}"
    data = tmp_path_factory.mktemp("adopt-data")
    master = FuxiMaster.options(namespace=ns, name="FuxiMaster", max_restarts=4).remote(
        cluster, str(data))
    jobs: list[str] = []
    try:
        ray.get(master.supervise.remote(), timeout=ANSWER_TIMEOUT_S)
        yield FuxiClient(master), master, jobs
    finally:
        try:
            ray.get(master.shutdown_jobs.remote(), timeout=ANSWER_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - it may be the one a failed test left dead
            pass
        for job_id in jobs:  # what shutdown_jobs could not reach
            try:
                ray.kill(jobmaster(job_id), no_restart=True)
            except (ValueError, ray.exceptions.RayError):
                pass
        ray.kill(master, no_restart=True)  # its agents are its own: they end with it


def kill_master_until_adopted(master, job_id: str) -> dict:
    """Kill FuxiMaster's process (Ray restarts it) and wait until the new one adopted the
    job; its cluster_info then."""
    import ray

    before = ray.get(master.cluster_info.remote(), timeout=ANSWER_TIMEOUT_S)
    ray.kill(master, no_restart=False)
    deadline = time.time() + MASTER_BACK_S
    while True:
        try:
            ray.get(master.resume.remote(), timeout=10)  # what its first caller triggers
            info = ray.get(master.cluster_info.remote(), timeout=10)
            if info["started_at"] != before["started_at"] and \
                    job_id in info["master"]["adopted_jobs"]:
                return info
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        assert time.time() < deadline, f"FuxiMaster did not come back within {MASTER_BACK_S}s"
        time.sleep(POLL_S)


def test_an_adopted_job_whose_jobmaster_dies_is_recovered_from_its_checkpoint(durable, tmp_path):
    client, master, jobs = durable
    marks, out = tmp_path / "marks", tmp_path / "out"
    n, gens = 500, 4
    spec = {"name": "adopted-resume", "params": {"dir": str(marks), "n": n, "sleep_s": 10.0},
            "speculation": {"enabled": False},
            "tasks": {
                "gen": {"fn": f"{FNS}:gen_counted", "instances": gens},
                "shuffle": {"fn": f"{FNS}:pass_slowly", "instances": 3, "depends_on": ["gen"],
                            "partition_by": ["key"]},
                "sum": {"fn": f"{FNS}:sum_counted", "instances": 3, "depends_on": ["shuffle"],
                        "shuffle": "one_to_one", "output": str(out)}}}
    job_id = client.submit(spec)
    jobs.append(job_id)
    before = wait_status(client, job_id,
                         lambda st: st["checkpoint"]["stored"] >= gens and ran(marks, "shuffle") > 0,
                         "the first stage checkpointed and the second running")
    assert before["recovery"] == {"restartable": True, "after_master_restart": True,
                                  "why_not": ""}, before["recovery"]

    info = kill_master_until_adopted(master, job_id)
    assert info["master"]["restarted"] is True
    adopted = client.status(job_id)
    assert adopted["state"] == "running" and adopted["tasks"]["shuffle"]["succeeded"] < 3, \
        "the second stage ended before the JobMaster could be killed during it"
    # The new FuxiMaster loaded the job's launch record: it can restart its JobMaster.
    assert adopted["recovery"]["restartable"] is True, adopted["recovery"]
    kill_jobmaster(job_id)

    st = client.wait(job_id, timeout_s=WAIT_S)
    assert st["state"] == "succeeded", st.get("report")
    t = read_output(out)
    got = {k: (s, c) for k, s, c in zip(t.column("key").to_pylist(), t.column("v_sum").to_pylist(),
                                         t.column("v_count").to_pylist())}
    want: dict[int, tuple[int, int]] = {}
    for v in range(gens * n):
        s, c = want.get(v % 97, (0, 0))
        want[v % 97] = (s + v, c + 1)
    assert got == want and t.num_rows == 97
    # The first stage ran once per instance, before either kill; the resumed JobMaster says so.
    assert ran(marks, "gen") == gens
    assert st["jobmaster_restarts"] == 1
    assert st["submitted_at"] <= before["submitted_at"]
    assert st["tasks"]["gen"]["recovered"] == gens and st["tasks"]["gen"]["attempts"] == 0
    for name, task in st["tasks"].items():
        assert task["recovered"] + task["rerun"] == task["instances"], (name, task)
    assert st["tasks"]["shuffle"]["rerun"] >= 1  # it was running when its master died


def test_an_adopted_job_too_big_to_keep_runs_and_fails_with_the_reason_if_its_jobmaster_dies(
        durable, tmp_path):
    from fuxi.core.launch import LAUNCH_RECORD_BYTES_MAX

    client, master, jobs = durable
    marks = tmp_path / "marks"
    # A parameter big enough that plan and spec together exceed the launch record's limit.
    spec = {"name": "adopted-big", "params": {"dir": str(marks), "sleep_s": 30.0,
                                              "ballast": "x" * (LAUNCH_RECORD_BYTES_MAX // 2 + 1)},
            "speculation": {"enabled": False},
            "tasks": {"t": {"fn": f"{FNS}:sleepy", "instances": 1,
                            "output": str(tmp_path / "out")}}}
    job_id = client.submit(spec)
    jobs.append(job_id)
    st = wait_status(client, job_id, lambda st: st["tasks"]["t"]["running"] > 0, "its task running")
    assert st["recovery"]["restartable"] is True  # this FuxiMaster still holds its plan
    assert st["recovery"]["after_master_restart"] is False
    assert "LAUNCH_RECORD_BYTES_MAX" in st["recovery"]["why_not"]

    kill_master_until_adopted(master, job_id)
    st = client.status(job_id)
    assert st["state"] == "running" and st["recovery"]["restartable"] is False, st["recovery"]
    kill_jobmaster(job_id)
    done = client.wait(job_id, timeout_s=WAIT_S)
    assert done["state"] == "failed"
    assert "not restarted after FuxiMaster's restart" in done["report"], done["report"]
    assert "LAUNCH_RECORD_BYTES_MAX" in done["report"], done["report"]


def test_fuxi_master_and_the_jobmaster_killed_at_once(durable, tmp_path):
    """Two faults at once: the JobMaster dies while FuxiMaster is down, so the new FuxiMaster
    finds the job's record running and no JobMaster alive. It resumes the job from its launch
    record and checkpoint (an orphan) -- or, if the JobMaster's name was still listed, adopts
    it and restarts it when its death is seen. Either way: the right output, and the first
    stage is not run again."""
    import ray

    client, master, jobs = durable
    marks, out = tmp_path / "marks", tmp_path / "out"
    n, gens = 300, 3
    spec = {"name": "both-at-once", "params": {"dir": str(marks), "n": n, "sleep_s": 6.0},
            "speculation": {"enabled": False},
            "tasks": {
                "gen": {"fn": f"{FNS}:gen_counted", "instances": gens},
                "shuffle": {"fn": f"{FNS}:pass_slowly", "instances": 2, "depends_on": ["gen"],
                            "partition_by": ["key"]},
                "sum": {"fn": f"{FNS}:sum_counted", "instances": 2, "depends_on": ["shuffle"],
                        "shuffle": "one_to_one", "output": str(out)}}}
    job_id = client.submit(spec)
    jobs.append(job_id)
    wait_status(client, job_id,
                lambda st: st["checkpoint"]["stored"] >= gens and ran(marks, "shuffle") > 0,
                "the first stage checkpointed and the second running")
    before = ray.get(master.cluster_info.remote(), timeout=ANSWER_TIMEOUT_S)
    jm = jobmaster(job_id)
    ray.kill(master, no_restart=False)  # Ray restarts it ...
    ray.kill(jm, no_restart=True)  # ... and its JobMaster dies while it is down
    deadline = time.time() + MASTER_BACK_S
    while True:
        try:
            info = ray.get(master.cluster_info.remote(), timeout=10)
            if info["started_at"] != before["started_at"]:
                break
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        assert time.time() < deadline, f"FuxiMaster did not come back within {MASTER_BACK_S}s"
        time.sleep(POLL_S)
    st = client.wait(job_id, timeout_s=WAIT_S)
    assert st["state"] == "succeeded", st.get("report")
    info = ray.get(master.cluster_info.remote(), timeout=ANSWER_TIMEOUT_S)["master"]
    print("taken back as:", "orphan" if job_id in info["relaunched_jobs"] else "adopted")  # -s
    assert job_id in info["relaunched_jobs"] or job_id in info["adopted_jobs"], info
    t = read_output(out)
    assert sorted(t.column("key").to_pylist()) == list(range(97))
    assert sum(t.column("v_sum").to_pylist()) == sum(range(gens * n))
    assert sum(t.column("v_count").to_pylist()) == gens * n
    assert ran(marks, "gen") == gens  # checkpointed before the kills: never run again
    # 1, or 2 when the dying FuxiMaster already began a restart (its record counts it).
    assert 1 <= st["jobmaster_restarts"] <= 2, st["jobmaster_restarts"]
    assert st["tasks"]["gen"]["recovered"] == gens and st["tasks"]["gen"]["attempts"] == 0

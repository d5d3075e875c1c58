"""FuxiMaster dies while jobs run (issue 16 part 3): Ray starts it again, the new one adopts
the running JobMasters (never fails them), rebuilds the slot ledger from what they hold, and
the jobs end with exactly the right output -- with no attempt run twice, since the workers
never stopped. Runs on the shared two-node cluster; the session's FuxiMaster is the one
killed (the tests after this module get the restarted one, as a user would)."""

from __future__ import annotations

import glob
import time

import pytest
import ray
from tests.integration.jobhelpers import read_output
from tests.integration.jobhelpers import three_stage, wait_marks

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]

FNS = "tests.integration.taskfns"


def _kill_master(client) -> float:
    """Kill FuxiMaster's process (Ray restarts it); the seconds until it answers again."""
    before = ray.get(client.master.cluster_info.remote(), timeout=30)
    t0 = time.time()
    ray.kill(client.master, no_restart=False)
    deadline = t0 + 60
    while True:
        try:
            info = ray.get(client.master.cluster_info.remote(), timeout=10)
            if info["started_at"] != before["started_at"]:
                return time.time() - t0
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        assert time.time() < deadline, "FuxiMaster did not come back within 60 s"
        time.sleep(0.05)


def test_a_job_survives_its_fuxi_master_dying_and_nothing_runs_twice(client, tmp_path):
    marks = tmp_path / "marks"
    spec = three_stage("failover-3stage", marks, tmp_path / "out")
    job_id = client.submit(spec)
    wait_marks(str(marks / "run-gen-*"), 2)  # the first stage is running
    took_s = _kill_master(client)
    assert took_s < 60
    info = ray.get(client.master.cluster_info.remote(), timeout=30)
    assert info["master"]["restarted"] is True
    assert job_id in info["master"]["adopted_jobs"], info["master"]
    done = client.wait(job_id, timeout_s=180)  # reads are asked again across a failover
    assert done["state"] == "succeeded", repr(done)
    # The workers never stopped: every instance ran exactly once.
    assert {t: s["attempts"] for t, s in done["tasks"].items()} == {"gen": 6, "sum": 3,
                                                                      "count": 3}, done["tasks"]
    assert sorted(p.split("/")[-1] for p in glob.glob(str(marks / "run-gen-*"))) == \
        sorted(f"run-gen-{i}-0" for i in range(6))
    out = read_output(str(tmp_path / "out"))
    keys_per_sum = sum(out.column("rows").to_pylist())
    assert keys_per_sum == 97  # every key once, across the three sum partitions


def test_the_ledger_is_rebuilt_from_what_the_adopted_job_holds(client, tmp_path):
    """While an adopted job still runs, the new FuxiMaster counts its workers: a node's free
    room is what it was before the failover."""
    marks = tmp_path / "marks"
    spec = {"name": "failover-ledger", "params": {"dir": str(marks), "sleep_s": 6.0},
            "speculation": {"enabled": False},
            "tasks": {"t": {"fn": f"{FNS}:sleepy", "instances": 4, "resources": {"cpu": 1},
                            "output": str(tmp_path / "out")}}}
    job_id = client.submit(spec)
    wait_marks(str(marks / "run-*"), 4)  # all four CPUs of the cluster hold its workers

    def used() -> float:
        info = ray.get(client.master.cluster_info.remote(), timeout=30)
        return sum(n["resources"].get("CPU", 0) - n["free"].get("CPU", 0) for n in info["nodes"])

    assert used() == 4.0
    _kill_master(client)
    deadline = time.time() + 30
    while used() != 4.0:  # the first sync of the adopted job puts its 4 slots back
        assert time.time() < deadline, "the adopted job's slots never showed in the ledger"
        time.sleep(0.1)
    done = client.wait(job_id, timeout_s=120)
    assert done["state"] == "succeeded", repr(done)
    assert done["tasks"]["t"]["attempts"] == 4
    assert sorted(set(read_output(str(tmp_path / "out")).column("instance").to_pylist())) == [0, 1, 2, 3]


def test_a_job_that_ends_while_fuxi_master_is_down_still_gets_its_verdict(client, tmp_path):
    """The JobMaster finished while no FuxiMaster listened: the new one adopts it, reads its
    verdict (JobMaster.final) and records it."""
    spec = {"name": "failover-quick", "tasks": {"t": {"fn": f"{FNS}:noop", "instances": 2}}}
    job_id = client.submit(spec)
    ray.kill(client.master, no_restart=False)  # at once: the job ends while it restarts
    done = client.wait(job_id, timeout_s=120)
    assert done["state"] == "succeeded", repr(done)


def test_fuxi_master_and_a_worker_die_at_once(client, tmp_path):
    """Two faults at once: a worker process is killed in the same instant as FuxiMaster. The
    adopted JobMaster retries the lost attempt; the output is whole, each instance once."""
    import json
    import os
    import signal

    marks = tmp_path / "marks"
    spec = {"name": "failover-two", "params": {"dir": str(marks), "sleep_s": 3.0},
            "speculation": {"enabled": False},
            "tasks": {"t": {"fn": f"{FNS}:sleepy", "instances": 8, "resources": {"cpu": 1},
                            "output": str(tmp_path / "out")}}}
    job_id = client.submit(spec)
    wait_marks(str(marks / "run-*"), 2)
    victim = sorted(glob.glob(str(marks / "run-*")))[0]
    with open(victim) as f:
        pid = json.load(f)["pid"]
    os.kill(pid, signal.SIGKILL)
    _kill_master(client)
    done = client.wait(job_id, timeout_s=180)
    assert done["state"] == "succeeded", repr(done)
    assert done["tasks"]["t"]["attempts"] >= 9  # the killed worker's attempt ran again
    out = read_output(str(tmp_path / "out"))
    assert sorted(set(out.column("instance").to_pylist())) == list(range(8))
    assert out.num_rows == 8 * 3  # each instance's rows exactly once

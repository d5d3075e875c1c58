"""A JobMaster keeps its event loop while Pangu is paused (issue 14, defect 11).

The Pangu master's process is stopped (SIGSTOP) and resumed (SIGCONT) in pulses for the whole
life of a job whose output is on Pangu, so the job's output commits and its final check meet
a master that does not answer for seconds at a time. The JobMaster must keep answering
(``status`` within ANSWER_S, far below one pause) and the job must still succeed with its
whole output. Before the fix the commits and the final check ran as blocking calls on the
JobMaster's event loop: it answered nothing while one waited on the paused master."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from pangu import client as PC
from pangu import deploy

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]
CLUSTER = "jmpause"
STOP_S = 5.0     # one pause of the Pangu master
RUN_S = 0.3      # the master runs this long between pauses
ANSWER_S = 2.5   # a JobMaster whose loop is free answers far sooner than one pause lasts
JOB_WAIT_S = 300.0


@pytest.fixture(scope="module")
def pg(ray_cluster, tmp_path_factory):
    import ray

    data = str(tmp_path_factory.mktemp("pangu-pause"))
    head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "head" in n.get("Resources", {}))
    deploy.start(CLUSTER, data, nodes=[head], per_node=3, settings={"allow_same_node": True},
                 heartbeat_s=0.5, capacity_bytes=128 * 1024 * 1024)
    try:
        yield PC.Client(CLUSTER)
    finally:
        deploy.stop(CLUSTER)


def _master_pids() -> list[int]:
    import ray

    ns = deploy._namespace(CLUSTER)
    pids = []
    for i in range(1, 4):
        try:
            m = ray.get_actor(PC.master_name(i), namespace=ns)
        except ValueError:
            continue
        pids.append(ray.get(m.__ray_call__.remote(lambda self: os.getpid()), timeout=30))
    assert pids, "no Pangu master found"
    return pids


def test_a_paused_pangu_master_neither_stalls_nor_fails_the_job(pg, client, tmp_path):
    import ray

    pids = _master_pids()
    spec = {"name": "commit-under-pause",
            "params": {"dir": str(tmp_path / "marks"), "sleep_s": 0.2},
            "tasks": {"t": {"fn": "tests.integration.taskfns:sleepy", "instances": 3,
                            "output": f"pangu://{CLUSTER}/pause/out"}}}
    job_id = client.submit(spec)
    jm = None
    deadline = time.time() + 60
    while jm is None:
        try:
            jm = ray.get_actor(f"jobmaster-{job_id}")
        except ValueError:
            assert time.time() < deadline, "the JobMaster never appeared"
            time.sleep(0.1)

    stop = threading.Event()
    pauses = []

    def pulse():
        while not stop.is_set():
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            pauses.append(time.monotonic())
            stop.wait(STOP_S)
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            stop.wait(RUN_S)

    slow, answered = [], 0
    t = threading.Thread(target=pulse, daemon=True)
    t.start()
    try:
        end = time.time() + JOB_WAIT_S
        while time.time() < end:
            ref = jm.status.remote()
            try:
                st = ray.get(ref, timeout=ANSWER_S)
                answered += 1
            except ray.exceptions.GetTimeoutError:
                slow.append(time.monotonic())
                st = ray.get(ref, timeout=JOB_WAIT_S)
            except ray.exceptions.RayActorError:
                break  # the job ended and its master was released
            if st["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.2)
        final = client.wait(job_id, timeout_s=JOB_WAIT_S)
    finally:
        stop.set()
        t.join(timeout=STOP_S + 5)
        for pid in pids:  # never leave the master stopped
            os.kill(pid, signal.SIGCONT)
    assert len(pauses) >= 2, "the master was not paused during the job"
    assert final["state"] == "succeeded", final.get("report")
    assert not slow, (f"the JobMaster did not answer status within {ANSWER_S}s {len(slow)} "
                      f"times ({answered} answered): its event loop was blocked")
    assert pg.exists("/pause/out/_SUCCESS")
    assert sorted(p.rsplit("/", 1)[-1] for p in pg.ls("/pause/out")
                  if "part-" in p) == [f"part-{i:05d}.parquet" for i in range(3)]

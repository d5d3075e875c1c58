"""``fuxi debug kill`` on the real two-node cluster (issue 16 part 8), through the function
behind the command (``fuxi.shells.chaos``: find, approve in Zhongkui's audit trail, kill):

- a three-stage job loses its JobMaster and then, while the restarted JobMaster resumes,
  the FuxiMaster (two faults in one run): it succeeds with exactly the right output, and its
  finished first stage is not run again. (Both at the same instant -- FuxiMaster dead before
  its recovery restarted the JobMaster -- fails the job today: a starting FuxiMaster fails a
  running job whose JobMaster is gone, ``fuxi.shells.jobrecords.restore_records``.)
- a node's agent killed shows missing in the node list (``cluster_info``, what `fuxi node
  list` prints), then back once FuxiMaster deployed a new one;
- a node of its own (added, then killed by PID) is marked dead by Ray; the head is refused.

The session's FuxiMaster is the one killed (as in test_master_failover_ray.py)."""

from __future__ import annotations

import glob
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from base.cluster import namespace
from base.errors import NotFound
from fuxi.errors import BadInput, TargetNotFound
from tests.integration.jobhelpers import ran

pytestmark = [pytest.mark.ray, pytest.mark.timeout(500)]

FNS = "tests.integration.taskfns"
WAIT_S = 180.0
ANSWER_TIMEOUT_S = 30.0
POLL_S = 0.2
CLUSTER = "test"  # the shared `client` fixture's cluster: namespace fuxi-test


def _chaos(client):
    from fuxi.shells.chaos import Chaos

    return Chaos(namespace(CLUSTER), client)


def _authority(enabled: bool):
    """A Zhongkui authority of the test's own (the session's FuxiMaster runs without one, as
    under a driver that is its own operator; `fuxi up` starts one, detached)."""
    import functools

    from fuxi.runtime import authority_store
    from zhongkui.actor import ZhongkuiAuthority

    return ZhongkuiAuthority.options(namespace=f"chaos-zk-{time.time_ns()}").remote(
        functools.partial(authority_store, None, None), None, None, enabled)


@pytest.fixture(scope="module")
def authority(ray_cluster):
    import ray

    zk = _authority(False)
    yield zk
    ray.kill(zk, no_restart=True)


def _kill(client, authority, *args, **kw) -> dict:
    """What `fuxi debug kill ... --yes` does once connected."""
    from fuxi.shells import chaos

    target = _chaos(client).find(*args, **kw)
    who = chaos.authorize(authority, None, target)
    assert who == "operator"  # access control is off on the test cluster: recorded as such
    return target.execute()


def test_with_access_control_on_a_kill_needs_an_administrator(client):
    import ray

    from base.errors import Denied, Unauthenticated
    from fuxi.shells import chaos

    zk = _authority(True)
    try:
        target = _chaos(client).find("master")
        for token in (None, "garbage"):
            with pytest.raises((Denied, Unauthenticated)):
                chaos.authorize(zk, token, target)
    finally:
        ray.kill(zk, no_restart=True)


def test_a_three_stage_job_survives_its_jobmaster_and_then_fuxi_master_killed(client, authority,
                                                                                tmp_path):
    import ray

    marks, out = tmp_path / "marks", tmp_path / "out"
    n, gens = 300, 4
    spec = {"name": "chaos-three", "params": {"dir": str(marks), "n": n, "sleep_s": 3.0},
            "speculation": {"enabled": False},
            "tasks": {
                "gen": {"fn": f"{FNS}:gen_counted", "instances": gens},
                "shuffle": {"fn": f"{FNS}:pass_slowly", "instances": 3, "depends_on": ["gen"],
                            "partition_by": ["key"]},
                "sum": {"fn": f"{FNS}:sum_counted", "instances": 3, "depends_on": ["shuffle"],
                        "shuffle": "one_to_one", "output": str(out)}}}
    job_id = client.submit(spec)
    with pytest.raises(NotFound, match="fuxi job list"):  # exit 2
        _chaos(client).find("jobmaster", job_id + "x")  # a job nobody has
    deadline = time.time() + WAIT_S
    while True:  # the first stage checkpointed, the second running
        st = client.status(job_id)
        assert st["state"] not in ("succeeded", "failed", "cancelled"), st.get("report")
        if st["checkpoint"]["stored"] >= gens and ran(marks, "shuffle") > 0:
            break
        assert time.time() < deadline, f"never saw the second stage running: {st}"
        time.sleep(POLL_S)
    before = ray.get(client.master.cluster_info.remote(), timeout=ANSWER_TIMEOUT_S)
    jm = _kill(client, authority, "jobmaster", job_id)
    assert jm["kind"] == "jobmaster" and job_id in jm["killed"], jm
    deadline = time.time() + WAIT_S
    while True:  # FuxiMaster's recovery started a new JobMaster: now FuxiMaster dies too
        st = client.status(job_id)
        if st.get("jobmaster_restarts", 0) >= 1 and st["state"] == "running":
            break
        assert st["state"] not in ("succeeded", "failed", "cancelled"), st.get("report")
        assert time.time() < deadline, f"the JobMaster was not restarted: {st}"
        time.sleep(POLL_S)
    m = _kill(client, authority, "master")
    assert m["restart"] is True, m
    deadline = time.time() + WAIT_S
    while True:  # Ray started FuxiMaster again
        try:
            info = ray.get(client.master.cluster_info.remote(), timeout=ANSWER_TIMEOUT_S)
            if info["started_at"] != before["started_at"]:
                break
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        assert time.time() < deadline, "FuxiMaster did not come back"
        time.sleep(POLL_S)
    st = client.wait(job_id, timeout_s=WAIT_S)
    assert st["state"] == "succeeded", st.get("report")
    t = pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(f"{out}/part-*.parquet"))])
    got = {k: (s, c) for k, s, c in zip(t.column("key").to_pylist(), t.column("v_sum").to_pylist(),
                                         t.column("v_count").to_pylist())}
    want: dict[int, tuple[int, int]] = {}
    for v in range(gens * n):
        s, c = want.get(v % 97, (0, 0))
        want[v % 97] = (s + v, c + 1)
    assert got == want and t.num_rows == 97
    assert ran(marks, "gen") == gens  # checkpointed before the kills: not run again
    assert st["jobmaster_restarts"] >= 1
    with pytest.raises(TargetNotFound, match=r"has ended \(succeeded\)"):
        _chaos(client).find("worker", job_id)


def _agent_of(client, node: str) -> dict:
    import ray

    info = ray.get(client.master.cluster_info.remote(), timeout=ANSWER_TIMEOUT_S)
    return next((x.get("agent") or {}) for x in info["nodes"] if x["node_id"] == node)


def _wait_agent(client, node: str, state: str, timeout_s: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        a = _agent_of(client, node)
        if a.get("state") == state:
            return a
        assert time.monotonic() < deadline, f"agent of {node[:12]} not {state}: {a}"
        time.sleep(POLL_S)


def test_a_killed_agent_shows_missing_then_back(client, authority):
    import ray

    second = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "second" in n["Resources"])
    _wait_agent(client, second, "healthy")
    out = _kill(client, authority, "agent", second[:12])  # the prefix `fuxi node list` prints
    assert out["resource"] == f"node:{second}", out
    _wait_agent(client, second, "missing")
    _wait_agent(client, second, "healthy")
    deadline = time.monotonic() + 60
    while True:  # and it is no longer excluded for every job
        info = ray.get(client.master.cluster_info.remote(), timeout=ANSWER_TIMEOUT_S)
        if next(x for x in info["nodes"] if x["node_id"] == second).get("blacklisted") is None:
            break
        assert time.monotonic() < deadline, "the node stayed excluded"
        time.sleep(POLL_S)


def test_a_node_is_killed_by_pid_and_the_head_is_refused(ray_cluster, client, authority):
    import ray

    head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "head" in n["Resources"])
    with pytest.raises(BadInput, match="is the head node"):
        _chaos(client).find("node", head)
    extra = ray_cluster.add_node(num_cpus=1, resources={"chaos-extra": 1})
    try:
        ray_cluster.wait_for_nodes(timeout=60)
        nid = next(n["NodeID"] for n in ray.nodes()
                   if n["Alive"] and "chaos-extra" in n["Resources"])
        out = _kill(client, authority, "node", nid)
        assert out["pids"], out
        deadline = time.monotonic() + 60
        while any(n["NodeID"] == nid and n["Alive"] for n in ray.nodes()):
            assert time.monotonic() < deadline, "Ray never marked the killed node dead"
            time.sleep(POLL_S)
        with pytest.raises(TargetNotFound, match="dead already"):
            _chaos(client).find("node", nid)
    finally:
        ray_cluster.remove_node(extra, allow_graceful=False)


def test_a_killed_worker_is_a_crash_its_job_runs_again(client, authority, tmp_path):
    """`kill worker <job> <pid>`: the process of one running attempt dies (SIGKILL); the job
    runs the attempt again and its output is whole, each instance once."""
    import json

    marks = tmp_path / "marks"
    spec = {"name": "chaos-worker", "params": {"dir": str(marks), "sleep_s": 3.0},
            "speculation": {"enabled": False},
            "tasks": {"t": {"fn": f"{FNS}:sleepy", "instances": 4, "resources": {"cpu": 1},
                            "output": str(tmp_path / "out")}}}
    job_id = client.submit(spec)
    deadline = time.time() + WAIT_S
    while not glob.glob(str(marks / "run-*")):
        assert time.time() < deadline, "no attempt started"
        time.sleep(POLL_S)
    with open(sorted(glob.glob(str(marks / "run-*")))[0]) as f:
        pid = json.load(f)["pid"]  # the worker process running that attempt
    with pytest.raises(TargetNotFound, match="names no worker; its workers are"):
        _chaos(client).find("worker", job_id, "4194303")
    out = _kill(client, authority, "worker", job_id, str(pid))
    assert out["pids"] == [pid], out
    st = client.wait(job_id, timeout_s=WAIT_S)
    assert st["state"] == "succeeded", st.get("report")
    assert st["tasks"]["t"]["attempts"] >= 5  # the killed attempt ran again
    t = pa.concat_tables([pq.read_table(p) for p in
                          sorted(glob.glob(str(tmp_path / "out" / "part-*.parquet")))])
    assert sorted(t.column("instance").to_pylist()) == [i for i in range(4) for _ in range(3)]  # 3 rows each, once

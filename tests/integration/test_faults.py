"""Fault tests on the shared cluster: a whole node goes away while a job runs on it."""

from __future__ import annotations

import glob
import json
import time

import pytest

from tests.integration.jobhelpers import FNS, read_output, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def test_node_removed_mid_job(ray_cluster, client, tmp_path):
    import ray

    node = ray_cluster.add_node(num_cpus=2, resources={"doomed": 1})
    ray_cluster.wait_for_nodes(timeout=60)
    doomed = next(n["NodeID"] for n in ray.nodes()
                  if n["Alive"] and "doomed" in n.get("Resources", {}))
    marks = tmp_path / "marks"
    spec = {"name": "nodeloss", "params": {"dir": str(marks), "sleep_s": 1.0},
            "speculation": {"enabled": False}, "retry_backoff_s": 0.05,
            "tasks": {"t": {"fn": f"{FNS}:sleepy", "instances": 18, "output": str(tmp_path / "out")}}}
    job_id = client.submit(spec)
    try:
        def running_on_doomed():
            for p in glob.glob(str(marks / "run-*")):
                if json.load(open(p))["node"] == doomed:
                    return p
            return None

        wait_for(running_on_doomed, 90, "an attempt on the node to be removed")
    finally:
        ray_cluster.remove_node(node, allow_graceful=False)
    st = client.wait(job_id, timeout_s=180)
    assert st["state"] == "succeeded", st.get("report")
    assert st["tasks"]["t"]["retries"] >= 1
    out = read_output(str(tmp_path / "out"))
    assert sorted(out.column("instance").to_pylist()) == sorted(i for i in range(18) for _ in range(3))
    # Every instance that finished did so on a surviving node or before the node went away,
    # and the cluster view no longer counts the dead node.
    deadline = time.time() + 30
    while time.time() < deadline:
        info = ray.get(client.master.cluster_info.remote(), timeout=30)
        if doomed not in {n["node_id"] for n in info["nodes"]}:
            break
        time.sleep(0.5)
    assert doomed not in {n["node_id"] for n in info["nodes"]}

"""Other Ray work on the same cluster is not oversubscribed: CPUs a foreign actor holds on a
node are not granted to Fuxi's workers until it lets them go. On the shared two-node cluster."""

from __future__ import annotations

import glob
import json
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

FNS = "tests.integration.taskfns"


def test_cpus_held_by_foreign_ray_work_are_not_granted(client, tmp_path):
    import ray

    from base import actors

    @ray.remote(num_cpus=2, resources={"second": 1})
    class Hog:  # someone else's work: both CPUs of the second node
        def node(self):
            return ray.get_runtime_context().get_node_id()

    hog = Hog.remote()
    try:
        second = ray.get(hog.node.remote(), timeout=60)
        info = actors.call(client.master.cluster_info, timeout_s=30)
        node = next(n for n in info["nodes"] if n["node_id"] == second)
        assert node["foreign"].get("CPU") == 2.0 and node["free"].get("CPU", 0.0) == 0.0
        d = tmp_path / "marks"
        st = client.wait(client.submit({
            "name": "beside-foreign", "speculation": {"enabled": False},
            "params": {"dir": str(d), "sleep_s": 0.3},
            "tasks": {"t": {"fn": f"{FNS}:sleepy", "instances": 6}}}), timeout_s=120)
        assert st["state"] == "succeeded", st.get("report")
        ran_on = {json.load(open(p))["node"] for p in glob.glob(str(d / "run-*"))}
        assert ran_on and second not in ran_on, "a worker was placed on the CPUs the hog holds"
    finally:
        ray.kill(hog, no_restart=True)
    # Once it is gone, the node is Fuxi's again.
    deadline = time.time() + 30
    while True:
        info = actors.call(client.master.cluster_info, timeout_s=30)
        node = next(n for n in info["nodes"] if n["node_id"] == second)
        if not node["foreign"].get("CPU") or time.time() > deadline:
            break
        time.sleep(0.5)
    assert not node["foreign"].get("CPU") and node["free"].get("CPU") == 2.0

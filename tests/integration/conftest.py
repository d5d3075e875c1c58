"""One real Ray cluster for every integration test: two simulated nodes of 2 CPUs each
(``ray.cluster_utils.Cluster``), so retries and backups can go to another node."""

from __future__ import annotations

import os

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"  # a private loopback test cluster
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# `fuxi up` in tests: /metrics on any free port, never the fixed default another cluster on
# this machine may hold.
os.environ.setdefault("FUXI_WEB_PORT", "0")  # test clusters never fight over the fixed port

FAST_HEALTH = {
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
    "health_check_timeout_ms": 500,
    "health_check_initial_delay_ms": 0,
}


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"head": 1}, "_system_config": FAST_HEALTH,
                        "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=2, resources={"second": 1})
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, namespace="fuxi-test", log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def client(ray_cluster):
    from fuxi.client import FuxiClient
    from fuxi.runtime import connect

    with connect("test") as conn:
        yield FuxiClient(conn.master)


@pytest.fixture
def job(client, tmp_path):
    """Submit a spec dict and wait for it: job(spec, timeout_s) -> final status."""

    def run(spec: dict, timeout_s: float = 120.0) -> dict:
        job_id = client.submit(spec)
        st = client.wait(job_id, timeout_s=timeout_s)
        assert st["state"] in ("succeeded", "failed", "cancelled"), f"job did not end: {st}"
        return st

    return run


@pytest.fixture
def limits(client):
    """The shared cluster's queues and limit as they were before the test, restored after
    it whatever it did (the queue and quota tests, test_queues_ray and test_quotas_ray)."""
    before = client.queues()
    try:
        yield client
    finally:
        client.configure_queues({k: {"jobs_running_max": v["jobs_running_max"]}
                                 for k, v in before["queues"].items()}
                                | {"default": {"jobs_running_max": None}},
                                before["jobs_running_max"])


@pytest.fixture(scope="module")
def kuafu_net(ray_cluster, tmp_path_factory):
    """A 1-replica Nuwa and a Kuafu proxy on every node, in the test session's namespace
    (cluster "test"), for the Kuafu and the service test modules (each its own, so nothing of
    it runs during other modules)."""
    import time
    from types import SimpleNamespace

    import ray

    from kuafu import deploy
    from nuwa.group import start_group

    g = start_group(1, str(tmp_path_factory.mktemp("kuafu-nuwa")),
                    namespace=f"nuwa-kuafu-{time.time_ns()}")
    try:
        nuwa = [list(a) for a in g.client_addresses()]
        infos = deploy.start("fuxi-test", nuwa, settings={
            "hello_timeout_s": 3.0, "idle_timeout_s": 8.0, "partial_timeout_s": 3.0})
        here = ray.get_runtime_context().get_node_id()
        other = next(n for n in deploy.alive_nodes() if n != here)
        yield SimpleNamespace(nuwa=nuwa, infos={i["node"]: i for i in infos}, here=here,
                              other=other, group=g)
    finally:
        try:
            deploy.stop("fuxi-test")
        finally:
            g.stop()

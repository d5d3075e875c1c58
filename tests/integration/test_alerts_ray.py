"""Alerts on real Ray (issue 17 part 3): a node removed from the multi-node
``ray.cluster_utils.Cluster`` makes the default rule NodeLost fire, and it resolves when a node
joins again; both changes are events in the cluster log. Observed through FuxiMaster's
``cluster_info()["alerts"]`` (what `fuxi alerts` and the console show)."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
ALERT_WAIT_S = 90.0  # Ray marks the node dead (~2 s here), FuxiMaster sees it, a round runs


def wait_alerts(client, cond, what: str) -> dict:
    import ray

    deadline = time.time() + ALERT_WAIT_S
    while True:
        view = ray.get(client.master.cluster_info.remote(), timeout=30)["alerts"]
        if cond(view):
            return view
        assert time.time() < deadline, f"{what} not seen within {ALERT_WAIT_S}s: {view}"
        time.sleep(0.5)


def node_lost(view: dict) -> list[dict]:
    return [a for a in view["active"] if a["rule"] == "NodeLost"]


@pytest.fixture
def fresh(ray_cluster):
    """A FuxiMaster of its own (its own namespace, no store), so its alerts start from what
    this test does: the session's FuxiMaster may still count a node an earlier test removed
    and never replaced (NodeLost then rightly stays firing)."""
    import ray

    from fuxi.client import FuxiClient
    from fuxi.shells.master import FuxiMaster

    stamp = time.time_ns()
    master = FuxiMaster.options(namespace=f"fuxi-alerts-{stamp}", name="FuxiMaster").remote(
        f"alerts-{stamp}", None)
    try:
        ray.get(master.supervise.remote(None, False), timeout=60)  # no agents: not needed
        yield FuxiClient(master)
    finally:
        ray.kill(master, no_restart=True)


def test_a_removed_node_fires_node_lost_and_a_joining_node_resolves_it(ray_cluster, fresh):
    import ray

    client = fresh
    view = wait_alerts(client, lambda v: v["rounds"] >= 1, "a first round of the rules")
    assert "NodeLost" in view["rules"] and not node_lost(view), view
    extra = ray_cluster.add_node(num_cpus=1)
    ray_cluster.wait_for_nodes()
    node_id = extra.node_id
    wait_alerts(client, lambda v: any(n["node_id"] == node_id for n in ray.get(
        client.master.cluster_info.remote(), timeout=30)["nodes"]), "the new node in the table")
    before = client.events(kinds=["alert_*"])["last_id"]
    again = None
    try:
        ray_cluster.remove_node(extra)
        extra = None
        view = wait_alerts(client, lambda v: any(a["state"] == "firing" for a in node_lost(v)),
                           "NodeLost firing")
        (a,) = node_lost(view)
        assert a["severity"] == "critical" and node_id[:12] in a["summary"], a
        again = ray_cluster.add_node(num_cpus=1)
        ray_cluster.wait_for_nodes()
        view = wait_alerts(client, lambda v: not node_lost(v), "NodeLost resolved")
        assert view["resolved"][0]["rule"] == "NodeLost", view["resolved"]
        assert view["resolved"][0]["resolved_at"] >= view["resolved"][0]["fired_at"]
        kinds = [e["kind"] for e in client.events(since_id=before, kinds=["alert_*"])["events"]
                 if e["fields"].get("rule") == "NodeLost"]
        assert kinds == ["alert_firing", "alert_resolved"], kinds
    finally:
        for n in (extra, again):
            if n is not None:
                ray_cluster.remove_node(n)

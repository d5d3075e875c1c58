"""FuxiAgents on the real two-node cluster: FuxiMaster deploys one per node and they
heartbeat; the agent of one node is paused (SIGSTOP), so that node shows as missing and is
excluded for every job -- a job run meanwhile places nothing there -- and once the agent runs
again the node comes back. The workers that job's JobMaster stopped are reported by the agents
as exits, with their cause.

Its own FuxiMaster (namespace of its own): the cluster-level entry must not reach the session's
shared master, whose other tests need both nodes. No node of the shared cluster is removed."""

from __future__ import annotations

import glob
import os
import signal
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from base.cluster import namespace
from fuxi.core import agentview as av

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

FNS = "tests.integration.taskfns"
ANSWER_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 180.0
AGENTS_UP_TIMEOUT_S = 120.0  # both agents created and heard from (two actor starts under load)
MISSING_TIMEOUT_S = 60.0  # a paused agent seen missing (its limit is a few seconds)
BACK_TIMEOUT_S = 60.0
POLL_S = 0.5


def wait_for(master, what: str, timeout_s: float, ok):
    import ray

    deadline = time.monotonic() + timeout_s
    info = None
    while time.monotonic() < deadline:
        info = ray.get(master.cluster_info.remote(), timeout=ANSWER_TIMEOUT_S)
        nodes = {n["node_id"]: n for n in info["nodes"]}
        if ok(nodes):
            return nodes
        time.sleep(POLL_S)
    raise AssertionError(f"{what} not within {timeout_s}s: "
                         f"{[(n['node_id'][:8], n.get('agent'), n.get('blacklisted')) for n in info['nodes']]}"
                         f" events {info.get('agent_events')}")


def test_agents_heartbeat_and_a_silent_node_is_excluded_until_it_comes_back(ray_cluster, tmp_path):
    import ray

    from fuxi.client import FuxiClient
    from fuxi.shells.agents import agent_name
    from fuxi.shells.master import FuxiMaster

    head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "head" in n["Resources"])
    second = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "second" in n["Resources"])
    ns = f"fuxi-agents-{time.time_ns()}"
    master = FuxiMaster.options(namespace=ns, name="FuxiMaster").remote("agents",
                                                                        str(tmp_path / "data"))
    pid = None
    try:
        ray.get(master.supervise.remote(), timeout=ANSWER_TIMEOUT_S)
        nodes = wait_for(master, "agents healthy on both nodes", AGENTS_UP_TIMEOUT_S,
                         lambda ns_: all((ns_.get(n, {}).get("agent") or {}).get("state") == "healthy"
                                         for n in (head, second)))
        for n in (head, second):
            a = nodes[n]["agent"]
            assert a["heartbeat_age_s"] < av.AGENT_HEARTBEAT_S * av.AGENT_MISSED_HEARTBEATS_MAX
            assert a["mem_available_bytes"] > av.MEM_AVAILABLE_BYTES_MIN and a["disk_free_bytes"] > 0
            assert nodes[n]["blacklisted"] is None

        agent = ray.get_actor(agent_name(second), namespace=namespace("agents"))
        pid = ray.get(agent.info.remote(), timeout=ANSWER_TIMEOUT_S)["pid"]
        os.kill(pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        nodes = wait_for(master, "the paused agent's node missing and excluded", MISSING_TIMEOUT_S,
                         lambda ns_: (ns_[second].get("agent") or {}).get("state") == "missing"
                         and ns_[second].get("blacklisted") is not None)
        seen_after_s = time.monotonic() - paused_at
        entry = nodes[second]["blacklisted"]
        assert entry["level"] == "cluster" and entry["reason"].startswith("unhealthy: missing"), entry
        assert nodes[head]["blacklisted"] is None  # the other node is untouched
        print(f"paused agent seen missing and excluded after {seen_after_s:.1f}s")  # -s: record

        # A job run now places nothing on the excluded node.
        client = FuxiClient(master)
        spec = {"name": "while-missing", "speculation": {"enabled": False},
                "params": {"dir": str(tmp_path / "marks"), "bad_node": "", "sleep_s": 1.0},
                "tasks": {"t": {"fn": f"{FNS}:fails_on_node", "instances": 6,
                                "output": str(tmp_path / "out")}}}
        st = client.wait(client.submit(spec), timeout_s=JOB_TIMEOUT_S)
        assert st["state"] == "succeeded", st.get("report")
        t = pa.concat_tables([pq.read_table(p) for p in
                              sorted(glob.glob(str(tmp_path / "out" / "part-*.parquet")))])
        assert set(t.column("node").to_pylist()) == {head}, "an instance ran on the excluded node"

        os.kill(pid, signal.SIGCONT)
        pid = None
        wait_for(master, "the node back once its agent heartbeats again", BACK_TIMEOUT_S,
                 lambda ns_: (ns_[second].get("agent") or {}).get("state") == "healthy"
                 and ns_[second].get("blacklisted") is None)

        # The job's workers (on the head: the other node was excluded) were stopped by their
        # JobMaster when it ended: the head's agent reports them, cause "preempted" (by us).
        nodes = wait_for(master, "the stopped workers reported as exits", BACK_TIMEOUT_S,
                         lambda ns_: any(e["cause"] == "preempted"
                                         for e in (ns_[head].get("agent") or {}).get("exits", ())))
        print("exits on the head:", nodes[head]["agent"]["exits"])
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        ray.kill(master, no_restart=True)  # its agents are its own: they end with it


def test_an_agent_is_deployed_on_a_node_that_joins_and_retired_when_it_leaves(ray_cluster,
                                                                             tmp_path):
    """A node of this test's own (added, then removed: the fixture's two stay)."""
    import ray

    from fuxi.shells.agents import agent_name
    from fuxi.shells.master import FuxiMaster

    ns = f"fuxi-agents-join-{time.time_ns()}"
    master = FuxiMaster.options(namespace=ns, name="FuxiMaster").remote("agents-join",
                                                                        str(tmp_path / "data"))
    extra = None
    try:
        ray.get(master.supervise.remote(), timeout=ANSWER_TIMEOUT_S)
        extra = ray_cluster.add_node(num_cpus=1, resources={"agents-extra": 1})
        ray_cluster.wait_for_nodes(timeout=60)
        new = next(n["NodeID"] for n in ray.nodes()
                   if n["Alive"] and "agents-extra" in n["Resources"])
        wait_for(master, "an agent on the node that joined", AGENTS_UP_TIMEOUT_S,
                 lambda ns_: (ns_.get(new, {}).get("agent") or {}).get("state") == "healthy")
        ray_cluster.remove_node(extra)
        extra = None
        wait_for(master, "the node gone from the view", BACK_TIMEOUT_S, lambda ns_: new not in ns_)
        deadline = time.monotonic() + BACK_TIMEOUT_S
        while time.monotonic() < deadline:  # retired: its actor is killed, its name free
            try:
                ray.get_actor(agent_name(new), namespace=namespace("agents-join"))
            except ValueError:
                break
            time.sleep(POLL_S)
        else:
            raise AssertionError("the agent of the node that left was not retired")
        info = ray.get(master.cluster_info.remote(), timeout=ANSWER_TIMEOUT_S)
        assert any("retired" in e for e in info["agent_events"]), info["agent_events"]
    finally:
        if extra is not None:
            ray_cluster.remove_node(extra)
        ray.kill(master, no_restart=True)

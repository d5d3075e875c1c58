"""Expansion and drain on the real cluster (issue 18 part 5).

1. A FuxiMaster of its own (namespace of its own) with its agents and Pangu: a node that joins
   gets a chunkserver by itself and Pangu's rebalance moves data onto it. Then, while a batch
   job runs instances there, ``drain`` of that node: nothing new is placed there, its attempts
   move after the drain timeout (re-queued, not failed), Pangu copies its chunks away, the
   node reports drained (removable); it is removed, and every file reads back identical and the
   job's output is exactly right.
2. On the session's shared FuxiMaster with Kuafu: a service with a replica on the second node,
   called without pause by a client; ``drain`` of that node moves the replica (surge first)
   with no failed call; ``undrain`` puts the node back.
3. The same shared master, one node holding a replica, chunks and running instances at once:
   drained, it ends with none there, no failed call, no lost byte, and the job exact."""

from __future__ import annotations

import glob
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.jobhelpers import wait_for as poll_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

FNS = "tests.integration.taskfns"
ANSWER_TIMEOUT_S = 60.0
JOIN_TIMEOUT_S = 180.0  # a node added, its agent and chunkserver started (actor starts under load)
DRAIN_TIMEOUT_S = 240.0  # a drain finished: copies, moves, releases
JOB_TIMEOUT_S = 300.0
CS = 256 * 1024
PANGU_SETTINGS = {"dead_after_s": 3.0, "maintain_s": 0.5, "seed": 7,
                  "repair_bytes_per_s": 64 * 1024 * 1024, "rebalance_threshold": 0.001}


def wait_for(pred, timeout_s: float, what: str):
    return poll_for(lambda: pred() or time.sleep(0.3), timeout_s, what)


def _node(resource: str) -> str:
    import ray

    return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"])


def test_a_joining_node_gets_data_and_a_drain_empties_it_with_no_loss(ray_cluster, tmp_path):
    import ray

    from base import actors
    from base.cluster import namespace
    from fuxi.client import FuxiClient
    from fuxi.shells.master import FuxiMaster
    from fuxi.shells.nodekeeper import find_keeper
    from pangu import client as PC
    from pangu import deploy

    cluster = f"drn{time.time_ns() % 10**9}"
    ns = namespace(cluster)
    data_dir = str(tmp_path / "data")
    head, second = _node("head"), _node("second")
    deploy.start(cluster, data_dir, nodes=[head, second], settings=PANGU_SETTINGS,
                 heartbeat_s=0.5, scrub_interval_s=0.5, capacity_bytes=256 * 1024 * 1024)
    master = FuxiMaster.options(namespace=ns, name="FuxiMaster").remote(cluster, data_dir)
    extra = None
    try:
        c = PC.Client(cluster)
        files = {f"/d/f{i}": os.urandom(6 * CS + i) for i in range(4)}
        c.mkdir("/d", parents=True)
        for path, data in files.items():
            with c.open(path, "wb", chunk_size=CS, replication=2) as f:
                f.write(data)
        ray.get(master.supervise.remote(), timeout=ANSWER_TIMEOUT_S)
        keeper = wait_for(lambda: find_keeper(ns), JOIN_TIMEOUT_S, "the node keeper")

        extra = ray_cluster.add_node(num_cpus=2, resources={"drain-extra": 1},
                                     object_store_memory=200 * 1024 * 1024)
        ray_cluster.wait_for_nodes(timeout=60)
        new = _node("drain-extra")
        server = wait_for(lambda: next((s for s in c.status()["servers"]
                                        if s["node"] == new and not s["dead"]), None),
                          JOIN_TIMEOUT_S, "a chunkserver started by itself on the new node")
        wait_for(lambda: next(s for s in c.status()["servers"] if s["id"] == server["id"])
                 ["chunks"] > 0, JOIN_TIMEOUT_S, "Pangu's rebalance to move data onto it")
        # The keeper reads Pangu's status on its own round (every second): wait for it.
        node = wait_for(lambda: (lambda v: v if v["holds"]["chunks"] > 0 else None)(
            actors.call(keeper.view, timeout_s=ANSWER_TIMEOUT_S)["nodes"][new]),
            JOIN_TIMEOUT_S, "the node keeper to see the new node's chunks")
        assert node["state"] == "active", node

        # A job with instances running on the new node when the drain starts.
        client = FuxiClient(master)
        spec = {"name": "during-drain", "speculation": {"enabled": False},
                "params": {"dir": str(tmp_path / "marks"), "bad_node": "", "sleep_s": 3.0},
                "tasks": {"t": {"fn": f"{FNS}:fails_on_node", "instances": 12,
                                "max_retries": 0, "output": str(tmp_path / "out")}}}
        job_id = client.submit(spec)
        wait_for(lambda: glob.glob(str(tmp_path / "marks" / "run-*")) and any(
            n["node_id"] == new and n["holds"]["slots"] > 0 for n in ray.get(
                master.cluster_info.remote(), timeout=ANSWER_TIMEOUT_S)["nodes"]),
            JOB_TIMEOUT_S, "the job's workers on the new node")
        out = actors.call(keeper.drain, new[:12], 2.0, timeout_s=ANSWER_TIMEOUT_S)
        assert out["node_id"] == new and out["state"] == "draining"

        st = client.wait(job_id, timeout_s=JOB_TIMEOUT_S)
        assert st["state"] == "succeeded", st.get("report")  # max_retries 0: a move is no failure
        t = pa.concat_tables([pq.read_table(p) for p in
                              sorted(glob.glob(str(tmp_path / "out" / "part-*.parquet")))])
        assert sorted(t.column("instance").to_pylist()) == sorted(list(range(12)) * 3)

        drained = wait_for(lambda: (lambda v: v if v["state"] == "drained" else None)(
            actors.call(keeper.view, timeout_s=ANSWER_TIMEOUT_S)["nodes"][new]),
            DRAIN_TIMEOUT_S, "the node drained (no slot, no chunk left)")
        assert drained["removable"] and drained["holds"] == {"replicas": 0, "slots": 0,
                                                             "chunks": 0}, drained
        # Removed with no loss: every byte is still readable, the namespace healthy.
        ray_cluster.remove_node(extra, allow_graceful=False)
        extra = None
        for path, data in files.items():
            with c.open(path, "rb") as f:
                assert f.read() == data, path
        wait_for(lambda: c.fsck("/")["healthy"], 60, "Pangu healthy without the node")
        view = wait_for(lambda: (lambda v: v if v.get(new, {}).get("state") == "dead" else None)(
            actors.call(keeper.view, timeout_s=ANSWER_TIMEOUT_S)["nodes"]), 60, "the node dead")
        assert view[head]["state"] == "active"
    finally:
        if extra is not None:
            ray_cluster.remove_node(extra, allow_graceful=False)
        k = find_keeper(ns)
        if k is not None:
            ray.kill(k, no_restart=True)
        ray.kill(master, no_restart=True)
        deploy.stop(cluster)


def test_a_drain_moves_a_service_replica_with_no_failed_call(client, kuafu_net):
    import ray

    from base import actors
    from fuxi.shells.drains import DRAIN_POLL_S
    from fuxi.shells.nodekeeper import KEEPER_ROUND_S, start_keeper
    from tests.integration.test_services_ray import Load, _ready, _remove, _spec, _wait

    master = client.master
    name = "svc-drain"
    keeper = start_keeper("test", "fuxi-test", None, None, None, False)
    second = kuafu_net.other
    try:
        ray.get(master.service_register.remote(_spec(name, replicas=2)), timeout=30)
        st = _wait(master, name, _ready(2))
        assert second in {r["node"] for r in st["replicas"]}, st["replicas"]
        with Load(name) as load:
            time.sleep(1.0)
            out = actors.call(keeper.drain, second, 30.0, timeout_s=ANSWER_TIMEOUT_S)
            assert out["state"] == "draining"
            st = _wait(master, name, lambda s: _ready(2)(s) and all(
                r["node"] != second for r in s["replicas"]), DRAIN_TIMEOUT_S)
            v = wait_for(lambda: (lambda v: v if v["state"] == "drained" else None)(
                actors.call(keeper.view, timeout_s=ANSWER_TIMEOUT_S)["nodes"][second]),
                DRAIN_TIMEOUT_S, "the node drained")
            assert v["removable"] and v["holds"]["replicas"] == 0
            time.sleep(1.0)
        assert load.failures == [], load.failures[:5]
        assert load.ok > 50
        assert any("node is draining" in e for e in st["events"]), st["events"][-8:]
        out = actors.call(keeper.undrain, second, timeout_s=ANSWER_TIMEOUT_S)
        assert out["state"] == "active"
        # Garbage is refused with what was expected, and changes nothing.
        for bad, what in ((("x" * 500,), "node id"), ((second, -1.0), "timeout"),
                          (("0" * 12,), "no node")):
            with pytest.raises(Exception, match=what):
                actors.call(keeper.drain, *bad, timeout_s=ANSWER_TIMEOUT_S)
        assert actors.call(keeper.leaving, timeout_s=ANSWER_TIMEOUT_S)["draining"] == []
    finally:
        try:
            actors.call(keeper.undrain, second, timeout_s=ANSWER_TIMEOUT_S)
            # The shared master hears it (its poll follows the keeper's reads) before the
            # keeper goes: it would otherwise keep the last answer.
            for _ in range(3):
                time.sleep(KEEPER_ROUND_S + DRAIN_POLL_S)
                ray.get(master.cluster_info.remote(), timeout=30)
        finally:
            ray.kill(keeper, no_restart=True)
            _remove(master, name)


def test_a_drain_of_a_node_holding_a_replica_chunks_and_instances_at_once(client, kuafu_net,
                                                                          tmp_path):
    """The issue's own case: one node holds a service replica, Pangu chunks and running batch
    instances when it is drained. It ends with none of them there, no failed call, every byte
    readable and the job's output exact."""
    import ray

    from base import actors
    from fuxi.shells.nodekeeper import find_keeper, start_keeper
    from pangu import client as PC
    from pangu import deploy as pangu_deploy
    from tests.integration.test_services_ray import Load, _ready, _remove, _spec, _wait

    master = client.master
    name = "svc-drain-all"
    head, second = kuafu_net.here, kuafu_net.other
    # Pangu of the shared cluster, two chunkservers a node (the head's two keep a second copy
    # of every chunk once the drained node's are gone).
    pangu_deploy.start("test", str(tmp_path / "pangu"), nodes=[head, second], per_node=2,
                       settings={**PANGU_SETTINGS, "allow_same_node": True}, heartbeat_s=0.5,
                       scrub_interval_s=0.5, capacity_bytes=256 * 1024 * 1024)
    keeper = None
    try:
        c = PC.Client("test")
        files = {f"/all/f{i}": os.urandom(6 * CS + i) for i in range(4)}
        c.mkdir("/all", parents=True)
        for path, data in files.items():
            with c.open(path, "wb", chunk_size=CS, replication=2) as f:
                f.write(data)
        assert sum(s["chunks"] for s in c.status()["servers"] if s["node"] == second) > 0
        keeper = start_keeper("test", "fuxi-test", None, None, None, False)
        ray.get(master.service_register.remote(_spec(name, replicas=2)), timeout=30)
        st = _wait(master, name, _ready(2))
        assert second in {r["node"] for r in st["replicas"]}, st["replicas"]
        spec = {"name": "drain-all", "speculation": {"enabled": False},
                "params": {"dir": str(tmp_path / "marks"), "bad_node": "", "sleep_s": 3.0},
                "tasks": {"t": {"fn": f"{FNS}:fails_on_node", "instances": 8,
                                "max_retries": 0, "output": str(tmp_path / "out")}}}
        with Load(name) as load:
            job_id = client.submit(spec)
            wait_for(lambda: glob.glob(str(tmp_path / "marks" / "run-*")) and any(
                n["node_id"] == second and n["holds"]["slots"] > 0 for n in ray.get(
                    master.cluster_info.remote(), timeout=ANSWER_TIMEOUT_S)["nodes"]),
                JOB_TIMEOUT_S, "the job's workers on the node to drain")
            wait_for(lambda: (lambda v: v if v["holds"]["chunks"] > 0 and
                                     v["holds"]["replicas"] > 0 else None)(
                actors.call(keeper.view, timeout_s=ANSWER_TIMEOUT_S)["nodes"][second]),
                JOIN_TIMEOUT_S, "the keeper to see the node's replica and chunks")
            out = actors.call(keeper.drain, second, 2.0, timeout_s=ANSWER_TIMEOUT_S)
            assert out["state"] == "draining"
            st = client.wait(job_id, timeout_s=JOB_TIMEOUT_S)
            assert st["state"] == "succeeded", st.get("report")  # a move is no failure
            _wait(master, name, lambda s: _ready(2)(s) and all(
                r["node"] != second for r in s["replicas"]), DRAIN_TIMEOUT_S)
            drained = wait_for(lambda: (lambda v: v if v["state"] == "drained" else None)(
                actors.call(keeper.view, timeout_s=ANSWER_TIMEOUT_S)["nodes"][second]),
                DRAIN_TIMEOUT_S, "the node drained (no replica, slot or chunk left)")
            time.sleep(1.0)
        assert drained["removable"] and drained["holds"] == {"replicas": 0, "slots": 0,
                                                             "chunks": 0}, drained
        assert load.failures == [], load.failures[:5]
        assert load.ok > 50
        t = pa.concat_tables([pq.read_table(p) for p in
                              sorted(glob.glob(str(tmp_path / "out" / "part-*.parquet")))])
        assert sorted(t.column("instance").to_pylist()) == sorted(list(range(8)) * 3)
        assert sum(s["chunks"] for s in c.status()["servers"]
                   if s["node"] == second and not s["dead"]) == 0
        for path, data in files.items():
            with c.open(path, "rb") as f:
                assert f.read() == data, path
        assert c.fsck("/")["healthy"]
    finally:
        try:
            if keeper is not None:
                from fuxi.shells.drains import DRAIN_POLL_S
                from fuxi.shells.nodekeeper import KEEPER_ROUND_S

                actors.call(keeper.undrain, second, timeout_s=ANSWER_TIMEOUT_S)
                for _ in range(3):  # the shared master hears it before the keeper goes
                    time.sleep(KEEPER_ROUND_S + DRAIN_POLL_S)
                    ray.get(master.cluster_info.remote(), timeout=30)
        finally:
            k = find_keeper("fuxi-test")
            if k is not None:
                ray.kill(k, no_restart=True)
            _remove(master, name)
            pangu_deploy.stop("test")

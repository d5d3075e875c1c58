"""The multi-level blacklist on the real two-node cluster: a job whose attempts fail on one
node only ends up excluded from it (job level: hard, no attempt starts there afterwards) and
succeeds; after three such jobs the node is excluded for every job (cluster level), shown in
the cluster's status and node list, and a job with nothing wrong with it runs elsewhere.

Its own FuxiMaster (namespace of its own): the cluster-level entry must not outlive the test
in the session's shared master, whose other tests need both nodes."""

from __future__ import annotations

import glob
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fuxi.core.blacklist import CLUSTER_FAILURE_JOBS_MIN

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

FNS = "tests.integration.taskfns"
ANSWER_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 180.0
KILL_SLACK_S = 2.0  # an attempt started before the blacklisting may report this much later


def marks(d: str) -> list[dict]:
    out = []
    for p in glob.glob(os.path.join(d, "run-*")):
        with open(p) as f:
            out.append({**json.load(f), "name": os.path.basename(p)})
    return out


def failing_job(tmp_path, name: str, bad: str, instances: int) -> dict:
    return {"name": name, "speculation": {"enabled": False}, "retry_backoff_s": 0.05,
            "params": {"dir": str(tmp_path / name / "marks"), "bad_node": bad, "sleep_s": 0.4},
            "tasks": {"t": {"fn": f"{FNS}:fails_on_node", "instances": instances,
                            "max_retries": 5, "output": str(tmp_path / name / "out")}}}


def test_a_node_failing_jobs_is_excluded_first_for_the_job_then_for_all(ray_cluster, tmp_path):
    import ray

    from fuxi.client import FuxiClient
    from fuxi.shells.master import FuxiMaster

    bad = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "second" in n["Resources"])
    master = FuxiMaster.options(namespace=f"fuxi-blacklist-{time.time_ns()}",
                                name="FuxiMaster").remote("blacklist", str(tmp_path / "data"))
    try:
        ray.get(master.supervise.remote(), timeout=ANSWER_TIMEOUT_S)
        client = FuxiClient(master)

        # Job level: fails on `bad` only; excluded from it for the job, and the job succeeds.
        st = client.wait(client.submit(failing_job(tmp_path, "first", bad, 20)),
                         timeout_s=JOB_TIMEOUT_S)
        assert st["state"] == "succeeded", st.get("report")
        entry = next((e for e in st["blacklisted_nodes"] if e["node"] == bad), None)
        assert entry is not None, st["blacklisted_nodes"]
        assert entry["level"] == "job" and entry["expires_in_s"] > 0, entry
        t = pa.concat_tables([pq.read_table(p) for p in
                              sorted(glob.glob(str(tmp_path / "first" / "out" / "part-*.parquet")))])
        assert sorted(set(t.column("instance").to_pylist())) == list(range(20))
        assert t.num_rows == 60 and bad not in set(t.column("node").to_pylist())
        print(f"first job: {st['tasks']['t']['attempts']} attempts for 20 instances, "
              f"{st['finished_at'] - st['started_at']:.1f}s, entry {entry}")  # for the record (-s)
        runs = marks(str(tmp_path / "first" / "marks"))
        late = [m for m in runs if m["node"] == bad and m["t"] > entry["since"] + KILL_SLACK_S]
        assert not late, f"attempts started on the blacklisted node afterwards: {late}"

        # Cluster level: more jobs fail there; CLUSTER_FAILURE_JOBS_MIN distinct jobs in all.
        for k in range(1, CLUSTER_FAILURE_JOBS_MIN):
            st = client.wait(client.submit(failing_job(tmp_path, f"more{k}", bad, 8)),
                             timeout_s=JOB_TIMEOUT_S)
            assert st["state"] == "succeeded", st.get("report")
        info = ray.get(master.cluster_info.remote(), timeout=ANSWER_TIMEOUT_S)
        assert [e["node"] for e in info["blacklist"]] == [bad], info["blacklist"]
        assert info["blacklist"][0]["level"] == "cluster"
        assert info["blacklist"][0]["expires_in_s"] > 0
        row = next(n for n in info["nodes"] if n["node_id"] == bad)
        assert row["blacklisted"]["level"] == "cluster"

        # A job with nothing wrong with it: never on the excluded node, and told so.
        healthy = {"name": "healthy", "speculation": {"enabled": False},
                   "params": {"dir": str(tmp_path / "healthy"), "sleep_s": 0.2},
                   "tasks": {"t": {"fn": f"{FNS}:sleepy", "instances": 6}}}
        job_id = client.submit(healthy)
        running = client.status(job_id)
        st = client.wait(job_id, timeout_s=JOB_TIMEOUT_S)
        assert st["state"] == "succeeded", st.get("report")
        assert {m["node"] for m in marks(str(tmp_path / "healthy"))} - {bad}
        assert bad not in {m["node"] for m in marks(str(tmp_path / "healthy"))}
        if running["state"] in ("pending", "running"):  # the master adds the cluster level
            assert any(e["node"] == bad and e["level"] == "cluster"
                       for e in running["blacklisted_nodes"]), running
    finally:
        ray.get(master.shutdown_jobs.remote(), timeout=ANSWER_TIMEOUT_S)
        ray.kill(master)

"""What the job tests on real Ray share: reading a job's Parquet output, counting the attempts
a task function really ran (one mark file per attempt, see ``taskfns``), waiting on a job's
status with a deadline, and finding or killing a job's JobMaster."""

from __future__ import annotations

import glob
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq

FNS = "tests.integration.taskfns"
STATUS_WAIT_S = 180.0  # a job reaching the state a test waits for
STATUS_POLL_S = 0.1
FINAL = ("succeeded", "failed", "cancelled")
MARKS_WAIT_S = 90.0  # a job's attempts leaving the mark files a test waits for
WAIT_POLL_S = 0.05


def read_output(path) -> pa.Table:
    """Every part file of an output directory, in name order, as one table."""
    parts = sorted(glob.glob(f"{path}/part-*.parquet"))
    assert parts, f"no part-*.parquet under {path}"
    return pa.concat_tables([pq.read_table(p) for p in parts])


def ran(marks, task: str) -> int:
    """Attempts of ``task`` that really ran (whatever their number), counted on disk."""
    return len(glob.glob(os.path.join(str(marks), f"ran-{task}-*")))


def wait_status(client, job_id: str, ready, what: str, timeout_s: float = STATUS_WAIT_S) -> dict:
    """Poll the job's status until ``ready(status)``; the job ending first is a failure."""
    deadline = time.time() + timeout_s
    while True:
        st = client.status(job_id)
        assert st["state"] not in FINAL, f"the job ended before {what}: {st.get('report')}"
        if ready(st):
            return st
        assert time.time() < deadline, f"never saw {what} within {timeout_s}s: {st}"
        time.sleep(STATUS_POLL_S)


def jobmaster(job_id: str):
    """The job's JobMaster, in whichever namespace it lives (the Ray job's, today)."""
    import ray

    name = f"jobmaster-{job_id}"
    found = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == name]
    if len(found) != 1:  # a ValueError, as ray.get_actor raises for a name it does not know
        raise ValueError(f"expected one actor named {name}, found {found}")
    return ray.get_actor(name, namespace=found[0]["namespace"])


def kill_jobmaster(job_id: str) -> None:
    """Kill the job's JobMaster with no restart by Ray: only FuxiMaster may bring it back."""
    import ray

    ray.kill(jobmaster(job_id), no_restart=True)


def wait_for(pred, timeout_s: float, what: str):
    """Poll ``pred()`` until it returns something true (returned), at most ``timeout_s``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(WAIT_POLL_S)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def wait_marks(pattern: str, n: int, timeout_s: float = MARKS_WAIT_S) -> None:
    """At least ``n`` mark files matching ``pattern`` (attempts that started, see taskfns)."""
    wait_for(lambda: len(glob.glob(pattern)) >= n, timeout_s, f"{n} of {pattern}")


def three_stage(name: str, marks, out) -> dict:
    """gen (6 instances, 2 s each) -> sum by key (hash shuffle) -> count (one-to-one), the
    job the failover tests kill masters under: its first stage runs long enough to be
    caught running."""
    return {"name": name, "params": {"dir": str(marks), "sleep_s": 2.0, "n": 400},
            "speculation": {"enabled": False},
            "tasks": {
                "gen": {"fn": f"{FNS}:slow_gen", "instances": 6},
                "sum": {"fn": f"{FNS}:sum_by_key", "instances": 3, "depends_on": ["gen"],
                        "partition_by": ["key"]},
                "count": {"fn": f"{FNS}:count_rows", "instances": 3, "depends_on": ["sum"],
                          "output": str(out)},
            }}

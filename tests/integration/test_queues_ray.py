"""Jobs beyond the cluster's (or a queue's) limit wait in their queue instead of being refused,
start in priority order as room comes, can be cancelled while they wait, and a wait on a
queued job blocks until it really ends. On the shared two-node Ray cluster."""

from __future__ import annotations


import pytest

from fuxi.errors import BadInput

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

FNS = "tests.integration.taskfns"


def sleepy(name: str, tmp_path, sleep_s: float, priority: int = 50, queue: str | None = None) -> dict:
    spec = {"name": name, "priority": priority, "speculation": {"enabled": False},
            "params": {"dir": str(tmp_path / name), "sleep_s": sleep_s},
            "tasks": {"t": {"fn": f"{FNS}:sleepy", "instances": 1}}}
    if queue:
        spec["queue"] = queue
    return spec


def test_jobs_past_the_limit_wait_and_start_by_priority(limits, tmp_path):
    client = limits
    client.configure_queues(None, 1)
    first = client.submit(sleepy("first", tmp_path, 3.0))
    low = client.submit(sleepy("low", tmp_path, 0.1, priority=10))
    high = client.submit(sleepy("high", tmp_path, 0.1, priority=90))
    doomed = client.submit(sleepy("doomed", tmp_path, 0.1, priority=50))
    st = {j: client.status(j) for j in (low, high, doomed)}
    assert all(s["state"] == "queued" for s in st.values()), st
    assert (st[high]["position"], st[doomed]["position"], st[low]["position"]) == (1, 2, 3)
    listed = {s["job_id"]: s for s in client.list()}
    assert listed[high]["position"] == 1 and listed[high]["queue"] == "default"
    # A wait shorter than the queue's turn returns the job still queued, not an error.
    assert client.wait(low, timeout_s=0.5)["state"] == "queued"
    assert client.cancel(doomed)["state"] == "cancelled"
    assert client.status(doomed)["state"] == "cancelled"
    ends = {j: client.wait(j, timeout_s=120) for j in (first, high, low)}
    assert all(s["state"] == "succeeded" for s in ends.values()), ends
    # One at a time, in priority order: high started after first ended, low after high.
    assert ends[high]["started_at"] >= ends[first]["finished_at"] - 0.05
    assert ends[low]["started_at"] >= ends[high]["finished_at"] - 0.05
    assert client.wait(doomed, timeout_s=1)["state"] == "cancelled"  # never ran


def test_a_queue_with_its_own_limit_holds_its_jobs_while_others_run(limits, tmp_path):
    client = limits
    client.configure_queues({"small": {"jobs_running_max": 1}})
    a = client.submit(sleepy("small-a", tmp_path, 2.0, queue="small"))
    b = client.submit(sleepy("small-b", tmp_path, 0.1, queue="small"))
    other = client.submit(sleepy("other", tmp_path, 0.1))
    assert client.status(b)["state"] == "queued"
    assert client.wait(other, timeout_s=60)["state"] == "succeeded"  # default had room
    view = client.queues()["queues"]
    assert view["small"]["jobs_running_max"] == 1
    ends = {j: client.wait(j, timeout_s=60) for j in (a, b)}
    assert all(s["state"] == "succeeded" for s in ends.values()), ends
    assert ends[b]["started_at"] >= ends[a]["finished_at"] - 0.05


def test_bad_queue_names_and_limits_are_refused_with_the_reason(limits, tmp_path):
    client = limits
    with pytest.raises(BadInput, match="no queue named 'nope'"):
        client.submit(sleepy("x", tmp_path, 0.1, queue="nope"))
    for queues, limit, msg in [
        ({"Bad Name": {}}, None, "queue name: got 'Bad Name'"),
        ({"q": {"jobs_running_max": 0}}, None, "jobs_running_max got 0"),
        ({"q": {"jobs_running_max": True}}, None, "jobs_running_max got True"),
        ({"q": {"cpu": 3}}, None, "expected a mapping with at most the keys jobs_running_max, min, max, weight"),
        ([1, 2], None, "queues: got list"),
        (None, 0, "jobs_running_max: got 0"),
        (None, 10**6, "jobs_running_max: got 1000000"),
    ]:
        with pytest.raises(BadInput, match=msg):
            client.configure_queues(queues, limit)
    assert "q" not in client.queues()["queues"]  # nothing half-applied

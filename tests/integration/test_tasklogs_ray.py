"""Captured output of attempts (issue 18 part 2) on the shared 2-node cluster: print(),
stderr and logging read while the task still runs, per attempt, bounded; through FuxiMaster
and the FuxiAgent of the node that ran the attempt."""

from __future__ import annotations

import os
import time

import pytest

from fuxi.core import tasklog as tl

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

FNS = "tests.integration.logfns"
SEEN_TIMEOUT_S = 60.0


def read_until(client, job_id, want, cursors, timeout_s=SEEN_TIMEOUT_S, **sel):
    """Poll the captured stream (with cursors) until ``want(lines)``; every line read."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = client.output(job_id, cursor=tl.format_cursor(cursors), **sel)
        for a in r["attempts"]:
            cursors[a["key"]] = a["cursor"]
            seen += [(a["task"], a["instance"], a["attempt"], s, t) for s, t in a["lines"]]
        if want(seen):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"not seen in {timeout_s}s; read: {seen[-20:]}")


def mark(d, instance, attempt):
    open(os.path.join(d, f"go-{instance}-{attempt}"), "w").close()


def test_print_stderr_logging_live_and_per_attempt(client, tmp_path):
    d = str(tmp_path)
    spec = {"name": "chatty", "params": {"dir": d, "fail_first": True},
            "retry_backoff_s": 0.01,
            "tasks": {"t": {"fn": f"{FNS}:chatty", "instances": 1, "max_retries": 2}}}
    job_id = client.submit(spec)
    try:
        cursors: dict = {}
        # Attempt 0 waits for the mark, which we write only after its lines were read:
        # they can only have come from the running task.
        seen = read_until(client, job_id, lambda s: any(
            x[3] == "logging" and "logged attempt 0" in x[4] for x in s), cursors)
        assert client.status(job_id)["state"] == "running"
        a0 = [x for x in seen if x[2] == 0]
        assert ("t", 0, 0, "stdout", "hello from t[0] attempt 0") in a0
        assert ("t", 0, 0, "stderr", "to stderr attempt 0") in a0
        assert any(x[3] == "logging" and "WARNING user.task: logged attempt 0" in x[4] for x in a0)
        mark(d, 0, 0)
        seen += read_until(client, job_id, lambda s: any(
            x[2] == 1 and "hello from" in x[4] for x in s), cursors)
        mark(d, 0, 1)
        assert client.wait(job_id, timeout_s=120)["state"] == "succeeded"
        # Everything of each attempt, from the start, after the job ended (the workers gone
        # or idle): read through the agents again with no cursor.
        r = client.output(job_id, task="t", attempt=0)
        assert [a["attempt"] for a in r["attempts"]] == [0]
        lines0 = [t for _, t in r["attempts"][0]["lines"]]
        assert "released attempt 0" in lines0
        assert any("first attempt fails on purpose" in t for t in lines0)  # its traceback
        assert any("attempt failed" in t for t in lines0)
        assert not any("attempt 1" in t for t in lines0)  # nothing of the retry in it
        r1 = client.output(job_id, task="t", instance=0, attempt=1)["attempts"][0]
        texts1 = [t for _, t in r1["lines"]]
        assert "hello from t[0] attempt 1" in texts1 and "released attempt 1" in texts1
        assert any("attempt succeeded" in t for t in texts1)
        assert not any("attempt 0" in t for t in texts1)
        # ctx.log is in the stream too, and still in `fuxi job logs`' old lines
        assert ("ctx.log" in {s for s, _ in r1["lines"]})
        assert any("ctx.log attempt 1" in r["line"] for r in client.logs(job_id, "t", 0))
        # nothing read twice through the cursors while following
        live = [x for x in seen if x[3] == "stdout"]
        assert len(live) == len(set(live))
    finally:
        for i in (0, 1):
            mark(d, 0, i)


def test_a_flood_stays_within_the_bound(client, tmp_path):
    d = str(tmp_path)
    n = (tl.ATTEMPT_LOG_BYTES_MAX // 200) * 2  # twice the bound in ~210-byte lines
    mark(d, 0, 0)
    spec = {"name": "flood", "params": {"dir": d, "flood_lines": n},
            "tasks": {"t": {"fn": f"{FNS}:chatty", "instances": 1}}}
    job_id = client.submit(spec)
    assert client.wait(job_id, timeout_s=240)["state"] == "succeeded"
    r = client.output(job_id, attempt=0)
    a = r["attempts"][0]
    assert a["dropped"] > 0 and a["lines"][0][0] == "fuxi" and "dropped" in a["lines"][0][1]
    assert a["end"] - a["dropped"] <= tl.ATTEMPT_LOG_BYTES_MAX  # what is kept is bounded
    assert r["more"]  # a reply is bounded too: the rest comes with the cursor
    assert sum(len(t) for _, t in a["lines"]) <= tl.LOG_READ_BYTES_MAX
    tail = client.output(job_id, attempt=0, cursor=f"t/0/0@{a['end'] - 2000}")["attempts"][0]
    assert any("released attempt 0" in t for _, t in tail["lines"])  # the newest is kept


def test_bad_queries_are_refused(client, tmp_path):
    from base.errors import BadInput

    mark(str(tmp_path), 0, 0)
    job_id = client.submit({"name": "q", "params": {"dir": str(tmp_path)},
                            "tasks": {"t": {"fn": f"{FNS}:chatty", "instances": 1}}})
    client.wait(job_id, timeout_s=120)
    for kw, why in [({"attempt": -1}, "attempt -1"), ({"cursor": "garbage"}, "<key>@<offset>"),
                    ({"task": "../t"}, "not valid")]:
        with pytest.raises(BadInput, match=why):
            client.output(job_id, **kw)

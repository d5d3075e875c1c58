"""FuxiMaster keeps its event loop while its store does not answer (issue 14, defect 11).

FuxiMaster is an async actor: a blocking store call on its loop (a Nuwa group electing a
leader, a slow disk) would stop every other caller -- JobMasters' heartbeats, ``status``,
``cluster_info``. Its store calls run on a thread pool of their own, awaited.

The slow dependency here is deterministic and needs no clock: the file that backs one job's
record (a ``FileStore`` key) is a named pipe. Opening it for reading blocks until a writer
opens it, and reading it blocks until the writer closes it, so the test itself decides how
long FuxiMaster's ``status`` of that job waits -- and it can *see* that the read is under way
(a non-blocking open for writing succeeds only once a reader is waiting). While it is held,
the master must answer ``cluster_info``, a JobMaster's ``sync``, the ``status`` of a
running job and ``service_list`` -- each within a generous bound, and each *before* the
slow call returned: a blocked loop could only answer them after it.
"""

from __future__ import annotations

import errno
import json
import os
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

ANSWER_TIMEOUT_S = 60.0  # generous: the point is that it answers at all while the read waits
READER_WAIT_S = 60.0     # for the master's read of the pipe to begin


def _open_when_read(path: str) -> int:
    """A write end of the pipe at ``path``, opened once a reader waits on it (ENXIO until
    then): proof that the master's store call is under way."""
    deadline = time.monotonic() + READER_WAIT_S
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_master_answers_while_a_store_call_waits(ray_cluster, tmp_path):
    import ray

    from fuxi.client import FuxiClient
    from fuxi.shells.master import FuxiMaster

    ns = f"fuxi-loop-{time.time_ns()}"
    master = FuxiMaster.options(namespace=ns, name="FuxiMaster").remote(
        "loop", str(tmp_path / "data"))
    fifo_fd = None
    try:
        ray.get(master.supervise.remote(), timeout=ANSWER_TIMEOUT_S)
        client = FuxiClient(master)
        running = client.submit({
            "name": "keeps-running", "params": {"dir": str(tmp_path / "marks"), "sleep_s": 120},
            "tasks": {"t": {"fn": "tests.integration.taskfns:sleepy", "instances": 1}}})

        # A job record the master has not read yet, whose file is a pipe nobody writes.
        held = "held-20260101-000000-0000"
        path = tmp_path / "data" / "state" / "jobs" / held / "status.json"
        path.parent.mkdir(parents=True)
        os.mkfifo(path)
        slow = master.status.remote(held)
        fifo_fd = _open_when_read(str(path))  # the master now waits in read(): held open

        info = ray.get(master.cluster_info.remote(), timeout=ANSWER_TIMEOUT_S)
        assert info["cluster"] == "loop" and info["nodes"], info
        reply = ray.get(master.sync.remote("no-such-job", 50, {}, [], []),
                        timeout=ANSWER_TIMEOUT_S)
        assert (reply["grants"], reply["targets"]) == ([], {})  # (and the leader's term)
        st = ray.get(master.status.remote(running), timeout=ANSWER_TIMEOUT_S)
        assert st["job_id"] == running and st["state"] not in ("failed", "cancelled"), st
        assert ray.get(master.service_list.remote(), timeout=ANSWER_TIMEOUT_S) == []
        ready, _ = ray.wait([slow], timeout=0)
        assert not ready, "the slow store call returned before the test released it"

        # Released: the slow call ends with what the record says.
        os.set_blocking(fifo_fd, True)
        os.write(fifo_fd, json.dumps({"job_id": held, "state": "succeeded"}).encode())
        os.close(fifo_fd)
        fifo_fd = None
        assert ray.get(slow, timeout=ANSWER_TIMEOUT_S)["state"] == "succeeded"
        client.cancel(running)
    finally:
        if fifo_fd is not None:
            os.close(fifo_fd)  # the master's read ends (empty): never leave it hanging
        ray.get(master.shutdown_jobs.remote(), timeout=ANSWER_TIMEOUT_S)
        ray.kill(master)

"""Fault (issue 14): the active Pangu master paused (SIGSTOP) past its Nuwa session, then
resumed. Meanwhile the standby takes over and a writer goes on; after the resume the old
master acts on nothing (its journal writes are fenced, its orders to chunkservers carry an
old epoch), it steps down, and every acknowledged byte is there."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from pangu import client as PC
from pangu import deploy
from pangu import errors as PE
from tests.integration.jobhelpers import wait_for as poll_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

CLUSTER = "ppause"
CS = 64 * 1024
SESSION_TTL_S = 2.0
PAUSE_S = 4 * SESSION_TTL_S  # well past the session, so the standby takes over meanwhile
WAIT_S = 90.0


def wait_for(pred, timeout_s: float, what: str):
    return poll_for(lambda: pred() or time.sleep(0.2), timeout_s, what)


def _pid(handle) -> int:
    import ray

    return ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=30)


def test_paused_active_master_resumes_fenced(ray_cluster, tmp_path):
    import ray

    from nuwa.group import start_group

    g = start_group(1, str(tmp_path / "nuwa"), namespace=f"nuwa-ppause-{time.time_ns()}")
    pid = None
    try:
        here = ray.get_runtime_context().get_node_id()
        deploy.start(CLUSTER, str(tmp_path / "data"), masters=2,
                     nuwa=[list(a) for a in g.client_addresses()], nodes=[here], per_node=2,
                     settings={"allow_same_node": True, "rebalance": False, "maintain_s": 0.5,
                               "dead_after_s": 3.0, "session_ttl_s": SESSION_TTL_S},
                     heartbeat_s=0.5, capacity_bytes=64 << 20)
        c = PC.Client(CLUSTER)
        c.mkdir("/p", parents=True)
        piece = lambda i: bytes([i % 251]) * 5000  # noqa: E731
        acked, errors = [], []

        def write():
            try:
                with c.open("/p/live", "wb", replication=2, chunk_size=CS) as f:
                    for i in range(60):
                        f.write(piece(i))
                        f.flush()  # acknowledged
                        acked.append(i)
                        time.sleep(0.05)
            except Exception as e:  # noqa: BLE001 - asserted below
                errors.append(e)

        t = threading.Thread(target=write, daemon=True)
        t.start()
        wait_for(lambda: len(acked) >= 10, WAIT_S, "10 acknowledged writes")
        st = c.status()
        old_name, old_epoch = st["master"], st["epoch"]
        old = ray.get_actor(old_name, namespace=f"fuxi-{CLUSTER}")
        pid = _pid(old)
        os.kill(pid, signal.SIGSTOP)
        try:
            other = next(m for m in ("pangu-master-1", "pangu-master-2") if m != old_name)
            new = ray.get_actor(other, namespace=f"fuxi-{CLUSTER}")
            wait_for(lambda: ray.get(new.status.remote(any_role=True), timeout=10)["active"],
                     WAIT_S, "the standby to take over")
            time.sleep(max(0.0, PAUSE_S - SESSION_TTL_S))
        finally:
            os.kill(pid, signal.SIGCONT)
        # Resumed: it must learn it lost, and refuse (not act) meanwhile.
        wait_for(lambda: not ray.get(old.status.remote(any_role=True), timeout=10)["active"],
                 WAIT_S, "the resumed master to step down")
        with pytest.raises((PE.NotActive, PE.Unavailable)):
            PC._get(old.mkdir.remote("/p/by-the-old-master"), 30)
        t.join(timeout=WAIT_S * 2)
        assert not t.is_alive(), "the writer hung"
        assert not errors, errors
        assert len(acked) == 60
        st = c.status()
        assert st["master"] == other and st["epoch"] > old_epoch
        assert not c.exists("/p/by-the-old-master")
        with c.open("/p/live", "rb") as f:
            assert f.read() == b"".join(piece(i) for i in acked)
        # An order in the old term is refused by a chunkserver that heard the new one.
        info = c.call("locate", "/p/live")
        cs = ray.get_actor(info["chunks"][0]["replicas"][0]["name"],
                           namespace=f"fuxi-{CLUSTER}")
        with pytest.raises(PE.NotActive, match="epoch"):
            PC._get(cs.delete.remote([info["chunks"][0]["id"]], epoch=old_epoch), 30)
        wait_for(lambda: c.fsck("/p")["healthy"], WAIT_S, "healthy")
        with c.open("/p/live", "rb") as f:
            assert f.read() == b"".join(piece(i) for i in acked)
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        try:
            deploy.stop(CLUSTER)
        finally:
            g.stop()

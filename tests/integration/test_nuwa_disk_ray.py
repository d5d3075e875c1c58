"""A Nuwa leader whose disk fails, on real Ray (issue 14, disk faults): the fault is armed
inside the leader's own actor process (``base.faults``, through Ray's ``__ray_call__``), its
WAL fsync fails once, it stops leading, a new leader serves every acknowledged write, and
supervision restarts the stopped replica, which recovers from its disk and catches up."""

from __future__ import annotations

import time

import pytest

from nuwa import errors as E
from nuwa.client import connect

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


@pytest.fixture
def group(ray_cluster, tmp_path):
    from nuwa.group import start_group

    g = start_group(3, str(tmp_path), namespace=f"nuwa-disk-{time.time_ns()}")
    try:
        yield g
    finally:
        g.stop()


def _statuses(g) -> dict:
    import ray

    out = {}
    for rid, h in g.handles.items():
        try:
            out[rid] = ray.get(h.status.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - being restarted
            pass
    return out


def _leader(g, timeout_s=20.0, not_=None) -> int:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        leaders = [rid for rid, st in _statuses(g).items()
                   if st["role"] == "LEADER" and rid != not_]
        if len(leaders) == 1:
            return leaders[0]
        time.sleep(0.1)
    raise AssertionError("no single leader")


def _arm(point: str, err: str, times: int):
    def arm(_actor):
        from base import faults

        faults.arm(point, err, times=times)
        return True
    return arm


def test_a_leader_whose_fsync_fails_is_replaced_and_then_restarted_by_supervision(group):
    import ray

    victim = _leader(group)
    c = connect(group.client_addresses(), timeout_s=5)
    c.create("/disk/", parents=True)
    acked = []
    for i in range(20):
        c.create(f"/disk/n{i}", b"x")
        acked.append(i)
    assert ray.get(group.handles[victim].__ray_call__.remote(_arm("nuwa.io.wal.fsync", "EIO", 1)),
                   timeout=30)
    for i in range(20, 40):
        try:
            c.create(f"/disk/n{i}", b"x")
            acked.append(i)
        except (E.OutcomeUnknown, E.Unavailable, E.Timeout, E.NotLeader):
            pass
        except E.NodeExists:
            acked.append(i)
    st = ray.get(group.handles[victim].status.remote(), timeout=10)
    assert st["stopped"] and st["role"] != "LEADER", st
    new = _leader(group, not_=victim)
    assert new != victim
    names = set(c.list("/disk/"))
    assert all(f"n{i}" in names for i in acked), "an acknowledged write was lost"
    # Supervision finds the stopped replica and restarts it; it recovers from its disk.
    deadline = time.time() + 90
    back = None
    while time.time() < deadline:
        group.supervise_once()
        back = _statuses(group).get(victim)
        if back and not back["stopped"]:
            break
        time.sleep(1.0)
    assert back is not None and not back["stopped"], f"not restarted: {back}"
    assert back["voter"] is True  # its disk survived: a full member again
    c.create("/disk/after", b"y")
    deadline = time.time() + 30
    leader_applied = _statuses(group)[_leader(group)]["applied"]
    while (time.time() < deadline
           and _statuses(group).get(victim, {}).get("applied", 0) < leader_applied):
        time.sleep(0.2)
    assert _statuses(group)[victim]["applied"] >= leader_applied
    c.close()

"""Pangu on failing disks, on real Ray (issue 14, defect 4 and disk faults). Each fault is
armed inside one actor's own process (``base.faults`` through Ray's ``__ray_call__``):

* the master's journal fsync fails during a delete: the client gets ``DiskFailed``, the file
  stays, its chunks are never collected, and it reads back whole;
* a chunkserver's disk is full: writes go on without it and read back; it takes writes again
  once space returns;
* a chunkserver's fdatasync fails: the write is still acknowledged only by replicas that
  have it, the server takes no more writes, and the master drains it.
"""

from __future__ import annotations

import time

import pytest

from pangu import client as PC
from pangu import errors as PE
from tests.integration.test_pangu_ray import (CLUSTER, pangu_nodes, pg, read_file,  # noqa: F401
                                              wait_for, write_file)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def _arm(point: str, err: str, times: int | None = None):
    def arm(_actor):
        from base import faults

        faults.arm(point, err, times=times)
        return True
    return arm


def _disarm(_actor):
    from base import faults

    faults.disarm()
    return True


def _actor(name: str):
    import ray

    return ray.get_actor(name, namespace=f"fuxi-{CLUSTER}")


def test_a_delete_whose_journal_fsync_fails_keeps_the_file_and_its_chunks(pg):
    import ray

    c, _ = pg
    data = bytes(range(256)) * 3000  # three chunks
    write_file(c, "/disk/keep", data)
    master = _actor(PC.master_name(1))
    assert ray.get(master.__ray_call__.remote(_arm("pangu.io.journal.fsync", "EIO", 1)), timeout=30)
    with pytest.raises(PE.DiskFailed):
        c.rm("/disk/keep")
    time.sleep(2.0)  # several heartbeats: none may order the chunks deleted
    assert c.exists("/disk/keep") and read_file(c, "/disk/keep") == data
    c.rm("/disk/keep")  # the disk works again: the delete goes through
    assert not c.exists("/disk/keep")


def test_a_full_chunkserver_is_written_around_and_takes_writes_again(pg):
    import ray

    c, _ = pg
    servers = c.status()["servers"]
    full = next(s for s in servers if not s["draining"])["name"]
    h = _actor(full)
    assert ray.get(h.__ray_call__.remote(_arm("pangu.chunk.write", "ENOSPC")), timeout=30)
    try:
        data = b"f" * (3 * 256 * 1024 + 5)
        write_file(c, "/disk/around", data)
        assert read_file(c, "/disk/around") == data
    finally:
        ray.get(h.__ray_call__.remote(_disarm), timeout=30)
    info = ray.get(h.info.remote(), timeout=30)
    assert info["id"]  # still serving
    write_file(c, "/disk/again", b"a" * 1000)
    assert read_file(c, "/disk/again") == b"a" * 1000
    c.rm("/disk", recursive=True)


def test_a_chunkserver_whose_fsync_fails_is_drained_and_nothing_acknowledged_is_lost(pg):
    import ray

    c, _ = pg
    servers = c.status()["servers"]
    victim = next(s for s in servers if not s["draining"])
    h = _actor(victim["name"])
    assert ray.get(h.__ray_call__.remote(_arm("pangu.chunk.fsync", "EIO")), timeout=30)
    try:
        acked = {}
        for i in range(4):
            body = bytes([i]) * (256 * 1024 + 100 * i)
            write_file(c, f"/eio/f{i}", body)
            acked[i] = body
        for i, body in acked.items():
            assert read_file(c, f"/eio/f{i}") == body
        wait_for(lambda: next(s for s in c.status()["servers"]
                              if s["id"] == victim["id"])["draining"], 30,
                 "the master drains the server whose disk failed")
    finally:
        ray.get(h.__ray_call__.remote(_disarm), timeout=30)
    c.rm("/eio", recursive=True)

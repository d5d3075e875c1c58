"""A deposed FuxiMaster's writes against a real Nuwa (issue 16 part 3): two leaders' stores
fenced on ``/fuxi/leader`` -- the older one believes it still leads and writes, creates and
deletes; every one is refused (``StaleTerm``) and nothing it sent is applied, while the newer
leader's writes go through. A real single-replica Nuwa server in this process (no Ray)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from fuxi.errors import StaleTerm
from fuxi.io.store import NuwaStore
from fuxi.shells.leadership import LEADER_NODE
from nuwa.client import connect as nuwa_connect
from tests.adversarial.nuwa_local import Node

START_TIMEOUT_S = 30.0


@pytest.fixture
def nuwa(tmp_path):
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, name="nuwa-server", daemon=True)
    t.start()
    node = asyncio.run_coroutine_threadsafe(Node(tmp_path).start(), loop).result(START_TIMEOUT_S)
    try:
        with nuwa_connect([("127.0.0.1", node.port)], creator="root",
                          token=node.admin_token()) as client:
            yield client
    finally:
        asyncio.run_coroutine_threadsafe(node.stop(), loop).result(START_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        t.join(START_TIMEOUT_S)


def _claim(client, who: bytes) -> int:
    """What a winner of the election does: set the leader node; its new version is the term."""
    from nuwa.errors import NodeExists, NoNode

    try:
        return int(client.set(LEADER_NODE, who)["version"])
    except NoNode:
        try:
            client.create(LEADER_NODE, who, parents=True)
        except NodeExists:
            pass
        return int(client.set(LEADER_NODE, who)["version"])


def test_a_deposed_leader_writes_nothing_and_its_successor_everything(nuwa):
    old, new = NuwaStore(nuwa), NuwaStore(nuwa)
    old.fence = (LEADER_NODE, _claim(nuwa, b"FuxiMaster"))
    old.put("/jobs/j1/status", {"state": "running"})  # it leads: its writes go through
    old.put("/jobs/j2/status", {"state": "running"})
    new.fence = (LEADER_NODE, _claim(nuwa, b"FuxiMaster-2"))  # a take-over: a newer term
    assert new.fence[1] > old.fence[1]
    new.put("/jobs/j1/status", {"state": "succeeded"})

    with pytest.raises(StaleTerm, match="a newer leader has been elected"):
        old.put("/jobs/j1/status", {"state": "failed"})  # an overwrite
    with pytest.raises(StaleTerm):
        old.put("/jobs/j3/status", {"state": "queued"})  # a create (parents and all)
    with pytest.raises(StaleTerm):
        old.delete("/jobs/j2/status")
    with pytest.raises(StaleTerm):
        old.put("/config/queues", {"queues": {"evil": {}}})  # the quota configuration

    assert new.get("/jobs/j1/status") == {"state": "succeeded"}
    assert new.get("/jobs/j2/status") == {"state": "running"}
    assert new.get("/jobs/j3/status") is None and new.get("/config/queues") is None
    # Negative control: the successor's own create and delete are applied.
    new.put("/jobs/j3/status", {"state": "queued"})
    assert new.delete("/jobs/j2/status") is True
    assert new.get("/jobs/j3/status") == {"state": "queued"}
    assert new.get("/jobs/j2/status") is None


def test_the_successor_is_deposed_in_turn(nuwa):
    """Terms only grow: the second leader, once a third has claimed, is refused the same way;
    reads stay open to all (they change nothing)."""
    a, b, c = NuwaStore(nuwa), NuwaStore(nuwa), NuwaStore(nuwa)
    a.fence = (LEADER_NODE, _claim(nuwa, b"a"))
    b.fence = (LEADER_NODE, _claim(nuwa, b"b"))
    c.fence = (LEADER_NODE, _claim(nuwa, b"c"))
    assert a.fence[1] < b.fence[1] < c.fence[1]
    for deposed in (a, b):
        with pytest.raises(StaleTerm):
            deposed.put("/jobs/x/status", {"by": "deposed"})
    c.put("/jobs/x/status", {"by": "c"})
    assert a.get("/jobs/x/status") == {"by": "c"}
    assert a.list("/jobs/") == ["/jobs/x/status"]

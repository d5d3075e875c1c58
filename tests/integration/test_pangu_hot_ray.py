"""A hot chunkserver on real Ray (issue 20 part 2): Pangu with one chunkserver on each of
three simulated nodes (none on the driver's node, so every read is a call to a chunkserver,
not a short-circuit read of local files). A crowd of readers hammers a file whose only
replica is on one server (16 threads in 4 reader actors), so its reads pile up (its queue, ``pangu.core.hotservers``); the
master flags it (a ``server_hot`` event, the ``pangu_hot_chunkservers`` gauge, ``hot`` in the
servers' status), new files (replication 2) are placed on the other two while it is hot, and
once the readers stop the flag clears and new files use it again.

Negative control: before the crowd, the same writes put replicas on that server."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pangu import client as PC
from pangu import deploy

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

CLUSTER = "phot"
CS = 1024 * 1024  # 1 MiB chunks
READERS = 16  # threads reading the hot server's file without pause ...
READER_ACTORS = 4  # ... in this many processes on the head node (no chunkserver there)
FILES = 8  # replication-2 files per round: each misses a given server with odds 1/3
HOT_TIMEOUT_S = 60.0
CLEAR_TIMEOUT_S = 60.0
SETTINGS = {"dead_after_s": 10.0, "maintain_s": 0.5, "seed": 11,
            "rebalance_threshold": 0.99}  # no rebalancing moves replicas during the test


def _node_id(resource: str) -> str:
    import ray

    return next(n["NodeID"] for n in ray.nodes()
                if n["Alive"] and resource in n.get("Resources", {}))


@pytest.fixture(scope="module")
def pg(ray_cluster, tmp_path_factory):
    added = []
    try:
        for k in range(2):
            added.append(ray_cluster.add_node(num_cpus=0, resources={f"phot{k}": 1},
                                              object_store_memory=200 * 1024 * 1024))
        ray_cluster.wait_for_nodes(timeout=60)
        nodes = [_node_id("second"), _node_id("phot0"), _node_id("phot1")]
        deploy.start(CLUSTER, str(tmp_path_factory.mktemp("pangu-hot")), nodes=nodes,
                     settings=SETTINGS, heartbeat_s=0.5, capacity_bytes=1 << 30)
        try:
            yield PC.Client(CLUSTER)
        finally:
            deploy.stop(CLUSTER)
    finally:
        for n in added:
            try:
                ray_cluster.remove_node(n, allow_graceful=False)
            except Exception:  # noqa: BLE001 - already gone
                pass


def _write(c, path: str, data: bytes, replication: int, chunk_size: int = CS) -> set:
    with c.open(path, "wb", chunk_size=chunk_size, replication=replication) as f:
        f.write(data)
    info = c.call("locate", path)
    return {r["id"] for ch in info["chunks"] for r in ch["replicas"]}


def _servers(c) -> dict:
    return {s["id"]: s for s in c.status()["servers"]}


def _wait(c, what: str, timeout_s: float, ok) -> dict:
    deadline = time.monotonic() + timeout_s
    sv = {}
    while time.monotonic() < deadline:
        sv = _servers(c)
        if ok(sv):
            return sv
        time.sleep(0.3)
    raise AssertionError(f"{what} not within {timeout_s}s: "
                         f"{[(k, v['queue'], v['hot']) for k, v in sv.items()]}")


def _reader_class():
    import ray

    @ray.remote(num_cpus=0, max_concurrency=4)
    class Reader:
        """Threads re-reading one file without pause (a process of its own: not the GIL of
        the test's)."""

        def start(self, path: str, threads: int) -> None:
            self.stop_ = threading.Event()
            self.reads, self.errors = 0, []

            def loop():
                rc = PC.Client(CLUSTER)
                while not self.stop_.is_set():
                    try:
                        with rc.open(path, "rb") as f:
                            f.read()
                        self.reads += 1
                    except Exception as e:  # noqa: BLE001 - counted: no read may fail
                        self.errors.append(repr(e))

            self.threads = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
            for t in self.threads:
                t.start()

        def stop(self) -> tuple[int, list]:
            self.stop_.set()
            for t in self.threads:
                t.join(60)
            return self.reads, self.errors[:10]

    return Reader


def test_a_server_with_a_crowd_of_readers_gets_no_new_replicas_until_it_calms(pg):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    c = pg
    c.mkdir("/hot", parents=True)
    _wait(c, "three chunkservers", 60, lambda sv: sum(not s["dead"] for s in sv.values()) == 3)
    # One chunk (each chunk is placed on its own), one replica: one server holds it all.
    held = _write(c, "/hot/crowded", os.urandom(4 * CS), replication=1, chunk_size=4 * CS)
    assert len(held) == 1
    hot = held.pop()
    # Negative control: nothing hot yet, replication-2 writes use that server too.
    before = [_write(c, f"/hot/before-{i}", os.urandom(CS), 2) for i in range(FILES)]
    assert any(hot in s for s in before), before

    readers = [_reader_class().options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        _node_id("head"), soft=False)).remote() for _ in range(READER_ACTORS)]
    ray.get([r.start.remote("/hot/crowded", READERS // READER_ACTORS) for r in readers],
            timeout=60)
    try:
        sv = _wait(c, "the crowded server flagged hot", HOT_TIMEOUT_S,
                   lambda sv: sv[hot]["hot"] == "queue")
        print("queues while hot:", {k[:8]: v["queue"] for k, v in sv.items()})
        assert not any(v["hot"] for k, v in sv.items() if k != hot), sv
        events = c.status()["events"]
        assert any(e["kind"] == "server_hot" and hot in e["message"] for e in events), events
        text = c.call("metrics")
        assert any(ln.startswith("pangu_hot_chunkservers") and float(ln.split()[-1]) == 1.0
                   for ln in text.splitlines()), [ln for ln in text.splitlines() if "hot" in ln]
        during = [_write(c, f"/hot/during-{i}", os.urandom(CS), 2) for i in range(FILES)]
        assert not any(hot in s for s in during), during
        assert _servers(c)[hot]["hot"], "it cooled while we wrote: the check above proved little"
    finally:
        got = ray.get([r.stop.remote() for r in readers], timeout=120)
        for r in readers:
            ray.kill(r)
    reads, errors = sum(g[0] for g in got), [e for g in got for e in g[1]]
    print(f"{reads} whole-file reads by the crowd")
    assert reads > 0 and not errors, errors[:3]

    _wait(c, "the flag cleared", CLEAR_TIMEOUT_S, lambda sv: not sv[hot]["hot"])
    assert any(e["kind"] == "server_hot_cleared" for e in c.status()["events"])
    after = [_write(c, f"/hot/after-{i}", os.urandom(CS), 2) for i in range(FILES)]
    assert any(hot in s for s in after), after

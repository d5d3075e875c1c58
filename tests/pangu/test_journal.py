"""The master's local journal: replay, torn tails, checkpoints; and rebuilding a namespace."""

from __future__ import annotations

import asyncio
import os

import pytest

from pangu.io.journal import JournalCorrupt, LocalJournal
from pangu.core.namespace import Namespace


def run(coro):
    return asyncio.run(coro)


def test_replay_after_restart_gives_the_same_namespace(tmp_path):
    j = LocalJournal(str(tmp_path))
    assert j.load() == (None, [])
    ns = Namespace()
    cmds = [{"op": "mkdir", "path": "/a", "now": 1.0},
            {"op": "create", "path": "/a/f", "now": 2.0, "chunk_size": 65536},
            {"op": "add_chunk", "path": "/a/f", "now": 3.0}]
    for cmd in cmds:
        res = ns.apply(cmd)
        run(j.append(cmd))
    CID = res["chunk"]
    ns.apply({"op": "commit", "chunk": CID, "version": 1, "length": 10})
    run(j.append({"op": "commit", "chunk": CID, "version": 1, "length": 10}))
    j.close()
    j2 = LocalJournal(str(tmp_path))
    ckpt, entries = j2.load()
    assert ckpt is None and j2.seq == 4
    replay = Namespace()
    for e in entries:
        replay.apply(e)
    assert replay.snapshot() == ns.snapshot()


def test_a_torn_last_record_is_dropped_and_the_log_continues(tmp_path):
    j = LocalJournal(str(tmp_path))
    j.load()
    run(j.append({"op": "mkdir", "path": "/a"}))
    first_end = os.path.getsize(j.log_path)
    run(j.append({"op": "mkdir", "path": "/b"}))
    j.close()
    with open(j.log_path, "r+b") as f:  # a crash in the middle of appending the second record
        f.truncate(first_end + 40)
    j2 = LocalJournal(str(tmp_path))
    _, entries = j2.load()
    assert entries == [{"op": "mkdir", "path": "/a"}] and j2.seq == 1
    run(j2.append({"op": "mkdir", "path": "/c"}))
    j2.close()
    _, entries = LocalJournal(str(tmp_path)).load()
    assert entries == [{"op": "mkdir", "path": "/a"}, {"op": "mkdir", "path": "/c"}]


def test_checkpoint_then_more_entries(tmp_path):
    j = LocalJournal(str(tmp_path))
    j.load()
    ns = Namespace()
    for i in range(5):
        cmd = {"op": "mkdir", "path": f"/d{i}"}
        ns.apply(cmd)
        run(j.append(cmd))
    run(j.checkpoint(ns.snapshot()))
    run(j.append({"op": "mkdir", "path": "/after"}))
    j.close()
    j2 = LocalJournal(str(tmp_path))
    ckpt, entries = j2.load()
    assert j2.seq == 6 and entries == [{"op": "mkdir", "path": "/after"}]
    rebuilt = Namespace.restore(ckpt)
    for e in entries:
        rebuilt.apply(e)
    assert sorted(p for p in rebuilt.nodes) == ["/", "/after", "/d0", "/d1", "/d2", "/d3", "/d4"]


def test_a_gap_in_the_log_is_refused(tmp_path):
    j = LocalJournal(str(tmp_path))
    j.load()
    run(j.append({"op": "mkdir", "path": "/a"}))
    j.seq += 1  # as if an entry were lost
    run(j.append({"op": "mkdir", "path": "/b"}))
    j.close()
    with pytest.raises(JournalCorrupt, match="follows"):
        LocalJournal(str(tmp_path)).load()


def test_a_slow_disk_does_not_stop_the_masters_loop(tmp_path, monkeypatch):
    """The append's write and fdatasync run off the event loop (issue 14, defect 11): while a
    slow disk holds one append, other coroutines (heartbeats, reads) go on."""
    import threading
    import time

    j = LocalJournal(str(tmp_path))
    j.load()
    released = threading.Event()
    real = j._log.append

    def slow_append(records):
        assert released.wait(30), "the loop never got to run while the append waited"
        return real(records)

    monkeypatch.setattr(j._log, "append", slow_append)

    async def main():
        ticks = 0

        async def heartbeat():
            nonlocal ticks
            while True:
                ticks += 1
                if ticks == 5:
                    released.set()  # only a loop that runs can let the disk go on
                await asyncio.sleep(0.001)

        hb = asyncio.create_task(heartbeat())
        try:
            seq = await asyncio.wait_for(j.append({"op": "mkdir", "path": "/a"}), 60)
        finally:
            hb.cancel()
        return seq, ticks

    t0 = time.monotonic()
    seq, ticks = asyncio.run(main())
    assert seq == 1 and ticks >= 5 and time.monotonic() - t0 < 60
    j.close()
    assert LocalJournal(str(tmp_path)).load()[1] == [{"op": "mkdir", "path": "/a"}]

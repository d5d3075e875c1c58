"""The replica's write-ahead log: what survives a crash, and what is refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nuwa.core.raft import Entry, HardState, Snapshot
from nuwa.io.wal import Wal, WalCorrupt


def entries(lo, hi, term=1):
    return [Entry(term=term, index=i, data=f"v{i}".encode()) for i in range(lo, hi + 1)]


def test_round_trip_after_restart(tmp_path):
    w = Wal(str(tmp_path))
    assert w.recover().entries == []
    w.save(HardState(term=1, vote=2, commit=0), entries(1, 5))
    w.save(HardState(term=1, vote=2, commit=5), [])
    w.close()
    rec = Wal(str(tmp_path)).recover()
    assert rec.entries == entries(1, 5)
    assert rec.hard_state == HardState(term=1, vote=2, commit=5)
    assert rec.truncated_bytes == 0


def test_conflicting_suffix_is_overwritten(tmp_path):
    w = Wal(str(tmp_path))
    w.recover()
    w.save(HardState(1, 1, 0), entries(1, 5, term=1))
    w.save(HardState(2, 3, 2), entries(3, 4, term=2))  # a new leader overwrote 3..5
    w.close()
    rec = Wal(str(tmp_path)).recover()
    assert [(e.index, e.term) for e in rec.entries] == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_torn_tail_is_cut_and_appending_continues(tmp_path):
    w = Wal(str(tmp_path))
    w.recover()
    w.save(HardState(1, 1, 3), entries(1, 3))
    w.close()
    with open(tmp_path / "wal.log", "ab") as f:
        f.write(b"\x30\x00\x00\x00garbage-of-a-half-written-record")
    w2 = Wal(str(tmp_path))
    rec = w2.recover()
    assert rec.entries == entries(1, 3) and rec.truncated_bytes > 0
    w2.save(None, entries(4, 4))
    w2.close()
    assert Wal(str(tmp_path)).recover().entries == entries(1, 4)


def test_corruption_in_the_middle_is_refused(tmp_path):
    w = Wal(str(tmp_path))
    w.recover()
    w.save(HardState(1, 1, 0), entries(1, 1))
    first_end = os.path.getsize(tmp_path / "wal.log")
    w.save(HardState(1, 1, 3), entries(2, 3))
    w.close()
    data = bytearray((tmp_path / "wal.log").read_bytes())
    data[first_end - 2] ^= 0xFF  # flip a byte inside the first record's payload
    (tmp_path / "wal.log").write_bytes(bytes(data))
    with pytest.raises(WalCorrupt, match="damaged at byte"):
        Wal(str(tmp_path)).recover()


def test_snapshot_compacts_the_log(tmp_path):
    w = Wal(str(tmp_path))
    w.recover()
    w.save(HardState(1, 1, 10), entries(1, 10))
    big = w.size_bytes()
    w.save_snapshot(Snapshot(index=8, term=1, voters=(1, 2, 3), data=b"state@8"))
    assert w.size_bytes() < big
    w.save(None, entries(11, 12))
    w.close()
    rec = Wal(str(tmp_path)).recover()
    assert rec.snapshot == Snapshot(index=8, term=1, voters=(1, 2, 3), data=b"state@8")
    assert [e.index for e in rec.entries] == [9, 10, 11, 12]
    assert rec.hard_state == HardState(1, 1, 10)


def test_installed_snapshot_ahead_of_the_log_restarts_it(tmp_path):
    w = Wal(str(tmp_path))
    w.recover()
    w.save(HardState(1, 1, 2), entries(1, 3))
    w.save_snapshot(Snapshot(index=50, term=3, voters=(1, 2, 3), data=b"from leader"))
    w.close()
    rec = Wal(str(tmp_path)).recover()
    assert rec.snapshot.index == 50 and rec.entries == []


def test_a_crash_mid_write_loses_only_what_was_never_acknowledged(tmp_path):
    # A child process appends, reports each acknowledged (fsynced) index, and is killed.
    script = f"""
import os, sys
sys.path.insert(0, {os.getcwd()!r})
from nuwa.core.raft import Entry, HardState
from nuwa.io.wal import Wal
w = Wal({str(tmp_path)!r}); w.recover()
for i in range(1, 100000):
    w.save(HardState(1, 1, i), [Entry(term=1, index=i, data=b"x" * 300)])
    print(i, flush=True)
    if i == 200:
        os.kill(os.getpid(), 9)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    acked = int(out.stdout.split()[-1])
    rec = Wal(str(tmp_path)).recover()
    assert [e.index for e in rec.entries][:acked] == list(range(1, acked + 1))


def test_installed_snapshot_that_disagrees_with_our_tail_drops_it(tmp_path):
    w = Wal(str(tmp_path))
    w.recover()
    w.save(HardState(2, 1, 3), [Entry(term=1, index=i, data=b"x") for i in range(1, 4)]
           + [Entry(term=2, index=i, data=b"stale") for i in range(4, 7)])
    # The leader's snapshot at index 5 was taken in term 3: our entries 4..6 are not its history.
    w.save_snapshot(Snapshot(index=5, term=3, voters=(1, 2, 3), data=b"leader state"))
    w.close()
    rec = Wal(str(tmp_path)).recover()
    assert rec.snapshot.index == 5 and rec.entries == []

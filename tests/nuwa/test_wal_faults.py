"""A failing disk under the WAL (issue 14, disk faults): a failed fsync (EIO) or a full disk
(ENOSPC) raises a typed error, loses nothing acknowledged, and never has the same file
fsynced again and trusted."""

from __future__ import annotations

import pytest

from base import faults
from nuwa.core.raft import Entry, HardState
from nuwa.io.wal import DiskFailed, DiskFull, Wal


@pytest.fixture(autouse=True)
def _clean():
    faults.disarm()
    yield
    faults.disarm()


def es(lo, hi):
    return [Entry(term=1, index=i, data=f"v{i}".encode()) for i in range(lo, hi + 1)]


def test_a_failed_fsync_stops_the_wal_and_loses_nothing_acknowledged(tmp_path):
    w = Wal(str(tmp_path))
    w.recover()
    w.save(HardState(1, 1, 3), es(1, 3))  # acknowledged
    faults.arm("nuwa.io.wal.fsync", "EIO", under=str(tmp_path), times=1)
    with pytest.raises(DiskFailed) as info:
        w.save(HardState(1, 1, 5), es(4, 5))
    assert info.value.errno == 5 and str(tmp_path) in str(info.value)
    fired = faults.fired("nuwa.io.wal.fsync")
    # Even with the disk "back", this Wal never fsyncs that file again and believes it.
    with pytest.raises(DiskFailed, match="earlier fdatasync"):
        w.save(HardState(1, 1, 6), es(6, 6))
    assert faults.fired("nuwa.io.wal.fsync") == fired
    w.close()
    rec = Wal(str(tmp_path)).recover()  # the replica restarted
    assert rec.entries == es(1, 3) and rec.hard_state == HardState(1, 1, 3)


def test_a_full_disk_refuses_the_write_and_works_again_when_space_returns(tmp_path):
    w = Wal(str(tmp_path))
    w.recover()
    w.save(HardState(1, 1, 2), es(1, 2))
    with faults.armed("nuwa.io.wal.write", "ENOSPC", under=str(tmp_path)):
        with pytest.raises(DiskFull):
            w.save(HardState(1, 1, 4), es(3, 4))
        with pytest.raises(DiskFull):
            w.save(HardState(1, 1, 4), es(3, 4))
    w.save(HardState(1, 1, 4), es(3, 4))  # space is back: the same save succeeds
    w.close()
    assert Wal(str(tmp_path)).recover().entries == es(1, 4)


def test_a_snapshot_on_a_failed_wal_is_refused(tmp_path):
    from nuwa.core.raft import Snapshot

    w = Wal(str(tmp_path))
    w.recover()
    w.save(HardState(1, 1, 2), es(1, 2))
    with faults.armed("nuwa.io.wal.fsync", "EIO", under=str(tmp_path)):
        with pytest.raises(DiskFailed):
            w.save(None, es(3, 3))
    with pytest.raises(DiskFailed):
        w.save_snapshot(Snapshot(index=2, term=1, voters=(1,), data=b"s"))

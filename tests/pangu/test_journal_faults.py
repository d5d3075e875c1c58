"""A failing disk under the Pangu master's local journal (issue 14, disk faults)."""

from __future__ import annotations

import asyncio

import pytest

from base import faults
from pangu.errors import DiskFailed, DiskFull, NoSpace
from pangu.io.journal import LocalJournal


@pytest.fixture(autouse=True)
def _clean():
    faults.disarm()
    yield
    faults.disarm()


def mk(i):
    return {"op": "mkdir", "path": f"/d{i}"}


def test_a_failed_fsync_refuses_every_later_append_until_reopened(tmp_path):
    j = LocalJournal(str(tmp_path))
    j.load()
    asyncio.run(j.append(mk(1)))
    faults.arm("pangu.io.journal.fsync", "EIO", under=str(tmp_path), times=1)
    with pytest.raises(DiskFailed):
        asyncio.run(j.append(mk(2)))
    assert j.seq == 1 and j.failed is not None
    fired = faults.fired("pangu.io.journal.fsync")
    with pytest.raises(DiskFailed, match="earlier fdatasync"):
        asyncio.run(j.append(mk(3)))
    assert faults.fired("pangu.io.journal.fsync") == fired  # no second fsync of that file
    # Reopened in the same process: what earlier syncs made durable, in a new file.
    assert j.load()[1] == [mk(1)] and j.failed is None
    asyncio.run(j.append(mk(4)))
    j.close()
    assert LocalJournal(str(tmp_path)).load()[1] == [mk(1), mk(4)]


def test_a_failed_fsync_is_not_replayed_by_a_restarted_master(tmp_path):
    j = LocalJournal(str(tmp_path))
    j.load()
    asyncio.run(j.append(mk(1)))
    with faults.armed("pangu.io.journal.fsync", "EIO", under=str(tmp_path)):
        with pytest.raises(DiskFailed):
            asyncio.run(j.append(mk(2)))
    j.close()
    assert LocalJournal(str(tmp_path)).load()[1] == [mk(1)]


def test_a_full_disk_refuses_appends_until_space_returns(tmp_path):
    j = LocalJournal(str(tmp_path))
    j.load()
    asyncio.run(j.append(mk(1)))
    with faults.armed("pangu.io.journal.write", "ENOSPC", under=str(tmp_path)):
        with pytest.raises(DiskFull) as info:
            asyncio.run(j.append(mk(2)))
        assert isinstance(info.value, NoSpace) and j.seq == 1
    asyncio.run(j.append(mk(2)))
    j.close()
    assert LocalJournal(str(tmp_path)).load()[1] == [mk(1), mk(2)]


def test_a_disk_still_failing_keeps_the_reopen_failing(tmp_path):
    j = LocalJournal(str(tmp_path))
    j.load()
    asyncio.run(j.append(mk(1)))
    with faults.armed("pangu.io.journal.fsync", "EIO", under=str(tmp_path)):
        with pytest.raises(DiskFailed):
            asyncio.run(j.append(mk(2)))
        with pytest.raises(DiskFailed):
            j.load()
        with pytest.raises(DiskFailed):
            asyncio.run(j.append(mk(3)))
    assert j.load()[1] == [mk(1)]

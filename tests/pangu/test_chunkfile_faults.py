"""A failing or full disk under a chunk replica (issue 14, disk faults)."""

from __future__ import annotations

import pytest

from base import faults
from pangu.io.chunkfile import BLOCK_BYTES, ChunkFile
from pangu.errors import DiskFailed, DiskFull, NoSpace


@pytest.fixture(autouse=True)
def _clean():
    faults.disarm()
    yield
    faults.disarm()


def test_a_full_disk_leaves_the_replica_as_it_was_and_space_returning_is_enough(tmp_path):
    cf = ChunkFile(str(tmp_path), "c1", 4 * BLOCK_BYTES).create()
    first = bytes(range(256)) * 300
    cf.write(0, first)
    more = b"m" * (BLOCK_BYTES + 17)
    with faults.armed("pangu.chunk.write", "ENOSPC", under=str(tmp_path)):
        with pytest.raises(DiskFull) as info:
            cf.write(len(first), more)
    assert isinstance(info.value, NoSpace) and info.value.errno == 28
    assert cf.length() == len(first) and cf.verify() == []  # no half-written tail
    assert cf.read(0, len(first)) == first
    assert cf.write(len(first), more) == len(first) + len(more)  # space is back
    assert cf.read(0, 10**9) == first + more and cf.verify() == []


@pytest.mark.parametrize("how", ["write", "sync", "truncate"])
def test_a_failed_fdatasync_is_a_typed_error(tmp_path, how):
    cf = ChunkFile(str(tmp_path), "c2", 4 * BLOCK_BYTES).create()
    cf.write(0, b"x" * 1000)
    with faults.armed("pangu.chunk.fsync", "EIO", under=str(tmp_path)):
        with pytest.raises(DiskFailed) as info:
            if how == "write":
                cf.write(1000, b"y" * 10, sync=True)
            elif how == "sync":
                cf.write(1000, b"y" * 10, sync=False)
                cf.sync()
            else:
                cf.truncate(500)
    assert info.value.errno == 5 and "c2" in str(info.value)

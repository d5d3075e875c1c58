"""The checksummed chunk file against a bytearray model; corruption is always detected."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pangu.io.chunkfile import BLOCK_BYTES, ChunkFile
from pangu.errors import BadRequest, ChecksumError

CAP = 5 * BLOCK_BYTES

ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.floats(0, 1), st.integers(0, 2 * BLOCK_BYTES + 7)),
    st.tuples(st.just("read"), st.floats(0, 1), st.integers(0, 3 * BLOCK_BYTES)),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(0)),
), max_size=12)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_random_writes_reads_and_truncates_match_a_model(tmp_path_factory, script):
    d = tmp_path_factory.mktemp("chunks")
    cf = ChunkFile(str(d), "c" + uuid.uuid4().hex[:12], CAP).create()
    model = bytearray()
    for k, (op, where, n) in enumerate(script):
        off = int(where * len(model))
        if op == "write":
            n = min(n, CAP - off)
            data = bytes((k * 31 + i) % 251 for i in range(n))
            assert cf.write(off, data, sync=False) == max(len(model), off + n)
            model[off:off + n] = data
        elif op == "read":
            assert cf.read(off, n) == bytes(model[off:off + n])
        else:
            cf.truncate(off, sync=False)
            del model[off:]
        assert cf.length() == len(model)
    assert cf.read(0, CAP) == bytes(model)
    assert cf.verify() == []


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3 * BLOCK_BYTES - 1), st.integers(0, 7))
def test_a_flipped_bit_is_detected_on_read_write_and_scrub(tmp_path_factory, pos, bit):
    d = tmp_path_factory.mktemp("chunks")
    cf = ChunkFile(str(d), "c" + uuid.uuid4().hex[:12], CAP).create()
    cf.write(0, os.urandom(3 * BLOCK_BYTES))
    with open(cf.data_path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([b ^ (1 << bit)]))
    blk = pos // BLOCK_BYTES
    with pytest.raises(ChecksumError, match=f"block {blk} fails") as e:
        cf.read(blk * BLOCK_BYTES, 1)
    assert e.value.block == blk and e.value.chunk == cf.chunk
    assert cf.verify() == [blk]
    # A partial write into the corrupt block is refused rather than blessing bad bytes...
    with pytest.raises(ChecksumError):
        cf.write(blk * BLOCK_BYTES + 1, b"x")
    # ...and blocks that are intact still read.
    other = (blk + 1) % 3
    assert len(cf.read(other * BLOCK_BYTES, BLOCK_BYTES)) == BLOCK_BYTES


def test_bad_input_is_refused_clearly(tmp_path):
    cf = ChunkFile(str(tmp_path), "c1", CAP).create()
    cf.write(0, b"abc")
    with pytest.raises(BadRequest, match="no holes"):
        cf.write(10, b"x")
    with pytest.raises(BadRequest, match="beyond its capacity"):
        cf.write(3, b"x" * CAP)
    with pytest.raises(BadRequest, match=">= 0"):
        cf.read(-1, 1)
    with pytest.raises(BadRequest, match="expected 0..3"):
        cf.truncate(4)
    with pytest.raises(BadRequest, match="bad chunk id"):
        ChunkFile(str(tmp_path), "../etc/passwd", CAP)
    assert cf.read(0, 100) == b"abc" and cf.read(3, 10) == b""

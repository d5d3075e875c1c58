"""The master's local journal never drops an acknowledged change (issue 14, defect 3):

(a) any flipped bit or changed byte before the last synced entry (length words, CRCs, the
    header included) makes ``load`` raise ``JournalCorrupt`` naming the file and offset, and
    leaves the file byte-identical -- the old reader truncated there, and the garbage
    collector then deleted the chunks of every file created after the damage;
(b) a crash while appending the last entry -- its pages persisted in any order or not at
    all -- loads every acknowledged entry and at most the torn one.
"""

from __future__ import annotations

import asyncio
import random
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pangu.io.journal import JournalCorrupt, LocalJournal

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _cmds(n: int, size: int) -> list[dict]:
    return [{"op": "mkdir", "path": f"/d{i}-" + "x" * (size * i % 97)} for i in range(n)]


def _write(d: str, cmds: list[dict], checkpoint_at: int | None):
    """Append every command but the last synced; return the path, the synced byte count
    before the last append, and the byte count after the one before it."""
    j = LocalJournal(d)
    j.load()
    sizes = []
    for i, cmd in enumerate(cmds):
        if checkpoint_at is not None and i == checkpoint_at:
            asyncio.run(j.checkpoint({"format": "test", "upto": i}))
        sizes.append(j._log.synced_bytes)
        asyncio.run(j.append(cmd))
    last_synced = j._log.synced_bytes
    j.close()
    return j.log_path, sizes[-1], last_synced


@SETTINGS
@given(n=st.integers(1, 8), size=st.integers(1, 50), where=st.floats(0, 1, exclude_max=True),
       bit=st.integers(0, 7), whole_byte=st.booleans(), value=st.integers(1, 255),
       ckpt=st.none() | st.integers(0, 7))
def test_damage_before_the_last_synced_entry_is_refused_and_nothing_changes(
        n, size, where, bit, whole_byte, value, ckpt):
    with tempfile.TemporaryDirectory() as d:
        path, _, synced = _write(d, _cmds(n, size), ckpt if ckpt is not None and ckpt < n else None)
        data = bytearray(open(path, "rb").read())
        pos = int(where * synced)
        data[pos] = data[pos] ^ value if whole_byte else data[pos] ^ (1 << bit)
        damaged = bytes(data)
        open(path, "wb").write(damaged)
        with pytest.raises(JournalCorrupt) as info:
            LocalJournal(d).load()
        assert info.value.path == path and info.value.offset <= pos
        assert path in str(info.value) and f"byte {info.value.offset}" in str(info.value)
        assert open(path, "rb").read() == damaged


@SETTINGS
@given(n=st.integers(1, 8), size=st.integers(1, 50), page=st.sampled_from([16, 64, 4096]),
       seed=st.integers(0, 2**32 - 1), filler=st.sampled_from(["zeros", "junk"]))
def test_a_torn_last_append_loads_every_acknowledged_entry(n, size, page, seed, filler):
    rng = random.Random(seed)
    cmds = _cmds(n, size)
    with tempfile.TemporaryDirectory() as d:
        path, synced, last_synced = _write(d, cmds, None)
        # The crash came before the last append's fdatasync returned, so its durable marker
        # was never written: the file ended with the last entry.
        full = open(path, "rb").read()[:last_synced]
        image = bytearray(full)
        first, npages = synced // page, (len(full) + page - 1) // page
        for p in range(first, npages):
            if rng.random() < 0.5:
                continue
            lo, hi = max(p * page, synced), min((p + 1) * page, len(full))
            image[lo:hi] = (bytes(hi - lo) if filler == "zeros"
                            else bytes(rng.getrandbits(8) for _ in range(hi - lo)))
        cut = rng.choice([len(full)] + [min(max(p * page, synced), len(full))
                                        for p in range(first, npages + 1)])
        open(path, "wb").write(bytes(image[:cut]))
        j = LocalJournal(d)
        _, entries = j.load()
        assert entries in (cmds[:-1], cmds), f"loaded {len(entries)} of {len(cmds)} entries"
        asyncio.run(j.append({"op": "mkdir", "path": "/after"}))
        j.close()
        assert LocalJournal(d).load()[1] == entries + [{"op": "mkdir", "path": "/after"}]


def test_a_v1_journal_is_read_and_rewritten_in_the_current_format(tmp_path):
    import json
    import struct
    import zlib

    def v1(obj):
        body = json.dumps(obj).encode()
        return struct.pack("<II", len(body), zlib.crc32(body)) + body
    raw = v1({"seq": 1, "cmd": {"op": "mkdir", "path": "/a"}}) + v1(
        {"seq": 2, "cmd": {"op": "mkdir", "path": "/b"}})
    third = v1({"seq": 3, "cmd": {"op": "mkdir", "path": "/c"}})
    (tmp_path / "journal.log").write_bytes(raw + b"\x05\x00\x00")
    j = LocalJournal(str(tmp_path))
    assert j.load()[1] == [{"op": "mkdir", "path": "/a"}, {"op": "mkdir", "path": "/b"}]
    assert j.seq == 2
    j.close()
    damaged = bytearray(raw + third)
    damaged[len(raw) - 5] ^= 0x20  # inside the second entry; the third is intact
    (tmp_path / "journal.log").write_bytes(bytes(damaged))
    with pytest.raises(JournalCorrupt, match="followed by intact"):
        LocalJournal(str(tmp_path)).load()
    assert (tmp_path / "journal.log").read_bytes() == bytes(damaged)


@SETTINGS
@given(where=st.floats(0, 1, exclude_max=True), value=st.integers(1, 255))
def test_a_damaged_checkpoint_is_refused(where, value):
    with tempfile.TemporaryDirectory() as d:
        j = LocalJournal(d)
        j.load()
        asyncio.run(j.append({"op": "mkdir", "path": "/a"}))
        asyncio.run(j.checkpoint({"format": "test", "nodes": {"/a": 1}}))
        j.close()
        assert LocalJournal(d).load()[0] == {"format": "test", "nodes": {"/a": 1}}
        data = bytearray(open(j.ckpt_path, "rb").read())
        data[int(where * len(data))] ^= value
        open(j.ckpt_path, "wb").write(bytes(data))
        with pytest.raises(JournalCorrupt, match="checkpoint"):
            LocalJournal(d).load()

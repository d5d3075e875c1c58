"""The WAL never drops what it acknowledged (issue 14, defect 3), checked by Hypothesis:

(a) any flipped bit or changed byte of anything written before the last synced record --
    length words, sequence numbers, CRCs, the file header -- makes ``recover`` refuse with
    ``WalCorrupt`` naming the file and offset, and leaves the file byte-identical;
(b) a crash during the last, unsynced batch -- its pages persisted in any order or not at
    all (zeros, or junk, in their place), the file cut after any page -- recovers every
    synced entry and a prefix of the unsynced batch.
"""

from __future__ import annotations

import os
import random
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nuwa.core.raft import Entry, HardState
from nuwa.io.wal import Wal, WalCorrupt

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

batches_st = st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=5),
                      min_size=1, max_size=6)  # each batch: sizes of its entries' data


def _write(d: str, batches: list[list[int]], unsynced: list[int] | None = None):
    """Batches saved with sync; then optionally one more saved without. Returns the Wal's
    log path, every entry in order, how many were synced and the synced byte count."""
    w = Wal(d)
    w.recover()
    all_entries, idx = [], 0
    for sizes in batches:
        es = []
        for n in sizes:
            idx += 1
            es.append(Entry(term=1, index=idx, data=bytes([idx % 251]) * n))
        w.save(HardState(1, 1, idx), es)
        all_entries += es
    synced_count, synced_bytes = len(all_entries), w._log.synced_bytes
    if unsynced:
        es = []
        for n in unsynced:
            idx += 1
            es.append(Entry(term=1, index=idx, data=bytes([idx % 251]) * n))
        w.save(HardState(1, 1, idx), es, sync=False)
        all_entries += es
    w.close()
    return w.log_path, all_entries, synced_count, synced_bytes


@SETTINGS
@given(batches=batches_st, where=st.floats(0, 1, exclude_max=True),
       bit=st.integers(0, 7), whole_byte=st.booleans(), value=st.integers(1, 255))
def test_damage_before_the_last_synced_record_is_refused_and_nothing_changes(
        batches, where, bit, whole_byte, value):
    with tempfile.TemporaryDirectory() as d:
        path, _, _, synced_bytes = _write(d, batches)
        data = bytearray(open(path, "rb").read())
        pos = int(where * synced_bytes)  # header, records, length words, CRCs: anything synced
        data[pos] = data[pos] ^ value if whole_byte else data[pos] ^ (1 << bit)
        damaged = bytes(data)
        with open(path, "wb") as f:
            f.write(damaged)
        with pytest.raises(WalCorrupt) as info:
            Wal(d).recover()
        err = info.value
        assert err.path == path and err.offset <= pos
        assert path in str(err) and f"byte {err.offset}" in str(err)
        with open(path, "rb") as f:
            assert f.read() == damaged  # never truncated, never rewritten


@SETTINGS
@given(batches=batches_st, unsynced=st.lists(st.integers(0, 3000), min_size=1, max_size=6),
       page=st.sampled_from([64, 512, 4096]), seed=st.integers(0, 2**32 - 1),
       filler=st.sampled_from(["zeros", "junk"]))
def test_a_torn_unsynced_batch_recovers_every_synced_entry_and_a_prefix(
        batches, unsynced, page, seed, filler):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as d:
        path, entries, synced_count, synced_bytes = _write(d, batches, unsynced)
        full = open(path, "rb").read()
        # The crash: every page from the one holding the synced end onwards is persisted
        # or not (independently: any order), and the file ends after any page.
        image = bytearray(full)
        first = synced_bytes // page
        npages = (len(full) + page - 1) // page
        for p in range(first, npages):
            if rng.random() < 0.5:
                continue  # persisted
            lo, hi = max(p * page, synced_bytes), min((p + 1) * page, len(full))
            image[lo:hi] = (bytes(hi - lo) if filler == "zeros"
                            else bytes(rng.getrandbits(8) for _ in range(hi - lo)))
        cut = rng.choice([len(full)] + [min(max(p * page, synced_bytes), len(full))
                                        for p in range(first, npages + 1)])
        with open(path, "wb") as f:
            f.write(bytes(image[:cut]))
        w = Wal(d)
        rec = w.recover()
        got = rec.entries
        assert got == entries[:len(got)], "recovered entries are not a prefix of those written"
        assert len(got) >= synced_count, "an acknowledged (synced) entry was lost"
        # The replica goes on: the next entry is appended after the recovered ones.
        nxt = Entry(term=2, index=len(got) + 1, data=b"after")
        w.save(HardState(2, 1, 0), [nxt])
        w.close()
        assert Wal(d).recover().entries == got + [nxt]


def test_a_flipped_length_word_is_not_taken_for_a_torn_tail(tmp_path):
    """The v1 reader stopped at a damaged length word and truncated everything after it."""
    w = Wal(str(tmp_path))
    w.recover()
    w.save(HardState(1, 1, 1), [Entry(1, 1, b"a" * 100)])
    second = os.path.getsize(w.log_path)
    w.save(HardState(1, 1, 3), [Entry(1, 2, b"b" * 100), Entry(1, 3, b"c")])
    w.close()
    data = bytearray(open(w.log_path, "rb").read())
    data[second + 8 + 3] = 0x7F  # the high byte of the next record's length: "2 GiB follow"
    open(w.log_path, "wb").write(bytes(data))
    with pytest.raises(WalCorrupt, match="damaged at byte"):
        Wal(str(tmp_path)).recover()
    assert open(w.log_path, "rb").read() == bytes(data)


def test_a_v1_log_is_read_and_rewritten_in_the_current_format(tmp_path):
    import struct
    import zlib

    from nuwa.core.codec import encode_entry, encode_hard_state

    def v1(kind, payload):
        return struct.pack("<IIB", len(payload), zlib.crc32(bytes([kind]) + payload),
                           kind) + payload
    raw = v1(1, encode_entry(Entry(1, 1, b"x"))) + v1(2, encode_hard_state(HardState(1, 1, 1)))
    (tmp_path / "wal.log").write_bytes(raw + b"\x10\x00")  # and a torn tail
    rec = Wal(str(tmp_path)).recover()
    assert rec.entries == [Entry(1, 1, b"x")] and rec.hard_state == HardState(1, 1, 1)
    assert (tmp_path / "wal.log").read_bytes().startswith(b"FxR1")
    assert Wal(str(tmp_path)).recover().entries == [Entry(1, 1, b"x")]


@SETTINGS
@given(batches=batches_st, where=st.floats(0, 1))
def test_a_file_cut_anywhere_recovers_a_prefix_and_starts(batches, where):
    """Losing a suffix of the file (pages, or a truncation) never stops the replica from
    starting: it recovers the entries before the cut, in order. (Whether a cut removed synced
    entries cannot be told when every record that would say so is gone with it.)"""
    with tempfile.TemporaryDirectory() as d:
        path, entries, _, _ = _write(d, batches)
        full = open(path, "rb").read()
        header_end = 33 + 8 + len("nuwa-wal")
        cut = header_end + int(where * (len(full) - header_end))
        open(path, "wb").write(full[:cut])
        got = Wal(d).recover().entries
        assert got == entries[:len(got)]

"""Sorting past a memory bound (jobs.sort.spill): records forced to spill into many sorted runs
come back complete, in key order and checksum-equal; the merge handles ties across runs,
empty input, run compaction past spill_runs_max and a spill directory given as a URL; the spill
files are gone afterwards; garbage settings are refused. Also the streaming pieces of the data
path the sort uses: ``TaskContext.iter_upstream`` (bounded blocks) and
``OutputLocation.open_attempt`` (a streamed, atomically renamed output file)."""

from __future__ import annotations

import os
import types

import numpy as np
import pyarrow as pa
import pytest

from fuxi.context import UPSTREAM_BLOCK_BYTES_MAX, TaskContext
from fuxi.errors import BadInput
from fuxi.io.output import OutputLocation
from jobs.sort import records, spill
from jobs.sort.spill import RunSorter


def _sorted_all(sorter) -> np.ndarray:
    blocks = list(sorter.sorted_blocks())
    return np.concatenate(blocks) if blocks else np.zeros((0, 100), np.uint8)


def _feed(sorter, rows, block=700):
    for s in range(0, rows.shape[0], block):
        sorter.add(rows[s:s + block])


@pytest.mark.parametrize("skew", [0, 4])
def test_forced_spill_is_sorted_complete_and_checksum_equal(tmp_path, skew):
    rows = records.generate(11, 0, 0, 20_000, skew)  # 2 MB through a 64 KiB bound
    with RunSorter(spill.sort_memory_floor, str(tmp_path), block_records=1000) as sorter:
        _feed(sorter, rows)
        assert len(sorter.runs) >= 20  # it really spilled, many runs
        files = os.listdir(tmp_path)
        assert len(files) == 1 and files[0].startswith("fuxi-sort-spill-")
        got = _sorted_all(sorter)
        assert sorter.spilled_bytes >= rows.nbytes
    assert os.listdir(tmp_path) == []  # the runs are removed
    assert got.shape == rows.shape and records.is_sorted(got)
    assert records.checksum(got) == records.checksum(rows)
    assert np.array_equal(got, rows[records.sort_order(rows)])  # same as one in-memory sort


def test_ties_across_runs_and_more_runs_than_spill_runs_max(tmp_path, monkeypatch):
    monkeypatch.setattr(spill, "spill_runs_max", 4)
    rows = records.generate(12, 1, 0, 12_000, 0)
    rows[:, :9] = 5  # keys differ only in byte 9: almost every key ties with many others
    rows[:, 9] = np.arange(12_000) % 3
    with RunSorter(spill.sort_memory_floor, str(tmp_path)) as sorter:
        _feed(sorter, rows, block=650)
        assert len(sorter.runs) < 4  # compacted as they passed spill_runs_max
        got = _sorted_all(sorter)
    assert records.is_sorted(got) and records.checksum(got) == records.checksum(rows)


def test_no_spill_under_the_bound_and_empty_input(tmp_path):
    rows = records.generate(13, 0, 0, 500, 0)
    with RunSorter(1 << 20, str(tmp_path), block_records=64) as sorter:
        _feed(sorter, rows, block=100)
        blocks = list(sorter.sorted_blocks())
        assert sorter.runs == [] and not os.listdir(tmp_path)
    assert max(b.shape[0] for b in blocks) == 64
    assert records.is_sorted(np.concatenate(blocks))
    with RunSorter(1 << 20, str(tmp_path)) as sorter:
        sorter.add(np.zeros((0, 100), np.uint8))
        assert list(sorter.sorted_blocks()) == []


def test_spill_to_an_fsspec_url(tmp_path):
    rows = records.generate(14, 0, 0, 5000, 0)
    with RunSorter(spill.sort_memory_floor, "memory://sortspill") as sorter:
        _feed(sorter, rows)
        assert sorter.runs and all(p.startswith("/sortspill/") for p in sorter.runs)
        got = _sorted_all(sorter)
    assert records.checksum(got) == records.checksum(rows) and records.is_sorted(got)


@pytest.mark.parametrize("memory,spill_dir,block", [
    (1000, "/tmp", 10), (True, "/tmp", 10), ("1MiB", "/tmp", 10), (1 << 20, "", 10),
    (1 << 20, None, 10), (1 << 20, "/tmp", 0), (1 << 20, "/tmp", 2.5)])
def test_garbage_settings_are_refused(memory, spill_dir, block):
    with pytest.raises(BadInput):
        RunSorter(memory, spill_dir, block_records=block)


def test_garbage_records_are_refused(tmp_path):
    with RunSorter(1 << 20, str(tmp_path)) as sorter:
        for bad in (np.zeros((3, 99), np.uint8), np.zeros((3, 100), np.int16), b"x" * 100,
                    np.zeros(100, np.uint8)):
            with pytest.raises(BadInput, match="uint8 array"):
                sorter.add(bad)


# -- the data path's streaming pieces ----------------------------------------------------------

def _ctx(upstream, get, output_opener=None):
    spec = types.SimpleNamespace(job_id="j", task="t", instance=0, num_instances=1, attempt=0,
                                 params={}, input_paths=[], output=None, upstream=upstream)
    import logging

    return TaskContext(spec, get, logging.getLogger("t"), 1 << 30, output_opener)


def test_iter_upstream_fetches_one_piece_at_a_time_in_bounded_blocks():
    pieces = {i: pa.table({"x": pa.array(np.arange(i * 1000, (i + 1) * 1000))}) for i in range(3)}
    pieces[3] = pa.table({"x": pa.array([], pa.int64())})
    fetched = []

    def get(refs):
        fetched.append(refs)
        return [pieces[r] for r in refs]

    ctx = _ctx((0, 1, 3, 2), get)
    blocks = list(ctx.iter_upstream(block_bytes=800))  # 100 int64 rows a block
    assert fetched == [(0,), (1,), (3,), (2,)]  # one ref per fetch, never all at once
    assert max(b.num_rows for b in blocks) == 100
    assert max(b.nbytes for b in blocks) <= 800
    got = np.concatenate([b.column("x").to_numpy() for b in blocks])
    assert np.array_equal(got, np.concatenate([np.arange(0, 2000), np.arange(2000, 3000)]))
    for bad in (0, -1, True, 1.5, UPSTREAM_BLOCK_BYTES_MAX + 1):
        with pytest.raises(BadInput, match="block_bytes"):
            list(ctx.iter_upstream(block_bytes=bad))


def test_write_output_needs_an_output_location():
    with pytest.raises(BadInput, match="no output location"):
        _ctx((), lambda refs: []).write_output(pa.table({"x": [1]}))


@pytest.mark.parametrize("fmt,width", [("records", 4), ("arrow", None), ("parquet", None)])
def test_streamed_attempt_output_is_atomic_and_reads_back(tmp_path, fmt, width):
    loc = OutputLocation(str(tmp_path / "out"))
    loc.prepare(fmt=fmt, record_bytes=width)
    w = loc.open_attempt("t", 0, 0)
    pieces = [pa.table({"v": pa.array([bytes([i] * 4)] * 3, pa.binary(4))}) for i in range(4)]
    for p in pieces:
        w.write(p)
    assert not os.path.exists(loc.attempt_path("t", 0, 0))  # nothing visible before close
    info = w.close()
    assert info["rows"] == 12 and os.path.exists(info["path"])
    assert loc.commit("t", 0, 0)
    got = loc.read_part(0)
    assert got.column(0).to_pylist() == [bytes([i] * 4) for i in range(4) for _ in range(3)]
    with pytest.raises(BadInput, match="closed"):
        w.write(pieces[0])


def test_streamed_output_refuses_a_second_schema_and_abort_leaves_nothing(tmp_path):
    loc = OutputLocation(str(tmp_path / "out"))
    loc.prepare(fmt="arrow")
    w = loc.open_attempt("t", 1, 2)
    w.write(pa.table({"a": [1, 2]}))
    with pytest.raises(BadInput, match="one schema"):
        w.write(pa.table({"b": ["x"]}))
    w.abort()
    w.abort()
    assert os.listdir(tmp_path / "out" / "_attempts") == []
    loc2 = OutputLocation(str(tmp_path / "rec"))
    loc2.prepare(fmt="records", record_bytes=8)
    w2 = loc2.open_attempt("t", 0, 0)
    with pytest.raises(BadInput, match="record_bytes=8"):
        w2.write(pa.table({"v": pa.array([b"abcd"], pa.binary(4))}))
    w2.abort()

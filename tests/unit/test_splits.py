"""The data path for big jobs, without a cluster: inputs cut into byte ranges (record- and
line-aligned) so one file feeds many instances, range partition ids and the ``direct``
shuffle, no piece for an empty partition, and the Arrow IPC and raw-records writers with
the same atomic commit as Parquet — with garbage at each."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core.inputsplit import (ByteRange, OutputFormatSpec, SplitSpec, decode_input,
                                  encode_range, split_ranges)
from fuxi.core.plan import build_plan
from fuxi.core.spec import spec_from_dict
from fuxi.errors import BadInput, LimitExceeded, SpecError
from fuxi.io import splits
from fuxi.io.output import OutputLocation, records_bytes
from fuxi.io.resolve import resolve_facts
from fuxi.io.shuffle import partition_table, range_partition_ids

RECORDS = SplitSpec(format="records", record_bytes=10)
LINES = SplitSpec(format="lines")
FN = "jobs.wordcount:map_words"


# -- splitting ---------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=6), n=st.integers(1, 12))
def test_record_ranges_cover_each_file_once_on_record_boundaries(sizes, n):
    files = [(f"/d/f{i}", s * 10) for i, s in enumerate(sizes)]
    shares = split_ranges(files, RECORDS, n)
    assert len(shares) == n
    covered = {p: [] for p, _ in files}
    for share in shares:
        for r in share:
            assert r.start % 10 == 0 and r.end % 10 == 0 and r.end > r.start
            covered[r.path].append((r.start, r.end))
    for path, size in files:
        spans = sorted(covered[path])
        assert sum(e - s for s, e in spans) == size
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    loads = [sum(r.size_bytes for r in share) for share in shares]
    assert max(loads) - min(loads) <= 10  # shares differ by at most one record
    # In share order the ranges are in (file, offset) order: a sort's inputs stay in order.
    flat = [r for share in shares for r in share]
    assert flat == sorted(flat)


def test_one_large_file_feeds_many_instances_and_split_bytes_sets_the_count():
    shares = split_ranges([("/big", 1000 * 100)], SplitSpec(format="records", record_bytes=100,
                                                           split_bytes=10_000), None)
    assert len(shares) == 10 and all(len(s) == 1 for s in shares)
    assert [s[0].start for s in shares] == list(range(0, 100_000, 10_000))
    assert split_ranges([("/e", 0)], RECORDS, 3) == [[], [], []]


def test_a_file_of_partial_records_is_refused_with_its_name():
    with pytest.raises(BadInput, match="/d/x is 25 bytes, not a multiple of record_bytes=10"):
        split_ranges([("/d/x", 25)], RECORDS, 2)


@pytest.mark.parametrize("n", [0, -1, True, "2", 10**6])
def test_garbage_instance_counts_are_refused(n):
    with pytest.raises((BadInput, LimitExceeded)):
        split_ranges([("/a", 100)], RECORDS, n)


def test_ranges_round_trip_through_the_plan_string_and_garbage_is_refused():
    r = ByteRange("pangu://c/a:b/range:x", 100, 200)
    assert decode_input(encode_range(r)) == r
    assert decode_input("/plain/file") is None
    for bad in ("range:", "range:1:2", "range:a:2:/x", "range:5:2:/x", "range:1:2:",
                "range:" + "9" * 20 + ":1:/x"):
        with pytest.raises(BadInput):
            decode_input(bad)


@pytest.mark.parametrize("bad,what", [
    ({"format": "records"}, "needs record_bytes"),
    ({"format": "lines", "record_bytes": 3}, "only for format 'records'"),
    ({"format": "zip"}, "expected 'files', 'records' or 'lines'"),
    ({"format": "records", "record_bytes": 0}, "greater than or equal to 1"),
    ({"format": "records", "record_bytes": "100"}, "expected an integer"),
    ({"format": "records", "record_bytes": 2**40}, "less than or equal"),
    ({"format": "lines", "split_bytes": 1}, "greater than or equal"),
    ({"format": "lines", "extra": 1}, "extra"),
    ("lines", "mapping"),
])
def test_garbage_split_options_are_refused_naming_the_field(bad, what):
    with pytest.raises(SpecError, match=what):
        spec_from_dict({"name": "x", "tasks": {"a": {"fn": FN, "input": "x", "split": bad}}})


def test_split_and_output_format_only_where_they_mean_something():
    with pytest.raises(SpecError, match="split on a task with no `input`"):
        spec_from_dict({"name": "x", "tasks": {"a": {"fn": FN, "instances": 1,
                                                     "split": {"format": "lines"}}}})
    with pytest.raises(SpecError, match="output_format on a task with no `output`"):
        spec_from_dict({"name": "x", "tasks": {"a": {"fn": FN, "instances": 1,
                                                     "output_format": "arrow"}}})
    with pytest.raises(SpecError, match="output_format.format"):
        spec_from_dict({"name": "x", "tasks": {"a": {"fn": FN, "instances": 1, "output": "o",
                                                     "output_format": "csv"}}})
    with pytest.raises(SpecError, match="'direct' without exactly one"):
        spec_from_dict({"name": "x", "tasks": {
            "a": {"fn": FN, "instances": 1},
            "b": {"fn": FN, "instances": 2, "depends_on": ["a"], "shuffle": "direct"}}})
    assert OutputFormatSpec(format="records", record_bytes=100).record_bytes == 100


def test_resolve_facts_gives_a_split_task_ranges_of_one_big_file(tmp_path):
    (tmp_path / "big.txt").write_bytes(b"word\n" * 10_000)
    spec = spec_from_dict({"name": "x", "tasks": {"a": {
        "fn": FN, "input": "big.txt", "instances": 4, "split": {"format": "lines"}}}})
    facts = resolve_facts(spec, str(tmp_path))
    plan = build_plan(spec, facts)
    assert plan.task("a").num_instances == 4
    ranges = [decode_input(e) for share in plan.task("a").inputs for e in share]
    assert [(r.start, r.end) for r in ranges] == [(0, 12500), (12500, 25000), (25000, 37500),
                                                  (37500, 50000)]
    assert {r.path for r in ranges} == {str(tmp_path / "big.txt")}


# -- reading ranges ----------------------------------------------------------------------------

def test_line_ranges_read_every_line_exactly_once(tmp_path):
    rng = random.Random(11)
    path = str(tmp_path / "t.txt")
    for trial in range(150):
        lines = [bytes([97 + rng.randrange(3)]) * rng.randint(0, 25)
                 for _ in range(rng.randint(0, 30))]
        data = b"\n".join(lines) + (b"\n" if lines and rng.random() < 0.5 else b"")
        open(path, "wb").write(data)
        old = splits.read_block_bytes
        splits.read_block_bytes = rng.choice([1, 2, 5, 4096])
        try:
            shares = split_ranges([(path, len(data))], LINES, rng.randint(1, 15))
            got = [line for share in shares for r in share for line in splits.read_lines(r)]
        finally:
            splits.read_block_bytes = old
        want = data.split(b"\n")
        if data.endswith(b"\n") or not data:
            want = want[:-1]
        assert got == want, (trial, data, shares)


def test_record_ranges_read_whole_records_in_blocks(tmp_path):
    path = str(tmp_path / "r.bin")
    data = bytes(range(250)) * 4  # 1000 bytes = 100 records of 10
    open(path, "wb").write(data)
    got = b"".join(b for share in split_ranges([(path, 1000)], RECORDS, 3) for r in share
                   for b in splits.read_records(r, 10))
    assert got == data
    with pytest.raises(BadInput, match="record boundary"):
        list(splits.read_records(ByteRange(path, 5, 100), 10))
    with pytest.raises(BadInput, match="not whole"):
        list(splits.read_records(ByteRange(path, 0, 95), 10))
    with pytest.raises(BadInput, match="ended at byte 1000"):
        list(splits.read_records(ByteRange(path, 900, 1100), 10))  # the file shrank
    for width in (0, -1, True, 2**30):
        with pytest.raises(BadInput):
            list(splits.read_records(ByteRange(path, 0, 100), width))


# -- range partitioning and the direct shuffle --------------------------------------------------

def _fsb(values, width):
    return pa.array(values, pa.binary(width))


def test_range_ids_follow_byte_order_including_high_bytes():
    keys = _fsb([b"\x00\x00", b"\x7f\xff", b"\x80\x00", b"\xff\xff", b"\x80\x00"], 2)
    bounds = _fsb([b"\x7f\xff", b"\x80\x01"], 2)
    assert range_partition_ids(keys, bounds).tolist() == [0, 1, 1, 2, 1]
    assert range_partition_ids(keys, _fsb([], 2)).tolist() == [0] * 5
    assert range_partition_ids(pa.array([5, 1, 9]), pa.array([3, 8])).tolist() == [1, 0, 2]


def test_range_garbage_is_refused():
    with pytest.raises(BadInput, match="ascending"):
        range_partition_ids(_fsb([b"a"], 1), _fsb([b"b", b"a"], 1))
    with pytest.raises(BadInput, match="same width"):
        range_partition_ids(_fsb([b"ab"], 2), _fsb([b"a"], 1))
    with pytest.raises(BadInput, match="nulls"):
        range_partition_ids(pa.array([b"a", None], pa.binary(1)), _fsb([b"a"], 1))
    with pytest.raises(BadInput, match="of type"):
        range_partition_ids(pa.array([[1]]), pa.array([[1]]))


def test_direct_shuffle_routes_by_column_drops_it_and_skips_empty_partitions():
    t = pa.table({"v": [1, 2, 3, 4], "_p": pa.array([2, 0, 2, 2], pa.int32())})
    pieces = partition_table(t, "direct", 4, 0, ["_p"])
    assert sorted(pieces) == [0, 2]  # partitions 1 and 3 got no rows: no piece at all
    assert pieces[2].column_names == ["v"] and pieces[2].column("v").to_pylist() == [1, 3, 4]
    for bad_t, by, what in [
        (t, ["nope"], "no such column"),
        (pa.table({"v": [1], "_p": [4]}), ["_p"], r"expected values in \[0, 4\)"),
        (pa.table({"v": [1], "_p": [-1]}), ["_p"], "expected values"),
        (pa.table({"v": [1], "_p": ["0"]}), ["_p"], "integer column"),
        (pa.table({"v": [1], "_p": pa.array([None], pa.int32())}), ["_p"], "integer column"),
        (t, ["_p", "v"], "exactly one"),
        (t, None, "exactly one"),
    ]:
        with pytest.raises(BadInput, match=what):
            partition_table(bad_t, "direct", 4, 0, by)


# -- writers -----------------------------------------------------------------------------------

def _records_table(n, width=(4, 6)):
    rng = np.random.default_rng(n)
    cols = {f"c{i}": pa.array([rng.bytes(w) for _ in range(n)], pa.binary(w))
            for i, w in enumerate(width)}
    return pa.table(cols)


@pytest.mark.parametrize("fmt,width", [("parquet", None), ("arrow", None), ("records", 10)])
def test_each_format_commits_atomically_and_reads_back(tmp_path, fmt, width):
    loc = OutputLocation(str(tmp_path / "o"))
    loc.prepare(fmt=fmt, record_bytes=width)
    t = _records_table(50)
    t2 = _records_table(7)
    for i, table in enumerate((t, t2)):
        info = OutputLocation(loc.url).write_attempt("w", i, 0, table)  # a fresh handle: _FORMAT
        assert info["path"].endswith(f".{fmt}") and info["rows"] == table.num_rows
    OutputLocation(loc.url).write_attempt("w", 0, 1, t)  # a backup of instance 0
    assert loc.commit("w", 0, 0) and not loc.commit("w", 0, 1) and loc.commit("w", 1, 0)
    loc.discard("w", 0, 1)
    assert OutputLocation(loc.url).finalize(2) == {
        "num_parts": 2, "rows": 57, "bytes": sum(os.path.getsize(tmp_path / "o" / f"part-0000{i}.{fmt}")
                                                 for i in range(2))}
    back = OutputLocation(loc.url).read()
    if fmt == "records":
        joined = b"".join(records_bytes(x, 10) for x in (t, t2))
        assert b"".join(back.column("record").to_pylist()) == joined
        assert os.path.getsize(tmp_path / "o" / "part-00000.records") == 500
    else:
        assert back.equals(pa.concat_tables([t, t2]))
    assert ("_FORMAT" in os.listdir(tmp_path / "o")) == (fmt != "parquet")


def test_records_writer_refuses_rows_that_are_not_records(tmp_path):
    loc = OutputLocation(str(tmp_path / "o"))
    loc.prepare(fmt="records", record_bytes=10)
    for bad, what in [
        (pa.table({"a": [1, 2]}), "fixed-size binary"),
        (_records_table(3, (4, 4)), "8 bytes a row"),
        (pa.table({"a": pa.array([b"0123456789", None], pa.binary(10))}), "nulls"),
    ]:
        with pytest.raises(BadInput, match=what):
            loc.write_attempt("w", 0, 0, bad)
    assert not os.path.exists(tmp_path / "o" / "_attempts" / "w-00000-a0.records")
    assert records_bytes(_records_table(0), 10) == b""


@pytest.mark.parametrize("text", ["", "{", "[]", '{"format": "csv"}', '{"format": "records"}',
                                  '{"format": "arrow", "record_bytes": 5}', "x" * 5000])
def test_a_damaged_format_file_is_a_clear_error(tmp_path, text):
    loc = OutputLocation(str(tmp_path / "o"))
    loc.prepare()
    (tmp_path / "o" / "_FORMAT").write_text(text)
    with pytest.raises(BadInput, match="_FORMAT"):
        OutputLocation(loc.url).write_attempt("w", 0, 0, _records_table(1))


def test_prepare_refuses_garbage_formats(tmp_path):
    loc = OutputLocation(str(tmp_path / "o"))
    for fmt, width in [("csv", None), ("records", None), ("records", 0), ("arrow", 10),
                       ("records", True)]:
        with pytest.raises(BadInput):
            loc.prepare(fmt=fmt, record_bytes=width)
    assert not os.path.exists(tmp_path / "o")


def test_overwrite_replaces_the_format(tmp_path):
    loc = OutputLocation(str(tmp_path / "o"))
    loc.prepare(fmt="arrow")
    loc.write_attempt("w", 0, 0, _records_table(2))
    OutputLocation(loc.url).prepare(overwrite=True)
    assert os.listdir(tmp_path / "o") == []
    assert OutputLocation(loc.url).format == {"format": "parquet", "record_bytes": None}
    assert json.loads(json.dumps(OutputLocation(loc.url).format))["format"] == "parquet"

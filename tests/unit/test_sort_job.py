"""The sort jobs' task functions (jobs/sort) without a cluster: generator -> sort ->
validator run in-process through the real data path (byte-range splits, range partition
ids, the ``direct`` shuffle, the raw-records writer), and the validator catching a wrong
output (negative controls)."""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pytest

from fuxi.core.inputsplit import ByteRange, SplitSpec, split_ranges
from fuxi.errors import BadInput
from fuxi.io.inputs import expand_inputs
from fuxi.core.plan import Edge
from fuxi.io.mapout import MapOutput
from fuxi.io.output import OutputLocation
from fuxi.io.shuffle import concat_tables, partition_table
from jobs.sort import gen, records, sort, validate

RECORDS = SplitSpec(format="records", record_bytes=100)


@dataclass
class Ctx:
    task: str
    instance: int
    num_instances: int
    params: dict = field(default_factory=dict)
    input_splits: list = field(default_factory=list)
    upstream: list = field(default_factory=list)
    output: str | None = None
    emitted: list = field(default_factory=list)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("sort.test"))
    map_output: MapOutput | None = None  # the platform's map output, as the worker gives it

    def bound_emit(self, held_bytes):
        if self.map_output is not None:
            self.map_output.held_bytes_max = held_bytes

    @property
    def map_stats(self):
        return None if self.map_output is None else self.map_output.stats()

    @property
    def input_paths(self):
        return list(dict.fromkeys(r.path for r in self.input_splits))

    def emit(self, t):
        if self.map_output is not None:
            self.map_output.add(t)
        else:
            self.emitted.append(t)

    def read_upstream(self):
        return concat_tables(self.upstream)

    def iter_upstream(self, block_rows=37):  # small blocks, as a stream of pieces would come
        for t in self.upstream:
            for s in range(0, t.num_rows, block_rows):
                yield t.slice(s, block_rows)

    def result(self, returned=None):
        if returned is not None:
            self.emitted.append(returned)
        return concat_tables(self.emitted)


def _commit(loc: OutputLocation, task: str, tables: list[pa.Table]) -> None:
    for i, t in enumerate(tables):
        loc.write_attempt(task, i, 0, t)
        assert loc.commit(task, i, 0)
    loc.finalize(len(tables))


def _splits(pattern: str, n: int) -> list[list[ByteRange]]:
    files = expand_inputs(pattern, "/")
    return split_ranges([(f.path, f.size_bytes) for f in files], RECORDS, n)


def run_gen(out: str, size: int, files: int, seed: int = 1, skew: float = 0) -> None:
    loc = OutputLocation(out)
    loc.prepare(fmt="records", record_bytes=100)
    params = {"size": size, "seed": seed, "skew": skew}
    tables = []
    for i in range(files):
        ctx = Ctx("gen", i, files, params, output=loc.url)
        gen.gen_part(ctx)
        tables.append(ctx.result())
    _commit(loc, "gen", tables)


def run_sort(src: str, out: str, maps: int, reducers: int, streamed: bool = False,
             spill_dir: str | None = None, **params) -> list[dict]:
    """The sort job in-process; ``streamed``: each map's output partitioned as emitted by the
    worker's ``MapOutput`` (under ``params['map_memory']``), else partitioned whole at the end.
    Returns each map's ``map_stats``."""
    params = {"reducers": reducers, **params}
    s = Ctx("sample", 0, 1, params, input_splits=_splits(f"{src}/part-*", 1)[0])
    bounds = s.result(sort.sample(s))
    pieces: dict[int, list] = {r: [] for r in range(reducers)}
    stats = []
    edge = Edge("partition", "sort", "direct", ("_part",), reducers)
    for m, share in enumerate(_splits(f"{src}/part-*", maps)):
        mo = MapOutput(edge, m, maps, spill_dir=spill_dir) if streamed else None
        ctx = Ctx("partition", m, maps, params, input_splits=share, upstream=[bounds],
                  map_output=mo)
        sort.partition(ctx)
        if mo is not None:
            got = mo.pieces()
            stats.append(ctx.map_stats)
        else:
            got = partition_table(ctx.result(), "direct", reducers, m, ["_part"])
        for p, piece in got.items():
            assert "_part" not in piece.column_names
            assert piece.num_rows > 0 or p % maps == m  # only the schema-carrying empty ones
            pieces[p].append(piece)
    loc = OutputLocation(out)
    loc.prepare(fmt="records", record_bytes=100)
    tables = [Ctx("sort", r, reducers, params, upstream=pieces[r]) for r in range(reducers)]
    _commit(loc, "sort", [c.result(sort.sort_range(c)) for c in tables])
    return stats


def run_validate(sorted_dir: str, expect: str, checkers: int) -> dict:
    reports = []
    for i, share in enumerate(_splits(f"{sorted_dir}/part-*", checkers)):
        c = Ctx("check", i, checkers, input_splits=share)
        reports.append(c.result(validate.check(c)))
    e = Ctx("expected", 0, 1, input_splits=[ByteRange(p, 0, None) for p in
                                             sorted(glob.glob(f"{expect}/_checksum/*.json"))])
    want = e.result(validate.expected(e))
    v = Ctx("verdict", 0, 1, upstream=reports + [want])
    return v.result(validate.verdict(v)).to_pylist()[0]


def _all_records(directory: str) -> np.ndarray:
    data = b"".join(open(p, "rb").read() for p in sorted(glob.glob(f"{directory}/part-*")))
    return records.rows_of_bytes(data)


@pytest.mark.parametrize("skew", [0, 4])
def test_gen_sort_validate_round_trip(tmp_path, skew):
    src, out = str(tmp_path / "in"), str(tmp_path / "sorted")
    run_gen(src, size=300 * 100 + 57, files=3, seed=7, skew=skew)  # 57: a part record dropped
    assert sorted(os.listdir(src)) == ["_FORMAT", "_SUCCESS", "_checksum", "part-00000.records",
                                       "part-00001.records", "part-00002.records"]
    original = _all_records(src)
    assert original.shape == (300, 100)
    run_sort(src, out, maps=4, reducers=5)
    result = _all_records(out)
    assert records.is_sorted(result)
    # Exactly the same records (as a multiset), in key order.
    want = original[records.sort_order(original)]
    assert np.array_equal(result[:, :10], want[:, :10])
    assert sorted(map(bytes, result)) == sorted(map(bytes, original))
    verdict = run_validate(out, src, checkers=3)
    assert verdict["ok"] and verdict["records"] == 300
    assert OutputLocation(out).finalize(5)["rows"] == 300


def test_generator_is_deterministic_and_seed_and_skew_change_it(tmp_path):
    run_gen(str(tmp_path / "a"), 5000, 2, seed=3)
    run_gen(str(tmp_path / "b"), 5000, 2, seed=3)
    run_gen(str(tmp_path / "c"), 5000, 2, seed=4)
    run_gen(str(tmp_path / "d"), 5000, 2, seed=3, skew=4)
    a, b, c, d = (_all_records(str(tmp_path / x)) for x in "abcd")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # Skewed keys crowd the low end: most first bytes are small.
    assert np.median(d[:, 0]) < 40 < np.median(a[:, 0])


def test_validator_catches_unsorted_lost_and_changed_records(tmp_path):
    src, out = str(tmp_path / "in"), str(tmp_path / "sorted")
    run_gen(src, 200 * 100, 2, seed=5)
    run_sort(src, out, maps=2, reducers=3)
    assert run_validate(out, src, 2)["ok"]
    parts = sorted(glob.glob(f"{out}/part-*"))
    good = [open(p, "rb").read() for p in parts]

    def broken(i, data):
        for p, g in zip(parts, good):
            open(p, "wb").write(g)
        open(parts[i], "wb").write(data)
        with pytest.raises(BadInput) as e:
            run_validate(out, src, 2)
        return str(e.value)

    swapped = good[0][100:200] + good[0][:100] + good[0][200:]
    assert "out of order" in broken(0, swapped)
    assert "records, expected 200" in broken(1, good[1][100:])  # a lost record
    changed = bytearray(good[2])
    changed[-1] ^= 1  # a payload bit: keys still sorted, the checksum is not
    assert "checksum" in broken(2, bytes(changed))
    # Files swapped: each sorted inside, not across.
    open(parts[0], "wb").write(good[2])
    open(parts[2], "wb").write(good[0])
    with pytest.raises(BadInput, match="below the end"):
        run_validate(out, src, 2)


def test_checksum_is_order_independent_and_sensitive():
    rows = records.generate(1, 0, 0, 1000, 0)
    n, s = records.checksum(rows)
    assert n == 1000
    assert records.checksum(rows[::-1].copy()) == (n, s)
    other = rows.copy()
    other[10, 99] ^= 0x80
    assert records.checksum(other)[1] != s
    dup = rows.copy()
    dup[1] = dup[0]
    assert records.checksum(dup)[1] != s


def test_sort_order_handles_ties_in_the_first_eight_bytes():
    rows = records.generate(2, 0, 0, 500, 0)
    rows[:, :8] = 7  # every key ties on its first 8 bytes: bytes 8-9 decide
    order = records.sort_order(rows)
    assert records.is_sorted(rows[order])
    keys = [bytes(r[:10]) for r in rows[order]]
    assert keys == sorted(keys)


@pytest.mark.parametrize("value,expected", [
    (100, 100), ("1KiB", 1024), ("2 MiB", 2 * 1024**2), ("1GiB", 1024**3), ("10MB", 10**7),
    ("1.5k", 1536)])
def test_sizes_parse(value, expected):
    assert records.parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "abc", "-1", "1XB", 0, True, "2TiB", 10**15, "1e9"])
def test_garbage_sizes_are_refused(value):
    with pytest.raises(BadInput):
        records.parse_size(value)


def test_garbage_generator_and_sort_params_are_refused(tmp_path):
    for params in ({"size": "1MiB", "seed": "x"}, {"size": "1MiB", "skew": -1},
                   {"size": "1MiB", "skew": True}, {"size": 50}):
        with pytest.raises(BadInput):
            gen.gen_part(Ctx("gen", 0, 1, params))
    for r in (0, -1, "4", None, True, sort.reducers_max + 1):
        with pytest.raises(BadInput):
            sort.sample(Ctx("sample", 0, 1, {"reducers": r}))


def test_damaged_checksum_files_are_refused(tmp_path):
    p = tmp_path / "part-00000.json"
    for text in ("", "{}", '{"records": 1, "sum": "zz"}', '{"records": -1, "sum": "00"}',
                 "[1,2]", '{"records": 1, "sum": "1' + "0" * 16 + '"}'):
        p.write_text(text)
        with pytest.raises(BadInput, match="damaged"):
            gen.read_checksum_files([str(p)])
    with pytest.raises(BadInput):
        gen.read_checksum_files([])


def test_boundaries_cut_equal_shares():
    keys = records.generate(3, 0, 0, 4000, 0)[:, :10]
    b = sort.boundaries(keys, 4)
    assert b.shape == (3, 10)
    from fuxi.io.shuffle import range_partition_ids

    ids = range_partition_ids(records.keys_table(np.ascontiguousarray(
        np.hstack([keys, np.zeros((4000, 90), np.uint8)]))),
        pa.FixedSizeBinaryArray.from_buffers(pa.binary(10), 3, [None, pa.py_buffer(b.tobytes())]))
    counts = np.bincount(ids, minlength=4)
    assert all(900 <= c <= 1100 for c in counts), counts
    assert sort.boundaries(keys, 1).shape == (0, 10)


@pytest.mark.parametrize("skew", [0, 4])
def test_map_side_bound_with_tiny_blocks_spills_and_sorts_everything(tmp_path, monkeypatch,
                                                                      skew):
    """Maps read 10-record blocks and hold at most 64 KiB (the floor) of partitioned records:
    they spill many times, never hold much more than the bound, and the output is sorted,
    complete and checksum-equal to the input (also for skewed keys, with sort spills too)."""
    from fuxi.io import splits
    from fuxi.io.mapout import MAP_HELD_BYTES_MIN

    monkeypatch.setattr(splits, "read_block_bytes", 1000)
    src, out = str(tmp_path / "in"), str(tmp_path / "sorted")
    run_gen(src, size=6000 * 100, files=3, seed=11, skew=skew)
    spill = tmp_path / "mapspill"
    stats = run_sort(src, out, maps=2, reducers=5, streamed=True, spill_dir=str(spill),
                     map_memory=MAP_HELD_BYTES_MIN, sort_memory="64KiB")
    assert sum(s["rows"] for s in stats) == 6000
    for s in stats:  # 300 KB per map over a 64 KiB bound: spilled, and held little
        assert s["spills"] >= 3
        assert s["held_bytes_peak"] <= MAP_HELD_BYTES_MIN + 1000 + 5 * 100
    assert os.listdir(spill) == []  # spill files are unlinked once mapped
    result = _all_records(out)
    assert result.shape == (6000, 100) and records.is_sorted(result)
    verdict = run_validate(out, src, checkers=2)
    assert verdict["ok"] and verdict["records"] == 6000


def test_streamed_map_output_equals_whole_partitioning(tmp_path):
    """Partitioning block by block (with spills) gives the same pieces, row for row, as
    partitioning the whole output at the end; hash edges too; the schema-carrying empty
    pieces are the same."""
    rng = np.random.default_rng(5)
    n = 5000
    t = pa.table({"k": pa.array(rng.integers(0, 50, n)), "v": pa.array(rng.random(n)),
                  "_part": pa.array(rng.integers(0, 3, n).astype(np.int32))})  # 3 of 7 used
    for edge in (Edge("a", "b", "direct", ("_part",), 7), Edge("a", "b", "hash", ("k",), 7)):
        mo = MapOutput(edge, 2, 4, held_bytes_max=64 * 1024, spill_dir=str(tmp_path))
        for s in range(0, n, 333):
            mo.add(t.slice(s, 333))
        assert mo.spills >= 1
        want = partition_table(t, edge.mode, 7, 2, list(edge.partition_by), 4)
        got = mo.pieces()
        assert sorted(got) == sorted(want)
        for p in want:
            assert got[p].to_pylist() == want[p].to_pylist(), (edge.mode, p)
            assert got[p].schema == want[p].schema


@pytest.mark.parametrize("bad", [0, 1000, -1, True, "64MiB", 2**40, None])
def test_map_memory_bound_refuses_garbage(bad):
    with pytest.raises(BadInput, match="map memory bound"):
        MapOutput(Edge("a", "b", "direct", ("_part",), 2), 0, 1, held_bytes_max=bad)


def test_map_output_refuses_whole_table_modes():
    with pytest.raises(BadInput, match="block by block"):
        MapOutput(Edge("a", "b", "broadcast", (), 2), 0, 1)


def test_read_ahead_keeps_order_raises_where_it_failed_and_refuses_bad_depth():
    from fuxi.io.splits import READ_AHEAD_BLOCKS_MAX, read_ahead

    assert list(read_ahead(iter(range(100)), 3)) == list(range(100))

    def failing():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in read_ahead(failing(), 1):
            got.append(x)
    assert got == [1, 2]
    for bad in (0, READ_AHEAD_BLOCKS_MAX + 1, True, "2"):
        with pytest.raises(BadInput, match="read-ahead depth"):
            read_ahead(iter(()), bad).__next__()

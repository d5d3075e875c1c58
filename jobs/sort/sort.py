"""The sort (``sort.yaml``): sample keys, cut the key space into ranges, route each record to
its range's instance, sort each range, write the ranges in key order.

* ``sample`` (one instance, all inputs): reads :data:`sample_windows` windows of
  :data:`sample_window_records` records spread over each input range, sorts the keys and picks
  ``reducers - 1`` boundaries at equal quantiles;
* ``partition`` (inputs cut into record-aligned byte ranges): reads its ranges in blocks
  (:data:`READ_AHEAD_BLOCKS` read ahead on a thread) and tags each record with its range
  (``fuxi.io.shuffle.range_partition_ids``); the ``direct`` shuffle cuts each block into
  per-instance pieces as it is emitted, holds at most ``params.map_memory`` (default
  :data:`MAP_MEMORY_DEFAULT`) of them and spills the rest to local disk
  (``fuxi.io.mapout``), sends each record to that instance of ``sort``, and makes no piece
  for a range an instance has no record of;
* ``sort`` (``reducers`` instances): reads its records in bounded blocks
  (``ctx.iter_upstream``), sorts them by key (numpy on the first 8 key bytes, a second pass
  only for ties) -- past ``params.sort_memory`` (default :data:`SORT_MEMORY_DEFAULT`) as sorted
  runs spilled under ``params.spill_dir`` (default ``$FUXI_SPILL_DIR`` or the temp dir; a
  ``pangu://`` URL works too) and k-way merged (``jobs.sort.spill``) -- and streams them to its
  output (``ctx.write_output``); output ``records`` makes ``part-NNNNN.records`` in instance
  order, which is key order.

Everything between the stages is Arrow (one ``fixed_size_binary(100)`` column). Each
``partition`` and ``sort`` attempt logs one ``phases {...}`` line (JSON: seconds per phase,
spills, memory bounds), which ``bench/bench_sort.py`` sums into its profile.
"""

from __future__ import annotations

import json
import time
from contextlib import closing

import numpy as np
import pyarrow as pa
import fsspec

from fuxi.errors import BadInput
from fuxi.io.shuffle import range_partition_ids
from fuxi.io.splits import read_ahead, read_records
from jobs.sort.records import (SORT_KEY_BYTES, RECORD_BYTES, keys_table, parse_size,
                               rows_of_bytes, rows_of_table, table_of_rows)
from jobs.sort.spill import RunSorter, default_spill_dir

#: Windows read per input range by the sampler, and records per window.
sample_windows = 16
sample_window_records = 128
#: The most range boundaries (sort instances - 1) the sampler computes.
reducers_max = 10_000
#: Records a ``sort`` instance holds before it spills a sorted run (``params.sort_memory``).
SORT_MEMORY_DEFAULT = "512MiB"
#: Partitioned records a ``partition`` instance holds before it spills (``params.map_memory``).
MAP_MEMORY_DEFAULT = "128MiB"
#: Input blocks (``fuxi.io.splits.read_block_bytes`` each) a ``partition`` reads ahead.
READ_AHEAD_BLOCKS = 2
#: Sorted blocks (``RunSorter.block_records`` records each) the merge runs ahead of the writes.
MERGE_AHEAD_BLOCKS = 2


def _reducers(ctx) -> int:
    r = ctx.params.get("reducers")
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= reducers_max:
        raise BadInput(f"reducers {r!r}: expected an integer from 1 to {reducers_max}")
    return r


def _sample_range(r) -> np.ndarray:
    """Keys of a few windows of records spread evenly over range ``r``."""
    count = (r.end - r.start) // RECORD_BYTES
    if count == 0:
        return np.zeros((0, SORT_KEY_BYTES), dtype=np.uint8)
    window = min(sample_window_records, count)
    starts = sorted({r.start + (count - window) * i // max(sample_windows - 1, 1) * RECORD_BYTES
                     for i in range(sample_windows)})
    keys = []
    with fsspec.open(r.path, "rb") as f:
        for s in starts:
            f.seek(s)
            rows = rows_of_bytes(f.read(window * RECORD_BYTES))
            keys.append(rows[:, :SORT_KEY_BYTES])
    return np.concatenate(keys)


def boundaries(keys: np.ndarray, reducers: int) -> np.ndarray:
    """``reducers - 1`` keys cutting the sampled ``keys`` ((n, 10) uint8) into equal shares."""
    if reducers == 1 or keys.shape[0] == 0:
        return np.zeros((0, SORT_KEY_BYTES), dtype=np.uint8)
    as_bytes = np.ascontiguousarray(keys).view(f"S{SORT_KEY_BYTES}").ravel()
    ordered = np.sort(as_bytes)
    picks = [ordered[len(ordered) * i // reducers] for i in range(1, reducers)]
    return np.frombuffer(b"".join(p.ljust(SORT_KEY_BYTES, b"\0") for p in picks),
                         dtype=np.uint8).reshape(-1, SORT_KEY_BYTES)


def sample(ctx) -> pa.Table:
    """The range boundaries for ``params.reducers`` sort instances, as a ``bound`` column."""
    reducers = _reducers(ctx)
    parts = [_sample_range(r) for r in ctx.input_splits]
    keys = np.concatenate(parts) if parts else np.zeros((0, SORT_KEY_BYTES), dtype=np.uint8)
    bounds = boundaries(keys, reducers)
    ctx.log.info("sampled %d keys, %d boundaries", keys.shape[0], bounds.shape[0])
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(SORT_KEY_BYTES), bounds.shape[0],
                                               [None, pa.py_buffer(bounds.tobytes())])
    return pa.table({"bound": arr})


def _map_memory(ctx) -> int:
    return parse_size(ctx.params.get("map_memory", MAP_MEMORY_DEFAULT))


def partition(ctx) -> None:
    """Tag this instance's records with their sort instance (``_part``) and emit them, block
    by block: the shuffle cuts each block into per-instance pieces as it is emitted and holds
    at most ``params.map_memory`` of them (the rest spilled to local disk), while the next
    block is read ahead from the input."""
    ctx.bound_emit(_map_memory(ctx))
    bounds_table = ctx.read_upstream()
    if "bound" not in bounds_table.column_names:
        bounds = pa.array([], pa.binary(SORT_KEY_BYTES))
    else:
        bounds = bounds_table.column("bound").combine_chunks()
    blocks = read_ahead((b for r in ctx.input_splits for b in read_records(r, RECORD_BYTES)),
                        READ_AHEAD_BLOCKS)
    t = time.perf_counter()
    with closing(blocks):  # stopped early (a failure, a lost race): the reader thread ends
        _route(ctx, blocks, bounds, t)


def _route(ctx, blocks, bounds, t: float) -> None:
    records = 0
    wait_s = route_s = emit_s = 0.0
    for block in blocks:
        t1 = time.perf_counter()
        rows = rows_of_bytes(block)
        ids = range_partition_ids(keys_table(rows), bounds)
        # (pa.array with an explicit type copies element by element: ~0.1 s a 16 MiB block)
        part = pa.array(ids.astype(np.int32, copy=False))
        table = table_of_rows(rows).append_column("_part", part)
        t2 = time.perf_counter()
        ctx.emit(table)
        t3 = time.perf_counter()
        wait_s, route_s, emit_s = wait_s + t1 - t, route_s + t2 - t1, emit_s + t3 - t2
        records += rows.shape[0]
        t = t3
    ctx.log.info("routed %d records over %d ranges", records, len(bounds) + 1)
    ctx.log.info("phases %s", json.dumps({
        "task": "partition", "read_wait_s": round(wait_s, 3), "route_s": round(route_s, 3),
        "emit_s": round(emit_s, 3), **(ctx.map_stats or {})}))


def _sort_params(ctx) -> tuple[int, str]:
    memory = parse_size(ctx.params.get("sort_memory", SORT_MEMORY_DEFAULT))
    spill_dir = ctx.params.get("spill_dir") or default_spill_dir()
    if not isinstance(spill_dir, str):
        raise BadInput(f"spill_dir {spill_dir!r}: expected a directory path or URL")
    return memory, spill_dir


def sort_range(ctx) -> None:
    """This instance's range of records, sorted by key: read in bounded blocks
    (``ctx.iter_upstream``), spilled as sorted runs past ``params.sort_memory`` and merged
    (``jobs.sort.spill``), streamed to the output (or emitted, for a task without one)."""
    memory, spill_dir = _sort_params(ctx)
    out = ctx.write_output if ctx.output else ctx.emit
    read_s = add_s = merge_s = write_s = 0.0
    with RunSorter(memory, spill_dir) as sorter:
        t = time.perf_counter()
        for table in ctx.iter_upstream():  # waiting here: fetching a piece (read_s)
            t1 = time.perf_counter()
            sorter.add(rows_of_table(table))  # sorting and spilling a run past the bound
            t2 = time.perf_counter()
            read_s, add_s, t = read_s + t1 - t, add_s + t2 - t1, t2
        # The merge runs on a thread MERGE_AHEAD_BLOCKS blocks ahead of the output's writes,
        # so merging the next block overlaps writing this one (a Pangu write waits on the
        # chunkservers without the GIL). merge_s: waiting here for the merge.
        with closing(read_ahead(sorter.sorted_blocks(), MERGE_AHEAD_BLOCKS)) as blocks:
            while True:
                t1 = time.perf_counter()
                rows = next(blocks, None)
                t2 = time.perf_counter()
                if rows is None:
                    break
                out(table_of_rows(rows))
                merge_s += t2 - t1
                write_s += time.perf_counter() - t2
        ctx.log.info("sorted %d records (%d sorted runs, %d bytes spilled under %s, memory "
                     "bound %d bytes)", sorter.records, len(sorter.runs),
                     sorter.spilled_bytes, spill_dir, memory)
        ctx.log.info("phases %s", json.dumps({
            "task": "sort", "records": sorter.records, "runs": len(sorter.runs),
            "spilled_bytes": sorter.spilled_bytes, "read_s": round(read_s, 3),
            "add_spill_s": round(add_s, 3), "merge_wait_s": round(merge_s, 3),
            "write_s": round(write_s, 3), "sort_memory": memory}))

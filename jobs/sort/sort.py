"""The sort (``sort.yaml``): sample keys, cut the key space into ranges, route each record to
its range's instance, sort each range, write the ranges in key order.

* ``sample`` (one instance, all inputs): reads :data:`sample_windows` windows of
  :data:`sample_window_records` records spread over each input range, sorts the keys and picks
  ``reducers - 1`` boundaries at equal quantiles;
* ``partition`` (inputs cut into record-aligned byte ranges): reads its ranges in blocks and
  tags each record with its range (``fuxi.io.shuffle.range_partition_ids``); the ``direct``
  shuffle sends each record to that instance of ``sort``, and no piece is made for a range
  an instance has no record of;
* ``sort`` (``reducers`` instances): reads its records in bounded blocks
  (``ctx.iter_upstream``), sorts them by key (numpy on the first 8 key bytes, a second pass
  only for ties) -- past ``params.sort_memory`` (default :data:`SORT_MEMORY_DEFAULT`) as sorted
  runs spilled under ``params.spill_dir`` (default ``$FUXI_SPILL_DIR`` or the temp dir; a
  ``pangu://`` URL works too) and k-way merged (``jobs.sort.spill``) -- and streams them to its
  output (``ctx.write_output``); output ``records`` makes ``part-NNNNN.records`` in instance
  order, which is key order.

Everything between the stages is Arrow (one ``fixed_size_binary(100)`` column).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import fsspec

from fuxi.errors import BadInput
from fuxi.io.shuffle import range_partition_ids
from fuxi.io.splits import read_records
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


def partition(ctx) -> None:
    """Tag this instance's records with their sort instance (``_part``) and emit them."""
    bounds_table = ctx.read_upstream()
    if "bound" not in bounds_table.column_names:
        bounds = pa.array([], pa.binary(SORT_KEY_BYTES))
    else:
        bounds = bounds_table.column("bound").combine_chunks()
    records = 0
    for r in ctx.input_splits:
        for block in read_records(r, RECORD_BYTES):
            rows = rows_of_bytes(block)
            ids = range_partition_ids(keys_table(rows), bounds)
            t = table_of_rows(rows)
            ctx.emit(t.append_column("_part", pa.array(ids, pa.int32())))
            records += rows.shape[0]
    ctx.log.info("routed %d records over %d ranges", records, len(bounds) + 1)


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
    with RunSorter(memory, spill_dir) as sorter:
        for t in ctx.iter_upstream():
            sorter.add(rows_of_table(t))
        for rows in sorter.sorted_blocks():
            out(table_of_rows(rows))
        ctx.log.info("sorted %d records (%d sorted runs, %d bytes spilled under %s, memory "
                     "bound %d bytes)", sorter.records, len(sorter.runs),
                     sorter.spilled_bytes, spill_dir, memory)

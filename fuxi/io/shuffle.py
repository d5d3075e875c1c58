"""Partitioning Arrow data between tasks (pure: pyarrow + numpy, no Ray, no I/O).

A producer instance calls :func:`partition_table` to cut its output into the pieces each
consumer instance should read; a consumer instance calls :func:`concat_tables` on the
pieces it received.

Hashing
-------
:func:`hash_partition_ids` must give the same answer in every process on every machine, so
it never uses Python's ``hash()`` (salted per process by ``PYTHONHASHSEED``). Each key
column is hashed to uint64 with numpy, using splitmix64's finaliser as the mixer:

* integers (signed or unsigned, any width), dates, times, timestamps and durations hash their
  value as a 64-bit integer, so ``int32 7`` and ``int64 7`` land in the same partition even
  when two producers disagree on the width;
* floats hash their float64 bits, with ``-0.0`` folded onto ``0.0`` and every NaN onto one NaN;
* bools hash as 0/1;
* strings and binaries (normal, large, view and fixed-size) hash their UTF-8/raw bytes in one
  vectorised pass over the data buffer: each byte contributes ``mix(byte, position)``, the
  contributions are summed per value (mod 2**64) and the sum is mixed with the length. A
  ``string`` and a ``large_string`` with the same text hash alike;
* dictionary columns hash their dictionary once and gather by index, so they hash exactly
  like the decoded column;
* decimals hash their canonical string form;
* nulls hash to a fixed constant, whatever the column type.

Column hashes are combined in key order (``h = mix(h * PRIME + column_hash)``), and the
partition is ``h % num_partitions``. The values are part of the data format between tasks:
changing the scheme changes which instance reads which key.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fuxi.errors import BadInput, LimitExceeded

__all__ = [
    "MODES",
    "num_partitions_max",
    "hash_partition_ids",
    "range_partition_ids",
    "split_by_ids",
    "partition_table",
    "concat_tables",
    "to_table",
]

#: The largest number of partitions (consumer instances) one split may produce.
num_partitions_max = 100_000

#: Partitioning modes understood by :func:`partition_table`.
MODES = ("hash", "one_to_one", "broadcast", "direct")

#: Key in :func:`partition_table`'s result meaning "every consumer instance reads this".
BROADCAST = -1

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MUL1 = _U64(0xBF58476D1CE4E5B9)
_MUL2 = _U64(0x94D049BB133111EB)
_NULL_HASH = _U64(0x6E756C6C5F6B6579)  # b"null_key": what every null key hashes to
_COMBINE_PRIME = _U64(0x100000001B3)  # FNV-64 prime, to make the column order matter
_SEED = _U64(0x66757869)  # b"fuxi"


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64: ``x + golden`` then its finaliser. uint64 in, uint64 out, wraps mod 2**64."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> _U64(30))) * _MUL1
        z = (z ^ (z >> _U64(27))) * _MUL2
        return z ^ (z >> _U64(31))


def _check_num_partitions(num_partitions: int) -> None:
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)):
        raise BadInput(f"num_partitions must be an int; got {num_partitions!r}")
    if num_partitions < 1:
        raise BadInput(f"num_partitions must be at least 1; got {num_partitions}")
    if num_partitions > num_partitions_max:
        raise LimitExceeded(
            f"num_partitions_max is {num_partitions_max}; got num_partitions={num_partitions}"
        )


# ---------------------------------------------------------------------------------------------
# Hashing one column chunk -> uint64 per row


def _null_mask(arr: pa.Array) -> np.ndarray | None:
    if arr.null_count == 0:
        return None
    return arr.is_null().to_numpy(zero_copy_only=False)


def _hash_ints(values: np.ndarray) -> np.ndarray:
    """Hash integer-valued numpy data by its value as a 64-bit integer."""
    if values.dtype.kind == "u":
        bits = values.astype(np.uint64, copy=False)
    else:
        bits = values.astype(np.int64, copy=False).view(np.uint64)
    return mix64(bits)


def _hash_numeric(arr: pa.Array) -> np.ndarray:
    t = arr.type
    if pa.types.is_floating(t):
        values = pc.fill_null(arr, 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
        values = values + 0.0  # folds -0.0 onto 0.0
        values[np.isnan(values)] = np.nan  # one canonical NaN
        return mix64(values.view(np.uint64))
    if pa.types.is_boolean(t):
        values = pc.fill_null(arr, False).to_numpy(zero_copy_only=False)
        return mix64(values.astype(np.uint64))
    if pa.types.is_temporal(t):
        arr = arr.view(pa.int32() if t.bit_width == 32 else pa.int64())
    values = pc.fill_null(arr, 0).to_numpy(zero_copy_only=False)
    return _hash_ints(values)


def _hash_bytes_layout(arr: pa.Array) -> np.ndarray:
    """Hash a string/binary (or large_*) array from its offsets and data buffers, vectorised.

    Each value is read as little-endian 8-byte words (the last one zero-padded); word ``k`` of
    a value contributes ``mix(word ^ mix(k))``; the contributions are summed per value and the
    sum is mixed with the length. Work is per 8-byte word, not per byte.
    """
    n = len(arr)
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if large else np.int32)
    offsets = offsets[arr.offset : arr.offset + n + 1].astype(np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    offsets -= start
    lengths = np.diff(offsets)
    if end > start:
        data = np.frombuffer(buffers[2], dtype=np.uint8)[start:end]
        padded = np.concatenate((data, np.zeros(7, dtype=np.uint8)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, 8)
        words_per_value = (lengths + 7) // 8
        first_word = np.concatenate(([0], np.cumsum(words_per_value)))
        total_words = int(first_word[-1])
        word_in_value = np.arange(total_words, dtype=np.int64) - np.repeat(
            first_word[:-1], words_per_value
        )
        word_start = np.repeat(offsets[:-1], words_per_value) + 8 * word_in_value
        valid_bytes = np.minimum(8, np.repeat(offsets[1:], words_per_value) - word_start)
        words = np.ascontiguousarray(windows[word_start]).view("<u8").ravel().astype(np.uint64)
        # Keep only the bytes that belong to this value (the window may run into the next).
        with np.errstate(over="ignore"):
            keep = ~_U64(0) >> (_U64(64) - valid_bytes.astype(np.uint64) * _U64(8))
        contrib = mix64((words & keep) ^ mix64(word_in_value.astype(np.uint64)))
        with np.errstate(over="ignore"):
            # Per-value sum through a wrapping prefix sum (reduceat mishandles empty values).
            prefix = np.concatenate(([_U64(0)], np.cumsum(contrib, dtype=np.uint64)))
            sums = prefix[first_word[1:]] - prefix[first_word[:-1]]
    else:
        sums = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return mix64(sums ^ mix64(lengths.astype(np.uint64) * _MUL2))


def _hash_chunk(arr: pa.Array, column: str) -> np.ndarray:
    t = arr.type
    if pa.types.is_dictionary(t):
        dict_hashes = _hash_chunk(arr.dictionary, column)
        indices = pc.fill_null(arr.indices, 0).to_numpy(zero_copy_only=False)
        hashes = (
            dict_hashes[indices.astype(np.int64)]
            if len(dict_hashes)
            else np.zeros(len(arr), np.uint64)
        )
    elif pa.types.is_null(t):
        return np.full(len(arr), _NULL_HASH, dtype=np.uint64)
    elif (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_temporal(t)
    ):
        hashes = _hash_numeric(arr)
    elif pa.types.is_string(t) or pa.types.is_binary(t):
        hashes = _hash_bytes_layout(arr)
    elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        hashes = _hash_bytes_layout(arr)
    elif pa.types.is_string_view(t):
        hashes = _hash_bytes_layout(arr.cast(pa.large_string()))
    elif pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t):
        hashes = _hash_bytes_layout(arr.cast(pa.large_binary()))
    elif pa.types.is_decimal(t):
        hashes = _hash_bytes_layout(arr.cast(pa.large_string()))
    else:
        raise BadInput(
            f"cannot partition by column {column!r} of type {t}; expected an integer, float, "
            "bool, temporal, decimal, string, binary or dictionary column"
        )
    mask = _null_mask(arr)
    if mask is not None:
        hashes = hashes.copy() if not hashes.flags.writeable else hashes
        hashes[mask] = _NULL_HASH
    return hashes


def _hash_column(col: pa.ChunkedArray, column: str) -> np.ndarray:
    if col.num_chunks == 0:
        return np.zeros(0, dtype=np.uint64)
    return np.concatenate([_hash_chunk(chunk, column) for chunk in col.chunks])


def hash_partition_ids(
    table: pa.Table, columns: Sequence[str], num_partitions: int
) -> np.ndarray:
    """Return an int32 partition id in ``[0, num_partitions)`` for every row of ``table``.

    Rows with equal values in ``columns`` get equal ids, in every process and on every machine
    (see the module docstring for the scheme). Nulls are equal to each other.
    """
    _check_num_partitions(num_partitions)
    if isinstance(columns, str):
        columns = [columns]
    columns = list(columns)
    if not columns:
        raise BadInput("hash partitioning needs at least one key column; got none")
    names = table.column_names
    for name in columns:
        if name not in names:
            raise BadInput(
                f"cannot partition by column {name!r}: the table has no such column; "
                f"expected one of {names}"
            )
    h = np.full(table.num_rows, _SEED, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for name in columns:
            h = mix64(h * _COMBINE_PRIME + _hash_column(table.column(name), name))
    return (h % _U64(num_partitions)).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Range partitioning (a sort's partitioner: the producer computes ids, ``direct`` routes them)


def _sortable(arr, column: str) -> np.ndarray:
    """Values of a key column as a numpy array whose order is the column's byte/number order."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if not isinstance(arr, pa.Array):
        arr = pa.array(arr)
    if arr.null_count:
        raise BadInput(f"cannot range-partition by column {column!r}: it has "
                       f"{arr.null_count} nulls; expected no nulls")
    t = arr.type
    if pa.types.is_fixed_size_binary(t):
        width = t.byte_width
        data = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
        data = data[arr.offset * width:(arr.offset + len(arr)) * width]
        # Equal-width 'S' strings compare like memcmp (trailing NULs only pad equal widths).
        return data.view(f"S{width}") if width else np.zeros(len(arr), "S1")
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return arr.to_numpy(zero_copy_only=False)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return np.array(arr.to_pylist(), dtype=object)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.array([v.encode() for v in arr.to_pylist()], dtype=object)
    raise BadInput(f"cannot range-partition by column {column!r} of type {t}; expected "
                   "fixed-size binary, binary, string, integer or float")


def range_partition_ids(keys, boundaries, column: str = "key") -> np.ndarray:
    """An int32 partition id per key: the number of ``boundaries`` that are ``<= key``.

    ``boundaries`` (``R - 1`` of them for ``R`` partitions, ascending) cut the key space into
    ranges: partition ``p`` holds keys in ``[boundaries[p-1], boundaries[p])``, so reading the
    partitions in order reads the keys in order. Bytes compare byte by byte (unsigned).
    """
    values = _sortable(keys, column)
    bounds = _sortable(boundaries, "boundaries")
    _check_num_partitions(len(bounds) + 1)
    if len(bounds) > 1 and not bool(np.all(bounds[:-1] <= bounds[1:])):
        raise BadInput("range boundaries must be in ascending order; got them out of order")
    if values.dtype.kind == "S" and bounds.dtype.kind == "S" and values.dtype != bounds.dtype:
        raise BadInput(f"keys of column {column!r} are {values.dtype.itemsize} bytes but the "
                       f"boundaries {bounds.dtype.itemsize}; expected the same width")
    return np.searchsorted(bounds, values, side="right").astype(np.int32)


def _direct_ids(table: pa.Table, column: str, num_partitions: int) -> np.ndarray:
    if column not in table.column_names:
        raise BadInput(f"cannot route by column {column!r}: the table has no such column; "
                       f"expected one of {table.column_names}")
    col = table.column(column)
    if not pa.types.is_integer(col.type) or col.null_count:
        raise BadInput(f"shuffle 'direct' routes by column {column!r}, which must be an integer "
                       f"column without nulls; got {col.type} with {col.null_count} nulls")
    ids = col.to_numpy()
    if ids.size and (ids.min() < 0 or ids.max() >= num_partitions):
        raise BadInput(f"column {column!r} holds consumer instances in [{ids.min()}, "
                       f"{ids.max()}]; expected values in [0, {num_partitions})")
    return ids.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Splitting


def split_by_ids(table: pa.Table, ids: np.ndarray, num_partitions: int) -> list[pa.Table]:
    """Cut ``table`` into ``num_partitions`` tables; row ``i`` goes to table ``ids[i]``.

    Rows keep their relative order inside each partition. One stable argsort and one take,
    then zero-copy slices, instead of one filter per partition.
    """
    _check_num_partitions(num_partitions)
    ids = np.asarray(ids)
    if ids.shape != (table.num_rows,):
        raise BadInput(
            f"ids must have one entry per row; got shape {ids.shape} for {table.num_rows} rows"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= num_partitions):
        raise BadInput(
            f"partition ids must be in [0, {num_partitions}); got values in "
            f"[{ids.min()}, {ids.max()}]"
        )
    if ids.size == 0:
        return [table.slice(0, 0) for _ in range(num_partitions)]
    order = np.argsort(ids, kind="stable")
    ordered = table.take(pa.array(order))
    counts = np.bincount(ids, minlength=num_partitions)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return [ordered.slice(int(s), int(c)) for s, c in zip(starts, counts)]


def partition_table(
    table: pa.Table,
    mode: str,
    num_partitions: int,
    source_instance: int,
    partition_by: Sequence[str] | None,
    num_sources: int | None = None,
) -> dict[int, pa.Table]:
    """The pieces that producer instance ``source_instance`` sends to a consumer task.

    ``num_sources`` (the producer task's instance count): with ``hash`` and ``direct``, the
    producer also keeps the 0-row piece of each partition ``p`` with ``p % num_sources ==
    source_instance``, so that every consumer instance receives at least one piece and reads
    the producers' schema even when no producer had a row for it -- at most one empty object
    per consumer instance, never M*R.

    * ``"hash"``: ``{p: rows whose partition_by key hashes to p}``; a partition without
      rows gets no piece at all (no object for it in the store: with M producers and R
      consumers most of the M*R pieces of a small or skewed job are empty).
    * ``"direct"``: ``{p: rows whose partition_by column holds p}`` (the producer chose each
      row's consumer, e.g. by :func:`range_partition_ids`); that column is dropped from the
      pieces; no piece for a partition without rows.
    * ``"one_to_one"``: ``{source_instance % num_partitions: table}``.
    * ``"broadcast"``: ``{-1: table}``, meaning every consumer instance reads it.
    """
    _check_num_partitions(num_partitions)
    if mode == "hash":
        if not partition_by:
            raise BadInput(
                "mode 'hash' needs partition_by (the key columns); got "
                f"{partition_by!r}; expected a non-empty list of column names"
            )
        ids = hash_partition_ids(table, partition_by, num_partitions)
        return _kept(split_by_ids(table, ids, num_partitions), source_instance, num_sources)
    if mode == "direct":
        if not partition_by or len(partition_by) != 1:
            raise BadInput(f"mode 'direct' needs exactly one partition_by column (the consumer "
                           f"instance of each row); got {partition_by!r}")
        ids = _direct_ids(table, partition_by[0], num_partitions)
        pieces = split_by_ids(table.drop_columns([partition_by[0]]), ids, num_partitions)
        return _kept(pieces, source_instance, num_sources)
    if mode == "one_to_one":
        if source_instance < 0:
            raise BadInput(f"source_instance must be >= 0; got {source_instance}")
        return {source_instance % num_partitions: table}
    if mode == "broadcast":
        return {BROADCAST: table}
    raise BadInput(f"unknown partition mode {mode!r}; expected one of {list(MODES)}")


def _kept(pieces: list[pa.Table], source: int, num_sources: int | None) -> dict[int, pa.Table]:
    """The non-empty pieces, and the empty ones this producer carries the schema for."""
    if num_sources is not None and (isinstance(num_sources, bool) or not isinstance(num_sources, int)
                                    or not 0 < num_sources <= num_partitions_max):
        raise BadInput(f"num_sources must be an integer from 1 to {num_partitions_max}; "
                       f"got {num_sources!r}")
    return {p: t for p, t in enumerate(pieces)
            if t.num_rows or (num_sources is not None and p % num_sources == source % num_sources)}


# ---------------------------------------------------------------------------------------------
# Gathering and conversion


def concat_tables(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenate pieces received from producers, promoting schemas (``promote_options="default"``:
    a column missing from some pieces becomes null there; null-typed columns widen).

    Tables with no columns and no rows carry nothing and are skipped; with nothing left the
    result is an empty ``pa.table({})``.
    """
    pieces = [to_table(t) for t in tables]
    pieces = [t for t in pieces if t.num_columns or t.num_rows]
    if not pieces:
        return pa.table({})
    if len(pieces) == 1:
        return pieces[0]
    try:
        return pa.concat_tables(pieces, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        schemas = "; ".join(
            sorted({str(t.schema).replace("\n", ", ") for t in pieces})
        )
        raise BadInput(
            f"cannot concatenate tables with incompatible schemas ({e}); got schemas: "
            f"{schemas}; expected the same type for each column name"
        ) from e


def to_table(obj) -> pa.Table:
    """Turn what a task function returned or emitted into a ``pa.Table``.

    Accepts ``pa.Table``, ``pa.RecordBatch``, a list/tuple of ``RecordBatch``, a dict of
    columns, or a ``pandas.DataFrame`` (only when pandas is already imported — a DataFrame
    cannot exist otherwise, so this module never imports pandas itself).
    """
    if isinstance(obj, pa.Table):
        return obj
    if isinstance(obj, pa.RecordBatch):
        return pa.Table.from_batches([obj])
    if isinstance(obj, (list, tuple)) and all(isinstance(b, pa.RecordBatch) for b in obj):
        if not obj:
            return pa.table({})
        try:
            return pa.Table.from_batches(list(obj))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise BadInput(f"cannot combine record batches: {e}; expected one schema") from e
    if isinstance(obj, dict):
        try:
            return pa.table(obj)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise BadInput(
                f"cannot make a table from a dict with keys {list(obj)[:10]}: {e}; expected "
                "equal-length columns of one type each"
            ) from e
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(obj, pandas.DataFrame):
        return pa.Table.from_pandas(obj).replace_schema_metadata(None)
    raise BadInput(
        f"cannot make a table from {type(obj).__module__}.{type(obj).__qualname__}; expected "
        "pyarrow.Table, pyarrow.RecordBatch, a list of RecordBatch, a dict of columns or a "
        "pandas.DataFrame"
    )

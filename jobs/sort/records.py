"""The sort benchmark's records and the helpers the sort jobs share (numpy + pyarrow only).

A record is :data:`RECORD_BYTES` (100) bytes: a :data:`SORT_KEY_BYTES` (10) byte key then a 90-byte
payload, as in the Sort Benchmark's ``gensort`` format. Keys compare as unsigned bytes.

In tables a record is one ``record`` column of ``fixed_size_binary(100)``; as numpy, an
``(n, 100)`` uint8 array. The order-independent checksum of a set of records is the count and
the sum, mod 2**64, of a 64-bit hash of each record (:func:`checksum`), so any permutation of
the same records — a sorted output — checksums alike, and a lost, duplicated or changed record
shows.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from fuxi.errors import BadInput
# The record format and its checksum are defined once, where `fuxi validate` reads them.
from fuxi.io.valsort import (RECORD_BYTES, SORT_KEY_BYTES, add_checksums,  # noqa: F401
                             check_rows, checksum, record_hashes)

PAYLOAD_BYTES = RECORD_BYTES - SORT_KEY_BYTES
RECORD_TYPE = pa.binary(RECORD_BYTES)
SCHEMA = pa.schema([("record", RECORD_TYPE)])

#: The largest data set the generator will write (a `size` parameter above is refused).
gen_bytes_max = 1024**4
#: The most records one generator instance makes in one block (bounds its memory).
gen_block_records_max = 1 << 20

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kib|mib|gib|tib|kb|mb|gb|tb|k|m|g|t)?\s*$", re.I)
_UNITS = {None: 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2,
          "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3, "t": 1024**4,
          "tib": 1024**4, "tb": 1000**4}



def parse_size(value) -> int:
    """Bytes from ``1073741824``, ``"1GiB"``, ``"512 MiB"``, ``"10MB"``; bounded by
    :data:`gen_bytes_max`."""
    if isinstance(value, bool):
        raise BadInput(f"size {value!r}: expected a number of bytes or e.g. '1GiB'")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE_RE.match(str(value))
        if m is None:
            raise BadInput(f"size {str(value)[:40]!r}: expected a number of bytes or e.g. "
                           "'1GiB', '512MiB', '10MB'")
        n = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower() or None])
    if not 0 < n <= gen_bytes_max:
        raise BadInput(f"size {value!r} is {n} bytes; expected 1 to {gen_bytes_max} "
                       "(gen_bytes_max)")
    return n


def rows_of_bytes(data: bytes) -> np.ndarray:
    """Raw record bytes as an ``(n, 100)`` uint8 array (no copy)."""
    if len(data) % RECORD_BYTES:
        raise BadInput(f"{len(data)} bytes is not whole {RECORD_BYTES}-byte records")
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)


def rows_of_table(table: pa.Table) -> np.ndarray:
    """The ``record`` column of a table as an ``(n, 100)`` uint8 array."""
    if table.num_rows == 0 or "record" not in table.column_names:
        return np.zeros((0, RECORD_BYTES), dtype=np.uint8)
    col = table.column("record")
    if col.type != RECORD_TYPE:
        raise BadInput(f"column 'record' is {col.type}; expected {RECORD_TYPE}")
    parts = []
    for arr in col.chunks:
        data = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
        parts.append(data[arr.offset * RECORD_BYTES:(arr.offset + len(arr)) * RECORD_BYTES])
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return flat.reshape(-1, RECORD_BYTES)


def table_of_rows(rows: np.ndarray) -> pa.Table:
    """An ``(n, 100)`` uint8 array as a one-column ``record`` table (no copy when contiguous)."""
    rows = np.ascontiguousarray(check_rows(rows))
    arr = pa.FixedSizeBinaryArray.from_buffers(RECORD_TYPE, rows.shape[0],
                                               [None, pa.py_buffer(rows)])
    return pa.Table.from_arrays([arr], schema=SCHEMA)


def key_words(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The keys as ``(hi, lo)``: bytes 0-7 as a big-endian uint64 and bytes 8-9 as a uint16,
    so ``(hi, lo)`` order is key byte order."""
    rows = check_rows(rows)
    hi = np.ascontiguousarray(rows[:, :8]).view(">u8").ravel().astype(np.uint64)
    lo = np.ascontiguousarray(rows[:, 8:SORT_KEY_BYTES]).view(">u2").ravel().astype(np.uint16)
    return hi, lo


def keys_table(rows: np.ndarray) -> pa.Array:
    """The keys as a ``fixed_size_binary(10)`` array."""
    keys = np.ascontiguousarray(check_rows(rows)[:, :SORT_KEY_BYTES])
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(SORT_KEY_BYTES), keys.shape[0],
                                                [None, pa.py_buffer(keys)])


def sort_order(rows: np.ndarray) -> np.ndarray:
    """Indices that sort ``rows`` by key (stable). One argsort of the first 8 key bytes;
    a second pass only when two keys share them."""
    hi, lo = key_words(rows)
    order = np.argsort(hi, kind="stable")
    sorted_hi = hi[order]
    if sorted_hi.size > 1 and bool(np.any(sorted_hi[1:] == sorted_hi[:-1])):
        by_lo = np.argsort(lo, kind="stable")  # least significant first, then stable by hi
        order = by_lo[np.argsort(hi[by_lo], kind="stable")]
    return order


def is_sorted(rows: np.ndarray) -> bool:
    """Whether ``rows`` are in non-decreasing key order."""
    if rows.shape[0] < 2:
        return True
    hi, lo = key_words(rows)
    less = hi[1:] > hi[:-1]
    equal = hi[1:] == hi[:-1]
    return bool(np.all(less | (equal & (lo[1:] >= lo[:-1]))))


def generate(seed: int, part: int, first: int, count: int, skew: float) -> np.ndarray:
    """Records ``first .. first+count-1`` of generator part ``part``: deterministic from
    ``(seed, part, first)`` (blocks of one part are generated independently). Uniform random
    keys for ``skew == 0``; for ``skew > 0`` the first four key bytes are ``2**32 * u**(1 +
    skew)`` (``u`` uniform), crowding keys towards small values. The payload is random too,
    with the record's number in its first 8 bytes (so every record differs)."""
    rng = np.random.default_rng([int(seed) & (2**63 - 1), int(part), int(first)])
    rows = rng.integers(0, 256, size=(count, RECORD_BYTES), dtype=np.uint8)
    if skew > 0:
        u = rng.random(count)
        prefix = np.minimum(np.floor(u ** (1.0 + skew) * 2.0**32), 2.0**32 - 1).astype(">u4")
        rows[:, :4] = prefix.view(np.uint8).reshape(count, 4)
    number = (np.arange(first, first + count, dtype=np.uint64)
              + (np.uint64(part) << np.uint64(40))).astype(">u8")
    rows[:, SORT_KEY_BYTES:SORT_KEY_BYTES + 8] = number.view(np.uint8).reshape(count, 8)
    return rows

"""Checking a sorted output of fixed-size records, like the Sort Benchmark's ``valsort``
(numpy + fsspec; no Ray): ``fuxi validate`` and the sort jobs (``jobs/sort``) use it.

A record is :data:`RECORD_BYTES` (100) bytes whose first :data:`SORT_KEY_BYTES` (10) are its
key; keys compare as unsigned bytes. The *order-independent checksum* of a set of records is
``(count, sum mod 2**64 of a 64-bit hash of each record)`` (:func:`checksum`): any permutation
of the same records checksums alike, and a lost, duplicated or changed record shows. The
generator records its input's checksum as ``<input>/_checksum/part-NNNNN.json`` files
(``{"records": N, "sum": "<16 hex digits>"}``, one per part).

:func:`validate` reads an output's ``part-*.records`` files in name order, in blocks of
:data:`fuxi.io.splits.read_block_bytes`, so any size fits in memory, and checks that every key
is at or above the one before it (within and across files), counts the records, sums their
hashes and compares count and sum with the input's checksum files.
"""

from __future__ import annotations

import json
import posixpath

import fsspec
import numpy as np

from fuxi.core.inputsplit import ByteRange
from fuxi.errors import BadInput
from fuxi.io.shuffle import mix64
from fuxi.io.splits import read_records

__all__ = ["RECORD_BYTES", "SORT_KEY_BYTES", "CHECKSUM_DIR", "record_hashes", "checksum",
           "add_checksums", "read_checksum_files", "validate", "checksum_files_max",
           "problems_shown_max"]

RECORD_BYTES = 100
SORT_KEY_BYTES = 10
#: Where the generator writes its input's checksum files, under its output.
CHECKSUM_DIR = "_checksum"
#: The most checksum files read (one per generator part).
checksum_files_max = 100_000
#: A checksum file larger than this is not one.
checksum_file_bytes_max = 4096
#: Problems listed in a report (the count of the rest is given).
problems_shown_max = 10

_WORD_SALT = mix64(np.arange(13, dtype=np.uint64))


def check_rows(rows) -> np.ndarray:
    """``rows`` if it is an (n, RECORD_BYTES) uint8 array; BadInput naming what it is otherwise."""
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 \
            or rows.shape[1] != RECORD_BYTES:
        raise BadInput(f"records must be an (n, {RECORD_BYTES}) uint8 array; got "
                       f"{getattr(rows, 'shape', type(rows).__name__)}")
    return rows


def record_hashes(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash per record of an ``(n, 100)`` uint8 array."""
    rows = check_rows(rows)
    n = rows.shape[0]
    padded = np.zeros((n, 104), dtype=np.uint8)
    padded[:, :RECORD_BYTES] = rows
    words = padded.view("<u8")  # (n, 13)
    with np.errstate(over="ignore"):
        mixed = mix64(words ^ _WORD_SALT)
        return mix64(mixed.sum(axis=1, dtype=np.uint64))


def checksum(rows: np.ndarray) -> tuple[int, int]:
    """``(count, sum of record hashes mod 2**64)`` of an ``(n, 100)`` uint8 array."""
    h = record_hashes(rows)
    with np.errstate(over="ignore"):
        return int(h.shape[0]), int(h.sum(dtype=np.uint64))


def add_checksums(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return a[0] + b[0], (a[1] + b[1]) % (1 << 64)


def read_checksum_files(paths) -> tuple[int, int, int]:
    """``(parts, records, sum)`` from the generator's checksum files ``paths``."""
    paths = list(paths)
    if not paths:
        raise BadInput("no checksum files; expected the generator output's _checksum/*.json")
    if len(paths) > checksum_files_max:
        raise BadInput(f"{len(paths)} checksum files; checksum_files_max is {checksum_files_max}")
    total = (0, 0)
    for name in paths:
        with fsspec.open(name, "rb") as f:
            raw = f.read(checksum_file_bytes_max + 1)
        try:
            if len(raw) > checksum_file_bytes_max:
                raise ValueError(f"larger than {checksum_file_bytes_max} bytes")
            doc = json.loads(raw)
            records, value = int(doc["records"]), int(doc["sum"], 16)
            if records < 0 or not 0 <= value < 1 << 64:
                raise ValueError("out of range")
        except (ValueError, KeyError, TypeError) as e:
            raise BadInput(f"checksum file {name} is damaged ({e}); expected "
                           '{"records": N, "sum": "<16 hex digits>"}') from None
        total = add_checksums(total, (records, value))
    return len(paths), total[0], total[1]


def _key_words(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hi = np.ascontiguousarray(rows[:, :8]).view(">u8").ravel().astype(np.uint64)
    lo = np.ascontiguousarray(rows[:, 8:SORT_KEY_BYTES]).view(">u2").ravel().astype(np.uint16)
    return hi, lo


def _listing(url: str, pattern: str) -> tuple[object, list[str], str]:
    fs, base = fsspec.core.url_to_fs(url)
    base = base.rstrip("/") or "/"
    if not fs.exists(base) or not fs.isdir(base):
        raise BadInput(f"{url} is not a directory; expected a sort's output directory (or "
                       "the generator's, for --expect)")
    found = sorted(fs.glob(posixpath.join(base, pattern)))
    proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    prefix = "" if proto in ("file", "local") else f"{proto}://"
    return fs, [prefix + p if prefix and not p.startswith(prefix) else p for p in found], base


def validate(sorted_url: str, expect_url: str | None = None) -> dict:
    """The report on ``sorted_url``'s ``part-*.records`` (see the module docstring):
    ``{"ok", "records", "checksum", "files", "duplicate_keys", "unsorted_at", "problems",
    "expected_records", "expected_checksum"}``. ``ok`` is False (with ``problems`` saying
    why) when a key is below the one before it, or the count or checksum differ from the
    input's (``expect_url``, the generator's output; without it only the order is checked).
    Raises ``BadInput`` for a location that is not a sort's output."""
    _, files, _ = _listing(sorted_url, "part-*.records")
    if not files:
        raise BadInput(f"{sorted_url} has no part-*.records files; expected the output of "
                       "jobs/sort/sort.yaml")
    problems: list[str] = []
    unsorted = 0
    unsorted_at = None
    duplicates = 0
    total = (0, 0)
    prev: tuple[int, int] | None = None  # the last key read (it may be in the file before)
    for path in files:
        index = 0
        for block in read_records(ByteRange(path, 0, None), RECORD_BYTES):
            rows = np.frombuffer(block, dtype=np.uint8).reshape(-1, RECORD_BYTES)
            if not rows.shape[0]:
                continue
            hi, lo = _key_words(rows)
            if prev is not None:
                hi = np.concatenate(([np.uint64(prev[0])], hi))
                lo = np.concatenate(([np.uint16(prev[1])], lo))
            down = (hi[1:] < hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] < lo[:-1]))
            duplicates += int(np.count_nonzero((hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])))
            if down.any():
                bad = np.flatnonzero(down)
                unsorted += bad.size
                if unsorted_at is None:  # down[j] compares record j (after prev) with j-1
                    j = int(bad[0]) + (0 if prev is not None else 1)
                    unsorted_at = f"{path} record {index + j}"
            prev = (int(hi[-1]), int(lo[-1]))
            total = add_checksums(total, checksum(rows))
            index += rows.shape[0]
    if unsorted:
        problems.append(f"{unsorted} records are below the record before them; the first is "
                        f"{unsorted_at}")
    report = {"files": len(files), "records": total[0], "checksum": f"{total[1]:016x}",
              "duplicate_keys": duplicates, "unsorted": unsorted, "unsorted_at": unsorted_at,
              "expected_records": None, "expected_checksum": None}
    if expect_url is not None:
        _, sums, _ = _listing(expect_url, f"{CHECKSUM_DIR}/part-*.json")
        if not sums:
            raise BadInput(f"{expect_url} has no {CHECKSUM_DIR}/part-*.json files; expected the "
                           "output of jobs/sort/gen.yaml")
        _, want_records, want_sum = read_checksum_files(sums)
        report.update(expected_records=want_records, expected_checksum=f"{want_sum:016x}")
        if total[0] != want_records:
            problems.append(f"{total[0]} records, expected {want_records} (the input's)")
        elif total[1] != want_sum:
            problems.append(f"checksum {total[1]:016x}, expected {want_sum:016x} (the input's): "
                            "records were changed, lost or duplicated")
    report["ok"] = not problems
    report["problems"] = problems[:problems_shown_max]
    return report

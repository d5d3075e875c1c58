"""The validator (``validate.yaml``), like the Sort Benchmark's ``valsort``: the sorted
output's records are in key order within and across its files (in path order), and their
count and order-independent checksum equal those the generator recorded for its input.

* ``check`` (output files cut into record-aligned ranges): per range, the record count, the
  checksum, whether it is sorted, its first and last key;
* ``expected`` (one instance): reads the generator's ``_checksum/*.json`` files (its input,
  so their paths are resolved where the job was submitted);
* ``verdict`` (one instance): orders the ranges by (file, start), checks each ends at or below
  where the next begins, adds the counts and checksums and compares them with the input's
  ``_checksum/`` files. A failed check raises, so the job fails with the reason.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from fuxi.errors import BadInput
from fuxi.io.splits import read_records
from jobs.sort.gen import read_checksum_files
from jobs.sort.records import (SORT_KEY_BYTES, RECORD_BYTES, add_checksums, checksum, is_sorted,
                               rows_of_bytes)

REPORT = pa.schema([("path", pa.string()), ("start", pa.int64()), ("records", pa.int64()),
                    ("sum", pa.uint64()), ("sorted", pa.bool_()),
                    ("first", pa.binary(SORT_KEY_BYTES)), ("last", pa.binary(SORT_KEY_BYTES))])


def check(ctx) -> pa.Table:
    """One report row per input range of this instance."""
    rows_out = []
    for r in ctx.input_splits:
        total, ok, first, last = (0, 0), True, None, None
        for block in read_records(r, RECORD_BYTES):
            rows = rows_of_bytes(block)
            if rows.shape[0] == 0:
                continue
            key0, key1 = bytes(rows[0, :SORT_KEY_BYTES]), bytes(rows[-1, :SORT_KEY_BYTES])
            ok = ok and is_sorted(rows) and (last is None or last <= key0)
            first = key0 if first is None else first
            last = key1
            total = add_checksums(total, checksum(rows))
        if total[0]:
            rows_out.append({"path": r.path, "start": r.start, "records": total[0],
                             "sum": total[1], "sorted": ok, "first": first, "last": last})
    return pa.Table.from_pylist(rows_out, schema=REPORT)


def verdict_of(reports: pa.Table, expected: tuple[int, int, int]) -> dict:
    """The verdict from the ranges' reports and the input's ``(parts, records, sum)``."""
    rows = sorted(reports.to_pylist(), key=lambda d: (d["path"], d["start"]))
    problems = []
    unsorted = [f"{d['path']}@{d['start']}" for d in rows if not d["sorted"]]
    if unsorted:
        problems.append(f"records out of order inside {unsorted[:5]}")
    for a, b in zip(rows, rows[1:]):
        if a["last"] > b["first"]:
            problems.append(f"{b['path']}@{b['start']} begins with key {b['first'].hex()} "
                            f"below the end {a['last'].hex()} of {a['path']}@{a['start']}")
            break
    total = (0, 0)
    for d in rows:
        total = add_checksums(total, (d["records"], d["sum"]))
    _, want_records, want_sum = expected
    if total[0] != want_records:
        problems.append(f"{total[0]} records, expected {want_records} (the input's)")
    elif total[1] != want_sum:
        problems.append(f"checksum {total[1]:016x}, expected {want_sum:016x} (the input's): "
                        "records were changed, lost or duplicated")
    return {"ok": not problems, "records": total[0], "checksum": f"{total[1]:016x}",
            "problems": "; ".join(problems)}


def expected(ctx) -> pa.Table:
    """The generator's recorded checksum: this instance's inputs are its ``_checksum`` files."""
    parts, records, total = read_checksum_files(ctx.input_paths)
    return pa.table({"expect_parts": [parts], "expect_records": [records],
                     "expect_sum": pa.array([total], pa.uint64())})


def verdict(ctx) -> pa.Table:
    """Check the reports of ``check`` against the checksum from ``expected``; raise if wrong."""
    t = ctx.read_upstream()
    if "expect_records" not in t.column_names:
        raise BadInput("no expected checksum reached the verdict; expected the `expected` task "
                       "upstream")
    mask = pc.is_valid(t.column("expect_records"))
    want = t.filter(mask)
    if want.num_rows != 1:
        raise BadInput(f"{want.num_rows} expected checksums; expected exactly one")
    reports = t.filter(pc.invert(mask))
    reports = reports.select(REPORT.names).cast(REPORT) if reports.num_rows else REPORT.empty_table()
    w = want.to_pylist()[0]
    result = verdict_of(reports, (w["expect_parts"], w["expect_records"], w["expect_sum"]))
    ctx.log.info("validated %d records, checksum %s: %s", result["records"], result["checksum"],
                 "ok" if result["ok"] else result["problems"])
    if not result["ok"]:
        raise BadInput(f"the sorted output is wrong: {result['problems']}")
    return pa.table({k: [v] for k, v in result.items()})

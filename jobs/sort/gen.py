"""The sort benchmark's generator (``gen.yaml``): ``size`` bytes of 100-byte records in
``files`` parts, deterministic from ``seed``; uniform keys, or skewed with ``skew > 0``.

Each instance makes one part, committed by the platform as ``part-NNNNN.records`` (raw
records, ``output_format: records``), and writes the part's order-independent checksum
(``jobs.sort.records.checksum``) beside it as ``_checksum/part-NNNNN.json``. A retried or
backup attempt makes the same records, so it writes the same checksum file.
"""

from __future__ import annotations

import json
import posixpath

import fsspec

from fuxi.errors import BadInput
from fuxi.io.valsort import CHECKSUM_DIR, read_checksum_files  # noqa: F401 (validate's)
from jobs.sort.records import (RECORD_BYTES, add_checksums, checksum, gen_block_records_max,
                               generate, parse_size, table_of_rows)


def part_records(total_records: int, parts: int, part: int) -> tuple[int, int]:
    """``(first, count)`` of the records part ``part`` of ``parts`` makes."""
    first = total_records * part // parts
    return first, total_records * (part + 1) // parts - first


def _params(ctx) -> tuple[int, int, float]:
    size = parse_size(ctx.params.get("size", "1MiB"))
    seed = ctx.params.get("seed", 0)
    skew = ctx.params.get("skew", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BadInput(f"seed {seed!r}: expected an integer")
    if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not 0 <= skew <= 100:
        raise BadInput(f"skew {skew!r}: expected a number from 0 (uniform) to 100")
    if size < RECORD_BYTES:
        raise BadInput(f"size {size} bytes is less than one {RECORD_BYTES}-byte record")
    return size // RECORD_BYTES, seed, float(skew)


def gen_part(ctx) -> None:
    """Emit this instance's part of the records; write its checksum beside the output."""
    total, seed, skew = _params(ctx)
    first, count = part_records(total, ctx.num_instances, ctx.instance)
    summary = (0, 0)
    done = 0
    while done < count:
        n = min(gen_block_records_max, count - done)
        rows = generate(seed, ctx.instance, first + done, n, skew)
        summary = add_checksums(summary, checksum(rows))
        ctx.emit(table_of_rows(rows))
        done += n
    if ctx.output:
        write_checksum(ctx.output, ctx.instance, summary)
    ctx.log.info("part %d: %d records from %d, checksum %016x", ctx.instance, count, first,
                 summary[1])


def write_checksum(output: str, part: int, summary: tuple[int, int]) -> None:
    fs, base = fsspec.core.url_to_fs(output)
    directory = posixpath.join(base, CHECKSUM_DIR)
    fs.makedirs(directory, exist_ok=True)
    path = posixpath.join(directory, f"part-{part:05d}.json")
    with fs.open(path + ".tmp", "wb") as f:
        f.write(json.dumps({"records": summary[0], "sum": f"{summary[1]:016x}"}).encode())
    fs.mv(path + ".tmp", path)

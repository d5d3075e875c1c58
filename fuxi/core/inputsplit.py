"""Splitting input files by byte ranges, so one large file feeds many instances (pure).

A task's ``split:`` option (:class:`SplitSpec`) says how its input files may be cut:

* ``format: files`` (the default without ``split:``): whole files, dealt out by bytes
  (``fuxi.io.inputs.split_files``);
* ``format: records`` with ``record_bytes: N``: fixed-size records; every cut falls on a
  multiple of ``N`` inside its file, so a reader never sees half a record. A file whose size
  is not a multiple of ``N`` is refused when the job is submitted;
* ``format: lines``: text; cuts fall anywhere and the reader aligns them the way Hadoop's
  ``LineRecordReader`` does: a range not starting at byte 0 skips through the first newline
  at or after ``start - 1``, and every range reads on past ``end`` to finish the line that
  crosses it. Every line is read by exactly one range.

How many instances: ``instances`` if the task sets it, else one per ``split_bytes`` (default
:data:`split_bytes_default`) of input. The files are laid end to end in path order and the
whole is cut into equal shares, so an instance may read the tail of one file and the head of
the next; each share is a list of ranges.

A range travels through the plan (and its launch records) as one string per range,
``range:<start>:<end>:<path>`` (see :func:`encode_range`); a path never starts like that
(local paths are absolute, URLs have ``://``). ``ctx.input_splits`` gives the decoded
triples and ``ctx.input_paths`` the plain paths.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fuxi.errors import BadInput, LimitExceeded

__all__ = ["SplitSpec", "OutputFormatSpec", "OUTPUT_FORMATS", "ByteRange", "split_ranges", "encode_range", "decode_input",
           "record_bytes_max", "split_bytes_default", "split_shares_max", "split_bytes_min", "ranges_max"]

#: The largest fixed record size ``format: records`` accepts.
record_bytes_max = 1024 * 1024
#: Without ``instances``, one instance per this many input bytes.
split_bytes_default = 64 * 1024 * 1024
#: The smallest ``split_bytes`` (smaller shares cost more in scheduling than they save).
split_bytes_min = 4096
#: The most shares (instances) one split makes (as many as a task may have instances).
split_shares_max = 100_000
#: The most ranges one split may produce over all instances.
ranges_max = 1_000_000

_RANGE_RE = re.compile(r"^range:(\d{1,19}):(\d{1,19}):(.+)$", re.S)


def check_record_bytes(spec):
    """``record_bytes`` is given exactly when ``format`` is ``records`` (a split or an output)."""
    if spec.format == "records" and spec.record_bytes is None:
        raise ValueError("format 'records' needs record_bytes (the size of one record, "
                         f"1..{record_bytes_max})")
    if spec.format != "records" and spec.record_bytes is not None:
        raise ValueError(f"record_bytes is only for format 'records'; got format "
                         f"{spec.format!r}")
    return spec


class SplitSpec(BaseModel):
    """A task's ``split:`` option: how its input files may be cut into byte ranges."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: Literal["files", "records", "lines"] = "files"
    record_bytes: int | None = Field(default=None, ge=1, le=record_bytes_max, strict=True)
    split_bytes: int = Field(default=split_bytes_default, ge=split_bytes_min, le=2**62,
                             strict=True)

    @model_validator(mode="after")
    def _check_record_bytes(self) -> SplitSpec:
        return check_record_bytes(self)


#: What a task's ``output_format:`` may name (``fuxi.io.output`` writes each).
OUTPUT_FORMATS = ("parquet", "arrow", "records")


class OutputFormatSpec(BaseModel):
    """A task's ``output_format:``: ``parquet`` (the default), ``arrow`` (Arrow IPC files) or
    ``{format: records, record_bytes: N}`` (raw fixed-size records: every column of the
    output is fixed-size binary, a row is its columns' bytes one after another)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: Literal["parquet", "arrow", "records"] = "parquet"
    record_bytes: int | None = Field(default=None, ge=1, le=record_bytes_max, strict=True)

    @model_validator(mode="after")
    def _check_record_bytes(self) -> OutputFormatSpec:
        return check_record_bytes(self)


@dataclass(frozen=True, order=True)
class ByteRange:
    """Bytes ``[start, end)`` of ``path``."""

    path: str
    start: int
    end: int

    @property
    def size_bytes(self) -> int:
        return self.end - self.start


def encode_range(r: ByteRange) -> str:
    """The plan's string for a range (``range:<start>:<end>:<path>``)."""
    return f"range:{r.start}:{r.end}:{r.path}"


def decode_input(entry: str) -> ByteRange | None:
    """The range an input entry of the plan names, or ``None`` for a whole file (a path)."""
    if not isinstance(entry, str):
        raise BadInput(f"an input entry must be a string; got {type(entry).__name__}")
    if not entry.startswith("range:"):
        return None
    m = _RANGE_RE.match(entry)
    if m is None:
        raise BadInput(f"input entry {entry[:80]!r} is not a range; expected "
                       "'range:<start>:<end>:<path>'")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise BadInput(f"input entry {entry[:80]!r}: end {end} before start {start}")
    return ByteRange(m.group(3), start, end)


def split_ranges(files: Sequence[tuple[str, int]], split: SplitSpec,
                 num_instances: int | None) -> list[list[ByteRange]]:
    """Cut ``files`` (``(path, size_bytes)``, any order) into per-instance lists of ranges.

    Files are taken in path order and laid end to end; the total is cut into
    ``num_instances`` equal shares (or one per ``split.split_bytes``), each cut moved down to
    a record boundary of its file for ``records``. Empty files and empty shares contribute no
    range, so an instance may get an empty list. Deterministic.
    """
    if split.format == "files":
        raise BadInput("split_ranges cuts by bytes; format 'files' deals whole files "
                       "(fuxi.io.inputs.split_files)")
    ordered = sorted(files)
    record = split.record_bytes or 1
    total = 0
    for path, size in ordered:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadInput(f"file {path!r}: size {size!r}, expected an int >= 0")
        if size % record:
            raise BadInput(f"input file {path} is {size} bytes, not a multiple of record_bytes="
                           f"{record}; expected whole {record}-byte records")
        total += size
    if num_instances is None:
        num_instances = max(1, -(-total // split.split_bytes))
    if isinstance(num_instances, bool) or not isinstance(num_instances, int) or num_instances < 1:
        raise BadInput(f"num_instances must be an int >= 1; got {num_instances!r}")
    if num_instances > split_shares_max:
        raise LimitExceeded(f"split_shares_max is {split_shares_max}; the split needs "
                            f"{num_instances} instances (raise split_bytes or set instances)")
    if num_instances + len(ordered) > ranges_max:
        raise LimitExceeded(f"ranges_max is {ranges_max}; {len(ordered)} files over "
                            f"{num_instances} instances could make more")
    # Global cut points in records (so a cut inside a file lands on a record boundary, as
    # every file holds whole records).
    total_records = total // record
    cuts = [total_records * i // num_instances * record for i in range(num_instances + 1)]
    shares: list[list[ByteRange]] = [[] for _ in range(num_instances)]
    offset = 0  # global offset of the current file's first byte
    share = 0
    for path, size in ordered:
        file_end = offset + size
        pos = offset
        while pos < file_end:
            while cuts[share + 1] <= pos:
                share += 1
            stop = min(file_end, cuts[share + 1])
            shares[share].append(ByteRange(path, pos - offset, stop - offset))
            pos = stop
        offset = file_end
    return shares

"""Atomic per-instance output commit through fsspec URLs (no Ray).

Layout of a task's output location ``base`` (a plain path or an fsspec URL such as
``file:///x`` or ``memory://x``)::

    base/_attempts/<task>-<instance:05d>-a<attempt>.<ext>   one file per running attempt
    base/part-<instance:05d>.<ext>                           the committed output of an instance
    base/_SUCCESS                                            JSON written by finalize()
    base/_FORMAT                                             JSON, only for a format but Parquet

Formats (a task's ``output_format:``; ``prepare`` records it in ``_FORMAT`` so every writer
of the location, in any process, writes the same one):

* ``parquet`` (``.parquet``, the default: no ``_FORMAT`` file);
* ``arrow`` (``.arrow``): an Arrow IPC file;
* ``records`` (``.records``): raw fixed-size records, each row its columns' bytes one after
  another; every column must be fixed-size binary and a row exactly ``record_bytes`` long.
  Read back as one ``record`` column (``fixed_size_binary(record_bytes)``).

Life of an output::

    prepare() --> write_attempt() --> commit()  (first attempt of an instance wins)
                              \\--> discard()   (losing or failed attempts)
    ... every instance committed ... --> finalize() --> read()

Why this is safe:

* ``write_attempt`` writes ``<name>.tmp`` and renames it, so nobody sees half a file.
* ``commit`` renames the attempt file onto ``part-NNNNN.parquet`` only if that part does not
  exist yet. Check-then-rename is not atomic on its own; it is race-free here because one
  decider — the job's single JobMaster — commits instances one at a time. With speculative
  attempts, the first attempt the JobMaster commits wins and later commits of the same
  instance return ``False`` (the caller then discards that attempt).
* On the local filesystem ``fs.mv`` is ``os.rename``, which is atomic within one filesystem
  (the attempts live under ``base`` so they are on the same one).
"""

from __future__ import annotations

import json
import os
import posixpath
import re

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.ipc  # noqa: F401  (pa.ipc)
import pyarrow.parquet as pq

from fuxi.errors import BadInput, LimitExceeded
from fuxi.io.shuffle import concat_tables, to_table

__all__ = ["OutputLocation", "AttemptWriter", "instances_max", "ATTEMPTS_DIR", "SUCCESS_FILE",
           "FORMAT_FILE", "records_bytes"]

#: Part files are numbered with five digits, so an output holds at most this many instances.
instances_max = 100_000

ATTEMPTS_DIR = "_attempts"
SUCCESS_FILE = "_SUCCESS"
FORMAT_FILE = "_FORMAT"
#: A ``_FORMAT`` file larger than this is not ours.
format_file_bytes_max = 4096
_EXTENSIONS = {"parquet": "parquet", "arrow": "arrow", "records": "records"}
_PART_RE = re.compile(r"^part-(\d{5})\.([a-z]+)$")
_TASK_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _is_url(url: str) -> bool:
    return "://" in url


class OutputLocation:
    """One task output location. ``fs`` is its fsspec filesystem, ``path`` the path inside it."""

    def __init__(self, url: str):
        if not isinstance(url, str) or not url:
            raise BadInput(f"output location must be a non-empty path or URL; got {url!r}")
        self.url = url if _is_url(url) else os.path.abspath(url)
        self.fs, path = fsspec.core.url_to_fs(self.url)
        self.path = path.rstrip("/") or "/"
        self._format: dict | None = None  # read from _FORMAT on first use

    @property
    def format(self) -> dict:
        """``{"format": "parquet" | "arrow" | "records", "record_bytes": int | None}``."""
        if self._format is None:
            self._format = self._read_format()
        return self._format

    def _read_format(self) -> dict:
        marker = self._join(FORMAT_FILE)
        try:
            with self.fs.open(marker, "rb") as f:
                raw = f.read(format_file_bytes_max + 1)
        except FileNotFoundError:
            return {"format": "parquet", "record_bytes": None}
        try:
            doc = json.loads(raw.decode())
            fmt, width = doc["format"], doc.get("record_bytes")
            _check_format(fmt, width)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, BadInput) as e:
            raise BadInput(f"{self.url}/{FORMAT_FILE} is not an output format record ({e}); "
                           "expected JSON {\"format\": ..., \"record_bytes\": ...}") from None
        return {"format": fmt, "record_bytes": width}

    @property
    def _ext(self) -> str:
        return _EXTENSIONS[self.format["format"]]

    def __repr__(self) -> str:
        return f"OutputLocation({self.url!r})"

    # -- paths --------------------------------------------------------------------------------

    def _join(self, *names: str) -> str:
        return posixpath.join(self.path, *names)

    def part_path(self, instance: int) -> str:
        _check_instance(instance)
        return self._join(f"part-{instance:05d}.{self._ext}")

    def attempt_path(self, task: str, instance: int, attempt: int) -> str:
        """Where attempt ``attempt`` of ``task`` instance ``instance`` writes its output."""
        if not isinstance(task, str) or not _TASK_NAME_RE.match(task):
            raise BadInput(
                f"task name {task!r} cannot be used in a file name; expected letters, digits, "
                "'_', '.' or '-'"
            )
        _check_instance(instance)
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise BadInput(f"attempt must be an int >= 0; got {attempt!r}")
        return self._join(ATTEMPTS_DIR, f"{task}-{instance:05d}-a{attempt}.{self._ext}")

    # -- lifecycle ----------------------------------------------------------------------------

    def check(self, overwrite: bool = False) -> bool:
        """Whether the location holds files from an earlier run (that ``prepare`` would clear).
        Refuses a file, or a non-empty directory unless ``overwrite``. Changes nothing."""
        fs, path = self.fs, self.path
        if not fs.exists(path):
            return False
        if not fs.isdir(path):
            raise BadInput(
                f"output location {self.url} is a file; expected an empty or missing "
                "directory — delete it or choose another output"
            )
        if not fs.ls(path, detail=False):
            return False
        if not overwrite:
            raise BadInput(
                f"output location {self.url} is not empty; expected an empty or missing "
                "directory — delete it or choose another output"
            )
        return True

    def prepare(self, overwrite: bool = False, fmt: str = "parquet",
                record_bytes: int | None = None) -> None:
        """Create the location in format ``fmt``. Refuse one holding files from an earlier run
        unless ``overwrite``."""
        _check_format(fmt, record_bytes)
        if self.check(overwrite=overwrite):
            self.fs.rm(self.path, recursive=True)
        self.fs.makedirs(self.path, exist_ok=True)
        if fmt != "parquet":
            marker = self._join(FORMAT_FILE)
            with self.fs.open(marker + ".tmp", "wb") as f:
                f.write(json.dumps({"format": fmt, "record_bytes": record_bytes}).encode())
            self.fs.mv(marker + ".tmp", marker)
        self._format = {"format": fmt, "record_bytes": record_bytes}

    def write_attempt(self, task: str, instance: int, attempt: int, table: pa.Table) -> dict:
        """Write one attempt's output in the location's format; return
        ``{"path", "rows", "bytes"}``."""
        table = to_table(table)
        fmt = self.format
        data = records_bytes(table, fmt["record_bytes"]) if fmt["format"] == "records" else None
        final = self.attempt_path(task, instance, attempt)
        tmp = final + ".tmp"
        self.fs.makedirs(self._join(ATTEMPTS_DIR), exist_ok=True)
        with self.fs.open(tmp, "wb") as f:
            if data is not None:
                f.write(data)
            elif fmt["format"] == "arrow":
                with pa.ipc.new_file(f, table.schema) as writer:
                    writer.write_table(table)
            else:
                pq.write_table(table, f)
        self.fs.mv(tmp, final)
        return {"path": final, "rows": table.num_rows, "bytes": self.fs.size(final)}

    def open_attempt(self, task: str, instance: int, attempt: int) -> "AttemptWriter":
        """A writer that streams one attempt's output in pieces (``write`` many times, then
        ``close``): the same file ``write_attempt`` makes, without the whole output in memory."""
        return AttemptWriter(self, task, instance, attempt)

    def _rows(self, part: str) -> int:
        fmt = self.format
        if fmt["format"] == "records":
            return self.fs.size(part) // fmt["record_bytes"]
        with self.fs.open(part, "rb") as f:
            if fmt["format"] == "arrow":
                return pa.ipc.open_file(f).count_rows()
            return pq.ParquetFile(f).metadata.num_rows

    def read_part(self, instance: int) -> pa.Table:
        """One committed part as a table (``records``: one ``record`` column)."""
        part, fmt = self.part_path(instance), self.format
        with self.fs.open(part, "rb") as f:
            if fmt["format"] == "records":
                data = f.read()
                width = fmt["record_bytes"]
                arr = pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(width), len(data) // width, [None, pa.py_buffer(data)])
                return pa.table({"record": arr})
            if fmt["format"] == "arrow":
                return pa.ipc.open_file(f).read_all()
            return pq.read_table(f)

    def commit(self, task: str, instance: int, attempt: int) -> bool:
        """Make this attempt the instance's output. ``False`` if the instance was already committed.

        Only the job's JobMaster calls this, one call at a time, so the existence check and the
        rename cannot race (see the module docstring).
        """
        source = self.attempt_path(task, instance, attempt)
        part = self.part_path(instance)
        if self.fs.exists(part):
            return False
        if not self.fs.exists(source):
            raise BadInput(
                f"cannot commit {task} instance {instance} attempt {attempt}: {source} does not "
                "exist; expected write_attempt() to have finished first"
            )
        self.fs.mv(source, part)
        return True

    def discard(self, task: str, instance: int, attempt: int) -> None:
        """Remove an attempt's files (finished or half-written). Idempotent."""
        final = self.attempt_path(task, instance, attempt)
        for p in (final, final + ".tmp"):
            if self.fs.exists(p):
                self.fs.rm(p)

    def committed_instances(self) -> list[int]:
        """Instances whose part file exists, ascending."""
        if not self.fs.exists(self.path):
            return []
        found = []
        for p in self.fs.ls(self.path, detail=False):
            m = _PART_RE.match(posixpath.basename(p.rstrip("/")))
            if m and m.group(2) == self._ext:
                found.append(int(m.group(1)))
        return sorted(found)

    def finalize(self, num_instances: int) -> dict:
        """Check that parts ``0..num_instances-1`` exist, drop ``_attempts/``, write ``_SUCCESS``.

        Returns the ``_SUCCESS`` content: ``{"num_parts", "rows", "bytes"}``. Calling it again
        after success recomputes and rewrites the same summary.
        """
        _check_instance_count(num_instances)
        committed = set(self.committed_instances())
        expected = set(range(num_instances))
        missing = sorted(expected - committed)
        unexpected = sorted(committed - expected)
        if missing or unexpected:
            problems = []
            if missing:
                problems.append(f"missing parts for instances {_short(missing)}")
            if unexpected:
                problems.append(f"unexpected parts for instances {_short(unexpected)}")
            raise BadInput(
                f"cannot finalize output {self.url}: {'; '.join(problems)}; expected exactly "
                f"parts 0..{num_instances - 1}, one committed per instance"
            )
        rows = total_bytes = 0
        for i in range(num_instances):
            part = self.part_path(i)
            rows += self._rows(part)
            total_bytes += self.fs.size(part)
        attempts = self._join(ATTEMPTS_DIR)
        if self.fs.exists(attempts):
            self.fs.rm(attempts, recursive=True)
        summary = {"num_parts": num_instances, "rows": rows, "bytes": total_bytes}
        success = self._join(SUCCESS_FILE)
        with self.fs.open(success + ".tmp", "wb") as f:
            f.write(json.dumps(summary, sort_keys=True).encode() + b"\n")
        self.fs.mv(success + ".tmp", success)
        return summary

    def is_finalized(self) -> bool:
        return self.fs.exists(self._join(SUCCESS_FILE))

    def read(self) -> pa.Table:
        """All committed parts concatenated in instance order (empty table if none)."""
        return concat_tables([self.read_part(i) for i in self.committed_instances()])


class AttemptWriter:
    """Streams one attempt's output to ``<attempt>.tmp`` and renames it into place on
    :meth:`close` (so, as with ``write_attempt``, nobody sees half a file); :meth:`abort`
    removes the temporary file. Every piece must have the first piece's schema (Parquet and
    Arrow IPC write one schema per file); ``records`` pieces are appended as raw bytes."""

    def __init__(self, location: OutputLocation, task: str, instance: int, attempt: int):
        self.location = location
        self.final = location.attempt_path(task, instance, attempt)
        self.tmp = self.final + ".tmp"
        self.rows = 0
        self._fmt = location.format
        self._writer = None
        self._schema: pa.Schema | None = None
        location.fs.makedirs(location._join(ATTEMPTS_DIR), exist_ok=True)
        self._file = location.fs.open(self.tmp, "wb")

    def write(self, table) -> None:
        if self._file is None:
            raise BadInput(f"the output writer of {self.final} is closed; expected write() "
                           "before close()")
        table = to_table(table)
        fmt = self._fmt["format"]
        if fmt == "records":
            self._file.write(records_bytes(table, self._fmt["record_bytes"]))
            self.rows += table.num_rows
            return
        if self._schema is None:
            self._schema = table.schema
            self._writer = (pa.ipc.new_file(self._file, table.schema) if fmt == "arrow"
                            else pq.ParquetWriter(self._file, table.schema))
        elif not table.schema.equals(self._schema):
            raise BadInput(f"streamed output pieces must share one schema; the first was "
                           f"{self._schema.names} {self._schema.types}, this one "
                           f"{table.schema.names} {table.schema.types}")
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> dict:
        """Finish the file and rename it into place; ``{"path", "rows", "bytes"}``."""
        if self._file is None:
            raise BadInput(f"the output writer of {self.final} is already closed")
        if self._writer is not None:
            self._writer.close()
        elif self._fmt["format"] != "records":  # no piece: still a valid, empty file
            empty = pa.schema([])
            w = (pa.ipc.new_file(self._file, empty) if self._fmt["format"] == "arrow"
                 else pq.ParquetWriter(self._file, empty))
            w.close()
        self._file.close()
        self._file = None
        fs = self.location.fs
        fs.mv(self.tmp, self.final)
        return {"path": self.final, "rows": self.rows, "bytes": fs.size(self.final)}

    def abort(self) -> None:
        """Drop the half-written file (idempotent)."""
        if self._file is not None:
            try:
                if self._writer is not None:
                    self._writer.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
            self._file.close()
            self._file = None
        if self.location.fs.exists(self.tmp):
            self.location.fs.rm(self.tmp)


def _check_format(fmt, record_bytes) -> None:
    from fuxi.core.inputsplit import OUTPUT_FORMATS, record_bytes_max

    if fmt not in OUTPUT_FORMATS:
        raise BadInput(f"output format {str(fmt)[:40]!r}; expected one of {list(OUTPUT_FORMATS)}")
    if fmt == "records":
        if isinstance(record_bytes, bool) or not isinstance(record_bytes, int) \
                or not 1 <= record_bytes <= record_bytes_max:
            raise BadInput(f"format 'records' needs record_bytes from 1 to {record_bytes_max}; "
                           f"got {record_bytes!r}")
    elif record_bytes is not None:
        raise BadInput(f"record_bytes is only for format 'records'; got format {fmt!r}")


def records_bytes(table: pa.Table, record_bytes: int) -> bytes:
    """A table as raw records: each row its columns' bytes in column order. Every column must
    be fixed-size binary without nulls, and their widths must add up to ``record_bytes``."""
    widths = []
    for name, col in zip(table.column_names, table.columns):
        if not pa.types.is_fixed_size_binary(col.type) or col.null_count:
            raise BadInput(f"format 'records' writes fixed-size binary columns without nulls; "
                           f"column {name!r} is {col.type} with {col.null_count} nulls")
        widths.append(col.type.byte_width)
    if sum(widths) != record_bytes:
        raise BadInput(f"format 'records' with record_bytes={record_bytes}: the columns "
                       f"{table.column_names} are {sum(widths)} bytes a row ({widths})")
    n = table.num_rows
    if n == 0:
        return b""
    views = []
    for col, width in zip(table.columns, widths):
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        data = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
        views.append(data[arr.offset * width:(arr.offset + n) * width].reshape(n, width))
    if len(views) == 1:
        return views[0].tobytes()
    return np.hstack(views).tobytes()


def _check_instance(instance: int) -> None:
    if isinstance(instance, bool) or not isinstance(instance, int) or instance < 0:
        raise BadInput(f"instance must be an int >= 0; got {instance!r}")
    if instance >= instances_max:
        raise LimitExceeded(f"instances_max is {instances_max}; got instance {instance}")


def _check_instance_count(num_instances: int) -> None:
    if isinstance(num_instances, bool) or not isinstance(num_instances, int) or num_instances < 1:
        raise BadInput(f"num_instances must be an int >= 1; got {num_instances!r}")
    if num_instances > instances_max:
        raise LimitExceeded(f"instances_max is {instances_max}; got num_instances {num_instances}")


def _short(items: list[int], shown_max: int = 20) -> str:
    if len(items) <= shown_max:
        return str(items)
    return f"{items[:shown_max]} and {len(items) - shown_max} more"

"""``ctx``: what a task function sees. ``fn(ctx)`` is called once per attempt."""

from __future__ import annotations

import logging
from typing import Any, Callable

import pyarrow as pa

from fuxi.core.inputsplit import ByteRange, decode_input
from fuxi.errors import BadInput, LimitExceeded
from fuxi.io.shuffle import concat_tables, to_table

#: ``iter_upstream`` yields tables of at most about this many bytes (a block of a piece).
UPSTREAM_BLOCK_BYTES_MAX = 64 * 1024 * 1024


class TaskContext:
    """Per-attempt context. Attributes: ``job_id``, ``task``, ``instance`` (0-based),
    ``num_instances``, ``attempt`` (0 first, counting up over retries and backups), ``params``,
    ``input_paths``, ``input_splits``, ``output``; methods ``read_upstream()``,
    ``iter_upstream()`` (the same rows in bounded blocks), ``emit(table)``, ``bound_emit(bytes)``
    (a map's memory bound),
    ``write_output(table)`` (stream rows to the task's output); ``log`` (a logger whose lines
    ``fuxi job logs`` shows)."""

    def __init__(self, spec, get_upstream: Callable[[tuple], list[pa.Table]], log: logging.Logger,
                 emit_bytes_max: int, open_output: Callable | None = None, map_output=None):
        self.job_id: str = spec.job_id
        self.task: str = spec.task
        self.instance: int = spec.instance
        self.num_instances: int = spec.num_instances
        self.attempt: int = spec.attempt
        self.params: dict[str, Any] = dict(spec.params)
        # Whole files, or byte ranges of them for a task with ``split:`` (fuxi.core.inputsplit):
        # ``input_splits`` has one ``ByteRange(path, start, end)`` per entry (a whole file's
        # end is None: its size is not looked up here), ``input_paths`` the distinct files.
        self.input_splits: list[ByteRange] = []
        for entry in spec.input_paths:
            r = decode_input(entry)
            self.input_splits.append(ByteRange(entry, 0, None) if r is None else r)
        self.input_paths: list[str] = list(dict.fromkeys(r.path for r in self.input_splits))
        self.output: str | None = spec.output  # this task's output location, if it has one
        self.log = log
        self._upstream = spec.upstream
        self._get_upstream = get_upstream
        self._emitted: list[pa.Table] = []
        self._emitted_bytes = 0
        self._emit_bytes_max = emit_bytes_max
        self._upstream_table: pa.Table | None = None
        self._open_output = open_output  # () -> an AttemptWriter of this attempt's output
        self._output_writer = None
        # A map's shuffle output, partitioned as emitted (fuxi.io.mapout); None: held whole
        self._map_output = map_output

    def read_upstream(self) -> pa.Table:
        """This instance's partition of every upstream task's rows, as one table."""
        if self._upstream_table is None:
            tables = self._get_upstream(self._upstream) if self._upstream else []
            self._upstream_table = concat_tables(tables)
        return self._upstream_table

    def iter_upstream(self, block_bytes: int = UPSTREAM_BLOCK_BYTES_MAX):
        """This instance's partition of the upstream rows as tables of at most about
        ``block_bytes`` bytes each (a single row larger than that is a block of its own). The
        pieces are fetched one at a time and a piece is let go once its blocks were yielded,
        so the whole partition is never in this process at once."""
        if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) \
                or not 1 <= block_bytes <= UPSTREAM_BLOCK_BYTES_MAX:
            raise BadInput(f"block_bytes {block_bytes!r}: expected an int from 1 to "
                           f"UPSTREAM_BLOCK_BYTES_MAX={UPSTREAM_BLOCK_BYTES_MAX}")
        for ref in self._upstream or ():
            (piece,) = self._get_upstream((ref,))
            piece = to_table(piece)
            if not piece.num_rows:
                continue
            row_bytes = max(1, piece.nbytes // piece.num_rows)
            step = max(1, block_bytes // row_bytes)
            for start in range(0, piece.num_rows, step):
                yield piece.slice(start, step)
            del piece

    def write_output(self, table) -> None:
        """Stream rows to this task's output (its ``output:`` location, in its format) now,
        instead of holding them until the attempt ends; many calls ok, one schema. A task
        that writes its output this way does not also emit or return rows to it."""
        if self._open_output is None:
            raise BadInput(f"task {self.task!r} has no output location; expected `output:` in "
                           "its spec to use write_output()")
        if self._output_writer is None:
            self._output_writer = self._open_output()
        self._output_writer.write(table)

    def emit(self, table) -> None:
        """Add rows to this attempt's output (a pyarrow Table or RecordBatch; many calls ok)."""
        t = to_table(table)
        self._emitted_bytes += t.nbytes
        if self._emitted_bytes > self._emit_bytes_max:
            raise LimitExceeded(
                f"task {self.task!r} instance {self.instance} emitted {self._emitted_bytes} bytes, "
                f"more than emit_bytes_max={self._emit_bytes_max}; split the work over more instances"
            )
        if self._map_output is not None:
            self._map_output.add(t)
        else:
            self._emitted.append(t)

    def bound_emit(self, held_bytes: int) -> None:
        """Hold at most about ``held_bytes`` of emitted rows in memory (the rest spilled to
        local disk until the shuffle takes them); only a task whose rows go to one ``hash``
        or ``direct`` shuffle and to no output of its own is partitioned as it emits, and
        for others this does nothing. Call it before the first ``emit``."""
        from fuxi.io.mapout import check_held_bytes

        check_held_bytes(held_bytes)
        if self._map_output is not None:
            self._map_output.held_bytes_max = held_bytes

    @property
    def map_stats(self) -> dict | None:
        """The streamed map output's counters (rows, spills, spilled_bytes, held_bytes_peak,
        held_bytes_max), or None when this task's output is not partitioned as emitted."""
        return None if self._map_output is None else self._map_output.stats()

    def _output(self) -> pa.Table:
        return concat_tables(self._emitted)

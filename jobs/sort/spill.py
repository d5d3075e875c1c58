"""Sorting more records than fit in memory: sorted runs spilled to files, then a k-way merge.

:class:`RunSorter` takes records in blocks (``add``). While the records it holds stay under
``memory_bytes`` it only keeps them; past that it sorts them (``records.sort_order``) and
writes them as one *run*, an Arrow IPC file of ``record`` batches, under ``spill_dir`` (a
local directory or any fsspec URL, e.g. ``pangu:///tmp/spill``). ``sorted_blocks`` then yields
every record in key order in blocks:

* nothing spilled: the records held are sorted once and yielded in slices;
* else the rest is spilled as a last run and the runs are merged: each run is read a window
  at a time (``memory_bytes / (4 * runs)``, at least one batch); every step takes, from every
  run's window, the records at or below the smallest of the windows' last keys -- those can
  all be written now -- sorts just them (numpy's stable sort is a timsort, which merges the
  sorted stretches in ``O(n log runs)``) and refills the windows it emptied.

More than :data:`spill_runs_max` runs are first merged into one run, so the number of files
open at once stays bounded. ``close`` removes the spill directory (also on failure: use it as
a context manager).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.ipc  # noqa: F401  (pa.ipc)

from fuxi.errors import BadInput
from jobs.sort.records import (RECORD_BYTES, SCHEMA, key_words, sort_order, table_of_rows)

#: A run file is written in batches of at most this many records (the merge reads whole
#: batches); fewer under a small memory bound, so a window of one batch per run still fits.
spill_batch_records = 1 << 14
#: Runs merged at once; more are first merged into one run (bounds open files and windows).
spill_runs_max = 64
#: The smallest memory bound a sorter accepts (bytes).
sort_memory_floor = 64 * 1024


class _Run:
    """One spilled run being merged: its file, the batch to read next, the current window."""

    def __init__(self, fs, path: str, window_records: int):
        self.fs, self.path = fs, path
        self._file = fs.open(path, "rb")
        self._reader = pa.ipc.open_file(self._file)
        self._next = 0
        self._window_records = window_records
        self.rows = np.zeros((0, RECORD_BYTES), dtype=np.uint8)
        self.hi = np.zeros(0, np.uint64)
        self.lo = np.zeros(0, np.uint16)
        self.refill()

    def refill(self) -> None:
        """Read batches until the window holds ``window_records`` records or the run ends."""
        parts, n = [self.rows], self.rows.shape[0]
        while n < self._window_records and self._next < self._reader.num_record_batches:
            batch = self._reader.get_batch(self._next)
            self._next += 1
            arr = batch.column(0)
            data = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
            rows = data[arr.offset * RECORD_BYTES:(arr.offset + len(arr)) * RECORD_BYTES]
            parts.append(rows.reshape(-1, RECORD_BYTES))
            n += len(arr)
        if len(parts) > 1:
            self.rows = np.concatenate(parts)
            self.hi, self.lo = key_words(self.rows)

    @property
    def done(self) -> bool:
        return self.rows.shape[0] == 0

    def last_key(self) -> tuple[int, int]:
        return int(self.hi[-1]), int(self.lo[-1])

    def take_upto(self, key: tuple[int, int]) -> np.ndarray:
        """Remove and return the window's records whose key is ``<= key``."""
        chi, clo = key
        left = int(np.searchsorted(self.hi, np.uint64(chi), side="left"))
        right = int(np.searchsorted(self.hi, np.uint64(chi), side="right"))
        n = left + int(np.searchsorted(self.lo[left:right], np.uint16(clo), side="right"))
        taken = self.rows[:n]
        self.rows, self.hi, self.lo = self.rows[n:], self.hi[n:], self.lo[n:]
        return taken

    def close(self) -> None:
        self._reader = None
        self._file.close()


class RunSorter:
    """Sort records under a memory bound, spilling sorted runs under ``spill_dir``."""

    def __init__(self, memory_bytes: int, spill_dir: str, block_records: int = 1 << 18):
        if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, int) \
                or memory_bytes < sort_memory_floor:
            raise BadInput(f"sort memory {memory_bytes!r} bytes: expected an int of at least "
                           f"{sort_memory_floor} (sort_memory_floor)")
        if isinstance(block_records, bool) or not isinstance(block_records, int) \
                or block_records < 1:
            raise BadInput(f"block_records {block_records!r}: expected an int >= 1")
        if not isinstance(spill_dir, str) or not spill_dir:
            raise BadInput(f"spill_dir {spill_dir!r}: expected a directory path or URL")
        self.memory_bytes = memory_bytes
        self.batch_records = max(64, min(spill_batch_records,
                                         memory_bytes // (4 * spill_runs_max * RECORD_BYTES)))
        self.block_records = block_records
        self.fs, base = fsspec.core.url_to_fs(spill_dir)
        self.dir = posixpath.join(base.rstrip("/") or "/", f"fuxi-sort-spill-{uuid.uuid4().hex}")
        self._held: list[np.ndarray] = []
        self._held_bytes = 0
        self.runs: list[str] = []  # run files, oldest first
        self.spilled_bytes = 0  # written to runs in all (merged runs count again)
        self.records = 0

    def __enter__(self) -> "RunSorter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, rows: np.ndarray) -> None:
        """Take an ``(n, 100)`` uint8 block of records (kept as given: do not change it)."""
        if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 \
                or rows.shape[1] != RECORD_BYTES:
            raise BadInput(f"records must be an (n, {RECORD_BYTES}) uint8 array; got "
                           f"{getattr(rows, 'shape', type(rows).__name__)}")
        if not rows.shape[0]:
            return
        self._held.append(rows)
        self._held_bytes += rows.nbytes
        self.records += rows.shape[0]
        if self._held_bytes >= self.memory_bytes:
            self._spill_held()

    def _take_held(self) -> np.ndarray:
        rows = np.concatenate(self._held) if len(self._held) > 1 else (
            self._held[0] if self._held else np.zeros((0, RECORD_BYTES), np.uint8))
        self._held, self._held_bytes = [], 0
        return rows

    def _write_run(self, blocks: Iterator[np.ndarray]) -> None:
        self.fs.makedirs(self.dir, exist_ok=True)
        path = posixpath.join(self.dir, f"run-{len(self.runs):06d}-{uuid.uuid4().hex[:8]}.arrow")
        with self.fs.open(path, "wb") as f, pa.ipc.new_file(f, SCHEMA) as w:
            for rows in blocks:
                for s in range(0, rows.shape[0], self.batch_records):
                    part = rows[s:s + self.batch_records]
                    w.write_table(table_of_rows(part))
                    self.spilled_bytes += part.nbytes
        self.runs.append(path)

    def _spill_held(self) -> None:
        rows = self._take_held()
        order = sort_order(rows)
        step = self.batch_records * 16
        self._write_run(rows[order[s:s + step]] for s in range(0, len(order), step))
        if len(self.runs) >= spill_runs_max:
            old, self.runs = self.runs, []
            self._write_run(self._merge(old))
            for p in old:
                self.fs.rm(p)

    def _merge(self, paths: list[str]) -> Iterator[np.ndarray]:
        window = max(self.batch_records,
                     self.memory_bytes // (4 * len(paths) * RECORD_BYTES))
        runs = [_Run(self.fs, p, window) for p in paths]
        try:
            live = [r for r in runs if not r.done]
            while live:
                cutoff = min(r.last_key() for r in live)
                taken = [r.take_upto(cutoff) for r in live]
                taken = [t for t in taken if t.shape[0]]
                rows = np.concatenate(taken) if len(taken) > 1 else taken[0]
                yield rows[sort_order(rows)] if len(taken) > 1 else rows
                for r in live:
                    if r.done:
                        r.refill()
                live = [r for r in live if not r.done]
        finally:
            for r in runs:
                r.close()

    def sorted_blocks(self) -> Iterator[np.ndarray]:
        """Every record added, in key order, in blocks of up to about ``block_records``."""
        if not self.runs:
            rows = self._take_held()
            order = sort_order(rows)
            for s in range(0, len(order), self.block_records):
                yield rows[order[s:s + self.block_records]]
            return
        if self._held:
            self._spill_held()
        for rows in self._merge(list(self.runs)):
            for s in range(0, rows.shape[0], self.block_records):
                yield rows[s:s + self.block_records]

    def close(self) -> None:
        """Drop held records and remove the spill directory (idempotent)."""
        self._held, self._held_bytes = [], 0
        try:
            if self.fs.exists(self.dir):
                self.fs.rm(self.dir, recursive=True)
        except FileNotFoundError:
            pass
        self.runs = []


def default_spill_dir() -> str:
    """Where a sort spills unless told: ``$FUXI_SPILL_DIR``, else the system's temp dir."""
    import tempfile

    return os.environ.get("FUXI_SPILL_DIR") or tempfile.gettempdir()

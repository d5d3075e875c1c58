"""The cluster's event log on disk: JSON lines in rotating files of bounded size.

    <dir>/events.jsonl        the file being written (newest events last)
    <dir>/events.1.jsonl      the one before it ... <dir>/events.<EVENT_FILES_KEPT_MAX>.jsonl

Every record is one JSON object on one line, with an ``id`` that grows by one per event
across the whole cluster (the collector, FuxiMaster, hands them out; ``last_id`` finds where
the files left off after a restart). When the current file passes ``EVENT_FILE_BYTES_MAX`` it
becomes ``events.1.jsonl``, the others move up one, and the oldest is deleted: the log never
holds more than ``(EVENT_FILES_KEPT_MAX + 1) * EVENT_FILE_BYTES_MAX`` bytes.

Events are an operator's record, not acknowledged writes: lines are flushed per batch but not
fsynced, so a crash may lose the last batch or leave its last line torn. A reader skips a line
that is not a whole JSON object and counts it (``torn``); a writer reopening a file whose last
line is torn starts on a fresh line, so one torn line never spoils the next event.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

EVENT_FILE_BYTES_MAX = 16 * 1024**2  # one file; past it the log rotates
EVENT_FILES_KEPT_MAX = 4  # rotated files kept besides the current one; older ones deleted
EVENT_LINE_BYTES_MAX = 16 * 1024  # one record; a longer one is refused by the writer
CURRENT = "events.jsonl"


def _rotated(directory: str, i: int) -> str:
    return os.path.join(directory, f"events.{i}.jsonl")


def event_files(directory: str, files_kept: int = EVENT_FILES_KEPT_MAX) -> list[str]:
    """The log's files that exist, oldest first."""
    paths = [_rotated(directory, i) for i in range(files_kept, 0, -1)]
    paths.append(os.path.join(directory, CURRENT))
    return [p for p in paths if os.path.exists(p)]


class EventFile:
    """Appends records to the log (one writer per directory: the collector)."""

    def __init__(self, directory: str, file_bytes_max: int = EVENT_FILE_BYTES_MAX,
                 files_kept: int = EVENT_FILES_KEPT_MAX):
        if not (isinstance(file_bytes_max, int) and file_bytes_max >= 1024):
            raise ValueError(f"file_bytes_max={file_bytes_max!r}: expected an int >= 1024")
        if not (isinstance(files_kept, int) and 1 <= files_kept <= 100):
            raise ValueError(f"files_kept={files_kept!r}: expected an int in [1, 100]")
        self.directory = directory
        self.file_bytes_max = file_bytes_max
        self.files_kept = files_kept
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, CURRENT)
        self._f = open(self.path, "ab")
        self.size = self._f.tell()
        if self.size and not _ends_with_newline(self.path):
            self._f.write(b"\n")  # a torn last line (a crash mid-write): start afresh after it
            self._f.flush()
            self.size += 1
        self.rotations = 0

    def append(self, records: list[dict]) -> int:
        """Write ``records`` (each a JSON-able dict); returns how many were written. A record
        whose line would exceed EVENT_LINE_BYTES_MAX is replaced by a short stand-in naming
        its id and kind, so ids stay contiguous."""
        buf = []
        for rec in records:
            line = json.dumps(rec, separators=(",", ":"), sort_keys=True, default=str).encode()
            if len(line) >= EVENT_LINE_BYTES_MAX:
                line = json.dumps({"id": rec.get("id"), "at": rec.get("at"),
                                   "kind": str(rec.get("kind"))[:64], "source": "eventlog",
                                   "message": f"record of {len(line)} bytes cut "
                                              f"(EVENT_LINE_BYTES_MAX)", "fields": {}},
                                  separators=(",", ":"), sort_keys=True).encode()
            buf.append(line + b"\n")
        for line in buf:
            if self.size and self.size + len(line) > self.file_bytes_max:
                self._rotate()
            self._f.write(line)
            self.size += len(line)
        self._f.flush()
        return len(buf)

    def _rotate(self) -> None:
        self._f.close()
        oldest = _rotated(self.directory, self.files_kept)
        if os.path.exists(oldest):
            os.unlink(oldest)
        for i in range(self.files_kept - 1, 0, -1):
            if os.path.exists(_rotated(self.directory, i)):
                os.replace(_rotated(self.directory, i), _rotated(self.directory, i + 1))
        os.replace(self.path, _rotated(self.directory, 1))
        self._f = open(self.path, "ab")
        self.size = 0
        self.rotations += 1

    def close(self) -> None:
        self._f.close()


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class Reading:
    """What a read found: the records, and how many lines were not whole records."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.torn = 0


def iter_events(directory: str, files_kept: int = EVENT_FILES_KEPT_MAX,
                reading: Reading | None = None) -> Iterator[dict]:
    """Every record of the log, oldest first; lines that are not a JSON object with an int
    ``id`` are skipped and counted in ``reading.torn``."""
    for path in event_files(directory, files_kept):
        try:
            f = open(path, "rb")
        except FileNotFoundError:  # rotated away while we listed
            continue
        with f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                if not isinstance(rec, dict) or not isinstance(rec.get("id"), int):
                    if reading is not None:
                        reading.torn += 1
                    continue
                yield rec


def read_events(directory: str, since_id: int = 0, limit: int = 1000,
                files_kept: int = EVENT_FILES_KEPT_MAX) -> Reading:
    """Records with an id above ``since_id``, oldest first, at most ``limit``."""
    out = Reading()
    for rec in iter_events(directory, files_kept, out):
        if rec["id"] > since_id:
            out.records.append(rec)
            if len(out.records) >= limit:
                break
    return out


def last_id(directory: str, files_kept: int = EVENT_FILES_KEPT_MAX) -> int:
    """The highest id in the log (0 for none): where a restarted collector carries on."""
    best = 0
    for path in reversed(event_files(directory, files_kept)):
        for rec in iter_events_of(path):
            best = max(best, rec["id"])
        if best:
            return best
    return best


def iter_events_of(path: str) -> Iterator[dict]:
    try:
        with open(path, "rb") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("id"), int):
                    yield rec
    except FileNotFoundError:
        return

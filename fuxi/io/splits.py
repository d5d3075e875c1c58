"""Reading the byte ranges of ``fuxi.core.inputsplit`` through fsspec (no Ray).

* :func:`read_records`: the whole records of a range of a fixed-size record file, as bytes
  (the range's cuts already fall on record boundaries), in blocks of at most
  :data:`read_block_bytes`.
* :func:`read_lines`: the lines a range owns (Hadoop's rule: a range not starting at 0 skips
  the line in progress at its start; every range finishes the line crossing its end), so
  adjacent ranges of one file read every line exactly once.
* :func:`read_ahead`: runs any block iterator (e.g. ``read_records`` over several ranges) on
  a thread up to :data:`READ_AHEAD_BLOCKS_MAX` blocks ahead of its consumer, so reading the
  next block (a Pangu read waits on the network, without the GIL) overlaps work on this one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import fsspec

from fuxi.core.inputsplit import ByteRange, record_bytes_max
from fuxi.errors import BadInput

__all__ = ["read_records", "read_lines", "read_ahead", "read_block_bytes", "line_bytes_max",
           "READ_AHEAD_BLOCKS_MAX"]

#: Ranges are read in blocks of about this size, so a large range never sits whole in memory.
read_block_bytes = 16 * 1024 * 1024
#: The longest line :func:`read_lines` will carry across blocks before refusing the file.
line_bytes_max = 64 * 1024 * 1024
#: The most blocks :func:`read_ahead` reads ahead of its consumer (bounds its memory).
READ_AHEAD_BLOCKS_MAX = 8
#: How long the reading thread waits for room before it checks whether it was abandoned (s).
READ_AHEAD_PUT_WAIT_S = 0.5

_DONE = object()


def read_ahead(blocks: Iterable, depth: int = 1) -> Iterator:
    """The items of ``blocks``, produced on a thread up to ``depth`` items ahead (an error
    there is raised here, at the item where it happened). Stopping early (closing the
    generator) ends the thread at its next item."""
    if isinstance(depth, bool) or not isinstance(depth, int) \
            or not 1 <= depth <= READ_AHEAD_BLOCKS_MAX:
        raise BadInput(f"read-ahead depth {depth!r}: expected an int from 1 to "
                       f"{READ_AHEAD_BLOCKS_MAX} (READ_AHEAD_BLOCKS_MAX)")
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:  # False: the consumer went away
        while not stop.is_set():
            try:
                q.put(entry, timeout=READ_AHEAD_PUT_WAIT_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in blocks:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((_DONE, e))

    t = threading.Thread(target=produce, name="fuxi-read-ahead", daemon=True)
    t.start()
    try:
        while True:
            item, err = q.get()
            if item is _DONE:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        while True:  # let a producer blocked on a full queue see the stop
            try:
                q.get_nowait()
            except queue.Empty:
                break


def _end_of(r: ByteRange, f) -> int:
    if r.end is not None:
        return r.end
    return f.size if hasattr(f, "size") and f.size is not None else f.seek(0, 2)


def read_records(r: ByteRange, record_bytes: int) -> Iterator[bytes]:
    """Yield the bytes of range ``r`` in blocks of whole ``record_bytes``-byte records."""
    if isinstance(record_bytes, bool) or not isinstance(record_bytes, int) \
            or not 1 <= record_bytes <= record_bytes_max:
        raise BadInput(f"record_bytes must be an int from 1 to {record_bytes_max}; got "
                       f"{record_bytes!r}")
    if r.start % record_bytes:
        raise BadInput(f"range {r.path}[{r.start}:{r.end}] does not start on a "
                       f"{record_bytes}-byte record boundary")
    block = max(record_bytes, read_block_bytes // record_bytes * record_bytes)
    with fsspec.open(r.path, "rb") as f:
        end = _end_of(r, f)
        if (end - r.start) % record_bytes:
            raise BadInput(f"range {r.path}[{r.start}:{end}] is not whole {record_bytes}-byte "
                           "records; expected a file of fixed-size records")
        f.seek(r.start)
        pos = r.start
        while pos < end:
            want = min(block, end - pos)
            data = f.read(want)
            if len(data) != want:
                raise BadInput(f"{r.path} ended at byte {pos + len(data)}, inside range "
                               f"[{r.start}:{end}]; was it changed while the job ran?")
            pos += want
            yield data


def read_lines(r: ByteRange) -> Iterator[bytes]:
    """Yield the lines range ``r`` owns, each without its ``\\n``: the lines whose first byte
    lies in ``[start, end)`` (a line starts at byte 0 or after a ``\\n``)."""
    with fsspec.open(r.path, "rb") as f:
        end = _end_of(r, f)
        buf, i = b"", 0  # unread bytes and where the next line starts in them
        line_start = r.start
        if r.start > 0:
            # The first line start at or after ``start``: just past the first newline at or
            # after ``start - 1`` (the line in progress belongs to the previous range).
            f.seek(r.start - 1)
            line_start = r.start - 1
            while True:
                chunk = f.read(read_block_bytes)
                if not chunk:
                    return
                nl = chunk.find(b"\n")
                if nl >= 0:
                    line_start += nl + 1
                    buf, i = chunk, nl + 1
                    break
                line_start += len(chunk)
                if line_start - r.start > line_bytes_max:
                    raise BadInput(f"{r.path}: a line longer than line_bytes_max="
                                   f"{line_bytes_max} at byte {r.start}")
        else:
            f.seek(0)
        while line_start < end:
            nl = buf.find(b"\n", i)
            while nl < 0:
                chunk = f.read(read_block_bytes)
                if not chunk:
                    if i < len(buf):
                        yield buf[i:]
                    return
                if len(buf) - i > line_bytes_max:
                    raise BadInput(f"{r.path}: a line longer than line_bytes_max="
                                   f"{line_bytes_max} at byte {line_start}")
                buf, i = buf[i:] + chunk, 0
                nl = buf.find(b"\n", max(0, len(buf) - len(chunk)))
            yield buf[i:nl]
            line_start += nl + 1 - i
            i = nl + 1

"""Captured task and replica output (issue 18 part 2): the pure rules for its bounds, its
rotation and the cursors that stream it. No files here: the shell (``fuxi.shells.tasklogs``)
lists, writes and deletes; this module decides what to list, write, delete and read.

One attempt's output is a logical byte stream of lines, each ``<stream> <text>\\n`` where the
stream is one letter (``STREAMS``). It is kept as *segments*, files named by the logical
offset of their first byte (``seg-<start>.log``); a new segment starts when the current one
would pass ``SEGMENT_BYTES_MAX``, and the oldest segments are dropped while the attempt holds
more than ``ATTEMPT_LOG_BYTES_MAX`` (the job's share of a node, ``JOB_NODE_LOG_BYTES_MAX``, is
kept the same way across its attempts, oldest first). A line never spans two segments. When
every segment of an attempt was dropped, an empty marker ``gone-<end>`` keeps where its stream
had reached, so a reader can still say how much it lost.

A reader holds a *cursor* per attempt: the logical offset it has read up to. A cursor below
the first kept byte reads as one ``dropped`` count (shown as a marker line), then the kept
bytes; a reply carries at most ``bytes_max`` bytes, only whole lines."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Limits (units last).
ATTEMPT_LOG_BYTES_MAX = 8 * 1024 * 1024  # one attempt's (or one replica's) kept output
SEGMENT_BYTES_MAX = 1024 * 1024  # one segment file; rotation unit
JOB_NODE_LOG_BYTES_MAX = 64 * 1024 * 1024  # one job's captured output on one node, all attempts
LINE_BYTES_MAX = 16 * 1024  # a longer line is cut into pieces this long
LOG_READ_BYTES_MAX = 256 * 1024  # bytes of output in one read reply (all attempts together)
READ_ATTEMPTS_MAX = 512  # attempts one read (and one cursor) covers
OFFSET_MAX = 2**53  # a cursor offset past this is garbage
CURSOR_CHARS_MAX = 64 * 1024  # a cursor token longer than this is garbage

STREAMS = {"O": "stdout", "E": "stderr", "L": "logging", "C": "ctx.log", "F": "fuxi"}
STREAM_LETTERS = {v: k for k, v in STREAMS.items()}

SEGMENT_RE = re.compile(r"^seg-(\d{1,16})\.log$")
GONE_RE = re.compile(r"^gone-(\d{1,16})$")
# Path parts a stranger may name: job ids, task names, service and replica names.
PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class CursorError(ValueError):
    """A cursor token that is not one this module wrote (said in one line)."""


def segment_name(start: int) -> str:
    return f"seg-{start:016d}.log"


def gone_name(end: int) -> str:
    return f"gone-{end:016d}"


def check_part(value, what: str) -> str:
    """A name used as one path component, or ValueError naming what was expected."""
    if not isinstance(value, str) or not PART_RE.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not valid; expected 1-128 letters, digits, "
                         f"'_', '.', '-' (starting with a letter or digit)")
    return value


@dataclass
class Layout:
    """One attempt's files: kept segments as (start, size), oldest first, and the highest
    dropped end recorded by a ``gone`` marker (0: none)."""

    segments: list[tuple[int, int]] = field(default_factory=list)
    gone_end: int = 0

    @property
    def start(self) -> int:
        """The first logical offset still kept."""
        return self.segments[0][0] if self.segments else self.gone_end

    @property
    def end(self) -> int:
        if not self.segments:
            return self.gone_end
        s, n = self.segments[-1]
        return s + n

    @property
    def kept_bytes(self) -> int:
        return sum(n for _, n in self.segments)


def parse_layout(entries: list[tuple[str, int]]) -> Layout:
    """The layout from a directory listing of (name, size); unknown names are ignored."""
    segs, gone = [], 0
    for name, size in entries:
        m = SEGMENT_RE.match(name)
        if m:
            segs.append((int(m.group(1)), max(0, int(size))))
            continue
        m = GONE_RE.match(name)
        if m:
            gone = max(gone, int(m.group(1)))
    segs.sort()
    return Layout(segs, gone)


@dataclass(frozen=True)
class WritePlan:
    """What a writer does before appending ``n`` bytes: open ``new_segment`` (its start offset)
    if not None, then delete the listed segment starts, oldest first; ``gone_end`` > 0 means
    write that marker (every segment was dropped)."""

    new_segment: int | None
    delete: tuple[int, ...]
    gone_end: int


def plan_write(layout: Layout, n: int, segment_bytes_max: int = SEGMENT_BYTES_MAX,
               attempt_bytes_max: int = ATTEMPT_LOG_BYTES_MAX) -> WritePlan:
    """Rotation for appending one line of ``n`` bytes (``n`` <= ``segment_bytes_max``)."""
    if n <= 0 or n > segment_bytes_max:
        raise ValueError(f"a line of {n} bytes; expected 1..{segment_bytes_max}")
    segs = list(layout.segments)
    new = None
    if not segs or segs[-1][1] + n > segment_bytes_max:
        new = layout.end
        segs.append((new, 0))
    s, size = segs[-1]
    segs[-1] = (s, size + n)
    delete = []
    total = sum(sz for _, sz in segs)
    while total > attempt_bytes_max and len(segs) > 1:
        s0, sz0 = segs.pop(0)
        delete.append(s0)
        total -= sz0
    return WritePlan(new, tuple(delete), 0)


def plan_job_trim(layouts: dict[str, Layout], ages: dict[tuple[str, int], float],
                  job_bytes_max: int = JOB_NODE_LOG_BYTES_MAX, keep: str | None = None
                  ) -> list[tuple[str, int, int]]:
    """Segments to drop so one job's attempts on a node keep at most ``job_bytes_max``:
    (attempt, segment start, the attempt's end if this empties it else 0), oldest segment
    first by ``ages`` (attempt, start) -> mtime. The writing attempt's (``keep``) newest
    segment is never dropped (it is being written)."""
    total = sum(lay.kept_bytes for lay in layouts.values())
    if total <= job_bytes_max:
        return []
    cands = []
    for a, lay in layouts.items():
        for i, (s, sz) in enumerate(lay.segments):
            if a == keep and i == len(lay.segments) - 1:
                continue
            cands.append((ages.get((a, s), 0.0), a, s, sz))
    cands.sort()
    left = {a: len(lay.segments) for a, lay in layouts.items()}
    out = []
    for _, a, s, sz in cands:
        if total <= job_bytes_max:
            break
        left[a] -= 1
        out.append((a, s, layouts[a].end if left[a] == 0 else 0))
        total -= sz
    return out


@dataclass(frozen=True)
class ReadPlan:
    """Read ``pieces`` (segment start, offset inside it, bytes) in order; ``dropped`` bytes
    before them are gone; the reader's next cursor is ``next_cursor`` (advanced only past
    whole lines, which the shell confirms with ``whole_lines``)."""

    dropped: int
    pieces: tuple[tuple[int, int, int], ...]
    next_cursor: int
    end: int


def plan_read(layout: Layout, cursor: int, bytes_max: int) -> ReadPlan:
    """What to read for a reader at ``cursor``: at most ``bytes_max`` bytes."""
    if cursor < 0 or cursor > OFFSET_MAX:
        raise CursorError(f"cursor offset {cursor} is out of range; expected 0..{OFFSET_MAX}")
    end = layout.end
    cursor = min(cursor, end)  # a reader past the end (a restarted writer) waits at the end
    dropped = max(0, layout.start - cursor)
    at = cursor + dropped
    pieces, budget = [], max(0, bytes_max)
    for s, sz in layout.segments:
        if budget <= 0:
            break
        if s + sz <= at:
            continue
        off = max(0, at - s)
        take = min(sz - off, budget)
        if take > 0:
            pieces.append((s, off, take))
            at = s + off + take
            budget -= take
    return ReadPlan(dropped, tuple(pieces), at, end)


def whole_lines(data: bytes) -> bytes:
    """The prefix of ``data`` that ends with a newline (a read never hands out half a line)."""
    i = data.rfind(b"\n")
    return data[: i + 1] if i >= 0 else b""


def encode_line(stream: str, text: str, line_bytes_max: int = LINE_BYTES_MAX) -> list[bytes]:
    """One output line as stored: ``<letter> <text>\\n``, cut into pieces of at most
    ``line_bytes_max`` bytes (never inside a UTF-8 character)."""
    letter = STREAM_LETTERS.get(stream, "F")
    raw = text.replace("\n", " ").encode("utf-8", "replace")
    room = max(8, line_bytes_max - 3)
    out = []
    while True:
        piece = raw[:room]
        if len(raw) > room:  # step back to a character boundary
            cut = room
            while cut > 0 and (raw[cut] & 0xC0) == 0x80:
                cut -= 1
            piece = raw[: cut or room]
        out.append(letter.encode() + b" " + piece + b"\n")
        raw = raw[len(piece):]
        if not raw:
            return out


def decode_lines(data: bytes) -> list[tuple[str, str]]:
    """Stored lines back as (stream, text); a damaged line reads as stream ``fuxi``."""
    out = []
    for raw in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
        text = raw.decode("utf-8", "replace")
        if len(text) >= 2 and text[1] == " " and text[0] in STREAMS:
            out.append((STREAMS[text[0]], text[2:]))
        else:
            out.append(("fuxi", text))
    return out


def dropped_text(n: int) -> str:
    return (f"[fuxi] {n} bytes of older output dropped (kept: the newest "
            f"ATTEMPT_LOG_BYTES_MAX={ATTEMPT_LOG_BYTES_MAX} per attempt, "
            f"JOB_NODE_LOG_BYTES_MAX={JOB_NODE_LOG_BYTES_MAX} per job and node)")


# ----------------------------------------------------------------------- cursors

def attempt_key(task: str, instance: int, attempt: int) -> str:
    return f"{task}/{instance}/{attempt}"


def format_cursor(cursors: dict[str, int]) -> str:
    """A cursor token a user can hand back: ``key@offset`` joined by ``,`` (keys sorted)."""
    return ",".join(f"{k}@{v}" for k, v in sorted(cursors.items()))


def parse_cursor(token) -> dict[str, int]:
    """A token from ``format_cursor`` back, or CursorError saying what was wrong."""
    if not isinstance(token, str):
        raise CursorError(f"cursor must be text, got {type(token).__name__}")
    if len(token) > CURSOR_CHARS_MAX:
        raise CursorError(f"cursor of {len(token)} characters; at most {CURSOR_CHARS_MAX}")
    out: dict[str, int] = {}
    if not token.strip():
        return out
    for item in token.split(","):
        key, sep, off = item.rpartition("@")
        if not sep or not off.isdigit() or len(off) > 20:
            raise CursorError(f"cursor entry {item[:80]!r} is not <key>@<offset>; expected "
                              f"the token `fuxi job logs --json` printed")
        check_key(key)
        v = int(off)
        if v > OFFSET_MAX:
            raise CursorError(f"cursor offset {v} is out of range; expected 0..{OFFSET_MAX}")
        out[key] = v
        if len(out) > READ_ATTEMPTS_MAX:
            raise CursorError(f"cursor names more than READ_ATTEMPTS_MAX={READ_ATTEMPTS_MAX} "
                              f"attempts")
    return out


def check_key(key: str) -> str:
    """An attempt key ``task/instance/attempt`` (or a replica's ``rid``) a cursor may name."""
    parts = key.split("/")
    try:
        if len(parts) == 3:
            check_part(parts[0], "task")
            if not (parts[1].isdigit() and parts[2].isdigit()) or len(parts[1]) > 9 \
                    or len(parts[2]) > 9:
                raise ValueError("instance and attempt must be numbers")
        elif len(parts) == 1:
            check_part(parts[0], "replica")
        else:
            raise ValueError("expected task/instance/attempt or a replica name")
    except ValueError as e:
        raise CursorError(f"cursor key {key[:80]!r}: {e}") from None
    return key

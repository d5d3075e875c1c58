"""Captured output of attempts and service replicas (issue 18 part 2): files, the capture in
a worker's or replica's process, and the reader that agents and ``OfflineJobs`` use.

Where: ``$FUXI_HOME/<cluster>/logs/tasks/<job>/<task>/<instance>.<attempt>/`` and
``$FUXI_HOME/<cluster>/logs/services/<service>/<replica>/``, on the node that ran it (its own
``$FUXI_HOME``, from the environment Ray's processes got there), so they outlive the embedded
cluster's temp dir. Files rotate and are bounded by ``fuxi.core.tasklog``.

Capture: ``install()`` puts, once per process, a router in place of ``sys.stdout`` and
``sys.stderr`` and a handler on the root logger. ``begin(sink)`` ties the calling thread to an
attempt's sink until ``end``. What is guaranteed: everything the attempt's own thread writes
to ``sys.stdout``/``sys.stderr`` or logs (root logger, at the level the root is set to, and
``ctx.log``) lands in that attempt's files, never in another's. Writes from other threads
(threads the task started, Ray's) go to the process's *current* attempt -- the one begun
last and not ended, which in a worker is the one running -- or, with none, to the original
stream. Output written by C code straight to file descriptors 1 and 2 is *not* captured: it
goes to Ray's worker log files, as before.

Writes are buffered and flushed every ``FLUSH_S`` by one thread per process, so a line
printed while a task runs is on disk within about that long."""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time

from base.cluster import cluster_dir
from fuxi.core import tasklog as tl

FLUSH_S = 0.25  # how often buffered output goes to disk (live reads see it after this)
PENDING_BYTES_MAX = 64 * 1024  # a partial line (no newline yet) longer than this is written
LISTED_ENTRIES_MAX = 10_000  # directory entries one listing looks at
TRIM_JOBS_MAX = 64  # jobs whose bytes-since-last-walk one process remembers
CLUSTER_PREFIX = "fuxi-"  # Ray namespace of a cluster: fuxi-<cluster> (base.cluster.namespace)


def logs_root(cluster: str) -> str:
    return os.path.join(cluster_dir(cluster), "logs")


def cluster_of_namespace(ns: str | None) -> str:
    """The cluster name from this process's Ray namespace (``fuxi-<cluster>``)."""
    name = ns[len(CLUSTER_PREFIX):] if ns and ns.startswith(CLUSTER_PREFIX) else (ns or "default")
    try:
        cluster_dir(name)
    except Exception:  # noqa: BLE001 - a namespace that is no cluster name of ours
        return "default"
    return name


def attempt_dir(root: str, job_id: str, task: str, instance: int, attempt: int) -> str:
    return os.path.join(root, "tasks", tl.check_part(job_id, "job id"), tl.check_part(task, "task"),
                        f"{int(instance)}.{int(attempt)}")


def replica_dir(root: str, service: str, rid: str) -> str:
    return os.path.join(root, "services", tl.check_part(service, "service"),
                        tl.check_part(rid, "replica"))


def _listing(path: str) -> list[tuple[str, int]]:
    out = []
    try:
        with os.scandir(path) as it:
            for i, e in enumerate(it):
                if i >= LISTED_ENTRIES_MAX:
                    break
                try:
                    out.append((e.name, e.stat().st_size))
                except OSError:
                    pass
    except OSError:
        pass
    return out


class AttemptSink:
    """Appends one attempt's lines to its segment files, rotating and bounding them. Thread
    safe; ``job_dir`` (the job's directory on this node) is trimmed to the job's share."""

    def __init__(self, path: str, job_dir: str | None = None,
                 job_bytes_max: int = tl.JOB_NODE_LOG_BYTES_MAX):
        self.path = path
        self.job_dir = job_dir
        self.job_bytes_max = job_bytes_max  # the directory is made by the first line written
        self.layout = tl.parse_layout(_listing(path))
        self._lock = threading.Lock()
        self._file: io.BufferedWriter | None = None
        self._pending: dict[str, str] = {}
        self._dirty = False
        self.closed = False
        self.written_bytes = 0
        self._counted = 0  # of written_bytes, what _written_since_trim already has

    def write(self, stream: str, text: str) -> None:
        """Text as a stream wrote it: whole lines go out, a trailing partial line waits."""
        with self._lock:
            if self.closed:
                return
            buf = self._pending.get(stream, "") + text
            *lines, rest = buf.split("\n")
            for line in lines:
                self._line(stream, line)
            if len(rest.encode("utf-8", "replace")) > PENDING_BYTES_MAX:
                self._line(stream, rest)
                rest = ""
            self._pending[stream] = rest

    def line(self, stream: str, text: str) -> None:
        with self._lock:
            if not self.closed:
                for piece in text.splitlines() or [""]:
                    self._line(stream, piece)

    def _line(self, stream: str, text: str) -> None:
        for data in tl.encode_line(stream, text):
            plan = tl.plan_write(self.layout, len(data))
            if plan.new_segment is not None:
                if self._file is not None:
                    self._file.close()
                else:
                    os.makedirs(self.path, exist_ok=True)
                self._file = open(os.path.join(self.path, tl.segment_name(plan.new_segment)), "ab")
                self.layout.segments.append((plan.new_segment, 0))
                self._trim_job()
            elif self._file is None:  # a directory of before (a restarted replica): append
                s_last = self.layout.segments[-1][0]
                self._file = open(os.path.join(self.path, tl.segment_name(s_last)), "ab")
            for s in plan.delete:
                self._remove(s)
            self._file.write(data)
            s, n = self.layout.segments[-1]
            self.layout.segments[-1] = (s, n + len(data))
            self.written_bytes += len(data)
            self._dirty = True

    def _remove(self, start: int) -> None:
        try:
            os.remove(os.path.join(self.path, tl.segment_name(start)))
        except OSError:
            pass
        self.layout.segments = [(s, n) for s, n in self.layout.segments if s != start]

    def _trim_job(self) -> None:
        """Keep the job's attempts on this node within JOB_NODE_LOG_BYTES_MAX (at rotation).
        The job's directory is walked only after this process wrote another segment's worth
        for the job since it last looked (so many small attempts cost no walk each); the
        bound is overshot by at most a segment per process writing for the job."""
        if not self.job_dir:
            return
        with _trim_lock:
            since = _written_since_trim.get(self.job_dir, 0) + self.written_bytes - self._counted
            self._counted = self.written_bytes
            if self.job_dir in _written_since_trim and since < tl.SEGMENT_BYTES_MAX:
                _written_since_trim[self.job_dir] = since
                return
            _written_since_trim[self.job_dir] = 0
            if len(_written_since_trim) > TRIM_JOBS_MAX:  # bounded: forget the oldest job
                _written_since_trim.pop(next(iter(_written_since_trim)))
        layouts, ages = {}, {}
        count = 0
        for root, _dirs, files in os.walk(self.job_dir):
            count += len(files)
            if count > LISTED_ENTRIES_MAX:
                break
            lay = tl.parse_layout([(f, _size(os.path.join(root, f))) for f in files])
            if lay.segments:
                layouts[root] = lay
                for s, _ in lay.segments:
                    ages[(root, s)] = _mtime(os.path.join(root, tl.segment_name(s)))
        if self.path in layouts:
            layouts[self.path] = self.layout  # ours as we know it (bytes not yet flushed)
        for where, s, gone_end in tl.plan_job_trim(layouts, ages, self.job_bytes_max,
                                                    keep=self.path):
            if where == self.path:
                self._remove(s)
                continue
            try:
                os.remove(os.path.join(where, tl.segment_name(s)))
                if gone_end:
                    open(os.path.join(where, tl.gone_name(gone_end)), "ab").close()
            except OSError:
                pass

    def flush(self) -> None:
        with self._lock:
            if self._dirty and self._file is not None:
                try:
                    self._file.flush()
                except (OSError, ValueError):
                    pass
                self._dirty = False

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            for stream, rest in self._pending.items():
                if rest:
                    self._line(stream, rest)
            self._pending.clear()
            self.closed = True
            if self._file is not None:
                self._file.close()
                self._file = None


_trim_lock = threading.Lock()
_written_since_trim: dict[str, int] = {}  # job dir -> bytes this process wrote since a walk


def _size(p: str) -> int:
    try:
        return os.path.getsize(p)
    except OSError:
        return 0


def _mtime(p: str) -> float:
    try:
        return os.path.getmtime(p)
    except OSError:
        return 0.0


# ----------------------------------------------------------------------- capture

class _Capture:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_thread: dict[int, AttemptSink] = {}
        self.current: AttemptSink | None = None
        self.sinks: list[AttemptSink] = []
        self.orig = {"stdout": sys.stdout, "stderr": sys.stderr}
        self.installed = False

    def sink_for(self, thread: int | None = None) -> AttemptSink | None:
        s = self.by_thread.get(threading.get_ident() if thread is None else thread)
        return s if s is not None else self.current


class _Router(io.TextIOBase):
    """Stands in for sys.stdout / sys.stderr: each write goes to the writer's attempt."""

    def __init__(self, cap: _Capture, stream: str):
        self._cap, self._stream = cap, stream

    def write(self, text) -> int:
        sink = self._cap.sink_for()
        if sink is None:
            orig = self._cap.orig[self._stream]
            return orig.write(text) if orig is not None else len(text)
        sink.write(self._stream, str(text))
        return len(text)

    def flush(self) -> None:
        orig = self._cap.orig[self._stream]
        if orig is not None and self._cap.sink_for() is None:
            try:
                orig.flush()
            except (OSError, ValueError):
                pass

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self):
        return "utf-8"

    def fileno(self) -> int:  # C code and subprocesses: the real descriptor (not captured)
        orig = self._cap.orig[self._stream]
        if orig is None:
            raise io.UnsupportedOperation("fileno")
        return orig.fileno()


class _Handler(logging.Handler):
    def __init__(self, cap: _Capture, stream: str):
        super().__init__(logging.NOTSET)
        self._cap, self._stream = cap, stream
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        sink = self._cap.sink_for(record.thread)
        if sink is None:
            return
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a bad format string must not fail the task
            text = str(record.msg)
        sink.line(self._stream, text)


_cap = _Capture()
CTX_HANDLER = _Handler(_cap, "ctx.log")  # added to a worker's ctx.log logger


def install() -> None:
    """Route this process's stdout, stderr and root logging to attempts (idempotent)."""
    with _cap.lock:
        # Someone (a test runner, a user's code) may have put its own stream in place since:
        # it becomes the original, and the router goes back in front of it.
        for name in ("stdout", "stderr"):
            if not isinstance(getattr(sys, name), _Router):
                _cap.orig[name] = getattr(sys, name)
                setattr(sys, name, _Router(_cap, name))
        if _cap.installed:
            return
        logging.getLogger().addHandler(_Handler(_cap, "logging"))
        _cap.installed = True
        threading.Thread(target=_flush_forever, name="fuxi-logs-flush", daemon=True).start()


def _flush_forever() -> None:
    while True:
        time.sleep(FLUSH_S)
        with _cap.lock:
            sinks = list(_cap.sinks)
        for s in sinks:
            s.flush()


def begin(sink: AttemptSink) -> None:
    """The calling thread writes to ``sink`` (and it is the process's current one)."""
    install()
    with _cap.lock:
        _cap.by_thread[threading.get_ident()] = sink
        _cap.current = sink
        _cap.sinks.append(sink)


def end(sink: AttemptSink) -> None:
    with _cap.lock:
        for t, s in list(_cap.by_thread.items()):
            if s is sink:
                del _cap.by_thread[t]
        if _cap.current is sink:
            _cap.current = None
        if sink in _cap.sinks:
            _cap.sinks.remove(sink)
    sink.close()


def open_attempt(cluster: str, job_id: str, task: str, instance: int, attempt: int
                 ) -> AttemptSink | None:
    """The sink of one attempt, or None when its directory cannot be made (never fails a task)."""
    try:
        root = logs_root(cluster)
        path = attempt_dir(root, job_id, task, instance, attempt)
        return AttemptSink(path, os.path.join(root, "tasks", job_id))
    except (OSError, ValueError):
        return None


def open_replica(cluster: str, service: str, rid: str) -> AttemptSink | None:
    try:
        return AttemptSink(replica_dir(logs_root(cluster), service, rid))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------- reading

def read_layout_lines(path: str, cursor: int, bytes_max: int) -> dict:
    """Whole lines of one attempt's files from ``cursor``: {lines: [[stream, text]], cursor,
    dropped, end}."""
    lay = tl.parse_layout(_listing(path))
    plan = tl.plan_read(lay, cursor, bytes_max)
    data = b""
    for s, off, n in plan.pieces:
        try:
            with open(os.path.join(path, tl.segment_name(s)), "rb") as f:
                f.seek(off)
                chunk = f.read(n)
        except OSError:
            break  # rotated away meanwhile: the next read reports it as dropped
        data += chunk
        if len(chunk) < n:
            break
    data = tl.whole_lines(data)
    start = cursor + plan.dropped if cursor < lay.start else cursor
    start = min(start, plan.end)
    lines = [[st, tx] for st, tx in tl.decode_lines(data)] if data else []
    if plan.dropped:
        lines.insert(0, ["fuxi", tl.dropped_text(plan.dropped)])
    return {"lines": lines, "cursor": start + len(data), "dropped": plan.dropped,
            "end": plan.end}


def read_job(root: str, job_id: str, task: str | None = None, instance: int | None = None,
             attempt: int | None = None, cursors: dict | None = None,
             bytes_max: int = tl.LOG_READ_BYTES_MAX) -> dict:
    """Captured output of a job's attempts kept under ``root`` (this node's logs dir):
    {attempts: [{task, instance, attempt, key, lines, cursor, dropped, end}], more: bool}."""
    base = os.path.join(root, "tasks", tl.check_part(job_id, "job id"))
    keys = []
    tasks = [task] if task is not None else sorted(n for n, _ in _listing(base))
    for t in tasks:
        try:
            tl.check_part(t, "task")
        except ValueError:
            continue
        for name, _ in _listing(os.path.join(base, t)):
            i, _, a = name.partition(".")
            if not (i.isdigit() and a.isdigit()):
                continue
            if (instance is None or int(i) == instance) and (attempt is None or int(a) == attempt):
                keys.append((t, int(i), int(a)))
    keys.sort()
    return _read_keys([(tl.attempt_key(*k), os.path.join(base, k[0], f"{k[1]}.{k[2]}"),
                        {"task": k[0], "instance": k[1], "attempt": k[2]}) for k in keys],
                      cursors or {}, bytes_max)


def read_service(root: str, service: str, replica: str | None = None, cursors: dict | None = None,
                 bytes_max: int = tl.LOG_READ_BYTES_MAX) -> dict:
    base = os.path.join(root, "services", tl.check_part(service, "service"))
    rids = [replica] if replica is not None else sorted(n for n, _ in _listing(base))
    entries = []
    for r in rids:
        try:
            tl.check_part(r, "replica")
        except ValueError:
            continue
        p = os.path.join(base, r)
        if os.path.isdir(p):
            entries.append((r, p, {"replica": r}))
    return _read_keys(entries, cursors or {}, bytes_max)


def _read_keys(entries: list, cursors: dict, bytes_max: int) -> dict:
    out, budget, more = [], max(0, int(bytes_max)), False
    for key, path, ident in entries[: tl.READ_ATTEMPTS_MAX]:
        got = read_layout_lines(path, int(cursors.get(key, 0)), budget)
        budget -= sum(len(t) + 3 for _, t in got["lines"])
        more = more or got["cursor"] < got["end"]
        out.append({**ident, "key": key, **got})
        if budget <= 0:
            more = True
            break
    return {"attempts": out, "more": more or len(entries) > tl.READ_ATTEMPTS_MAX}


def merge_replies(replies: list[dict]) -> dict:
    """Replies of several nodes as one. An attempt ran on one node, but nodes that share a
    disk (several Ray nodes on one machine) all see its files: one copy is kept, the one
    read furthest."""
    best: dict[str, dict] = {}
    more = False
    for r in replies:
        for a in r.get("attempts", ()):
            if a["key"] not in best or a["cursor"] > best[a["key"]]["cursor"]:
                best[a["key"]] = a
        more = more or bool(r.get("more"))
    attempts = list(best.values())
    attempts.sort(key=lambda a: (a.get("task", ""), a.get("instance", 0), a.get("attempt", 0),
                                 a.get("replica", "")))
    return {"attempts": attempts, "more": more}

"""The worker actor: runs attempts pushed by its JobMaster, one at a time, in FIFO order.

The JobMaster talks to a worker with one call, ``exchange(push, skip, wait_s)``: it appends new
attempts to the worker's queue and returns, as soon as at least one attempt has finished (or
after ``wait_s``), every finished attempt's result plus the attempt now running and for how
long. Many short attempts therefore cost one Ray call per batch, not one per attempt.

Attempts run on one executor thread; the actor's asyncio loop stays free to answer. To stop a
running attempt (it lost to a backup, or timed out) the worker raises ``AttemptStopped`` in
the executor thread (``PyThreadState_SetAsyncExc``: it fires at the next Python bytecode, so
code blocked in C — a sleep, a long numpy call — stops when that call returns) and hands the
queue to a fresh executor thread at once, so the worker keeps working. The exception is only
ever raised while the thread is inside the user's ``fn`` (checked under ``_fn_lock``, a plain
lock whose ``with`` cannot be split by it), never inside the worker's own bookkeeping, where it
could leave a lock held. Like KeyboardInterrupt, it can still interrupt user code holding a
Python-level lock of its own; a worker wedged that way is caught by the stuck check below. An attempt that has not
stopped after ``STOP_GRACE_S`` is reported as stuck and the JobMaster kills the whole worker
and replaces it — the same two-step shape as Spark's task reaper. Starting a worker costs
~0.5 CPU-seconds here, so interrupting is much cheaper than always killing.

Shuffle output stays in the worker's memory until the JobMaster collects it with
``take_outputs`` (``num_returns`` = parts + 1), which makes the JobMaster the *owner* of those
objects: they live in the object store and survive this worker being killed afterwards.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

import ray

from fuxi.context import TaskContext
from fuxi.errors import BadInput
from fuxi.io.mapout import STREAMED_MODES, MapOutput
from fuxi.io.output import OutputLocation
from fuxi.io.shuffle import partition_table
from fuxi.core import attempt_faults as faults
from fuxi.core.attempt_faults import FaultPolicy
from fuxi.core.spec import resolve_fn
from fuxi.shells import tasklogs

# Limits (units last). The JobMaster enforces timeouts; these bound the worker's own memory.
RESULT_LOG_LINES_MAX = 2000
LOG_LINE_CHARS_MAX = 4000
EMIT_BYTES_MAX = 8 * 1024**3
UPSTREAM_GET_TIMEOUT_S = 600.0
QUEUE_MAX = 4096  # attempts queued on one worker (the JobMaster keeps far fewer)
STOP_GRACE_S = 10.0  # a stopped attempt still running after this makes the worker "stuck"
FAULT_SLEEP_STEP_S = 0.05  # an injected hang sleeps in steps this long, so a stop lands
REPLY_RESULTS_MAX = 512  # finished results returned by one exchange (the rest wait for the next)


def _map_output(spec):
    """A shuffle map's output partitioned as it is emitted (one ``hash``/``direct`` edge, no
    output location of its own: nothing needs the whole table), else None."""
    if spec.output or len(spec.downstream) != 1 or spec.downstream[0].mode not in STREAMED_MODES:
        return None
    return MapOutput(spec.downstream[0], spec.instance, spec.num_instances)


def _output_opener(spec):
    """For ``ctx.write_output``: opens this attempt's streamed output file (None: no output)."""
    if not spec.output:
        return None
    return lambda: OutputLocation(spec.output).open_attempt(spec.task, spec.instance,
                                                            spec.attempt)


class AttemptLogHandler(logging.Handler):
    """Collects formatted log lines for the attempt being run (bounded). Only records logged
    from the attempt's own thread count: a stopped attempt may still be winding down on
    another thread of the same worker."""

    def __init__(self, lines_max: int, line_chars_max: int):
        super().__init__(logging.DEBUG)
        self.thread_id = threading.get_ident()
        self.lines: list[str] = []
        self.dropped = 0
        self.lines_max = lines_max
        self.line_chars_max = line_chars_max
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread_id:
            return
        if len(self.lines) >= self.lines_max:
            self.dropped += 1
            return
        try:
            self.lines.append(self.format(record)[: self.line_chars_max])
        except Exception:  # a bad format string must not fail the task
            self.lines.append(str(record.msg)[: self.line_chars_max])


class AttemptStopped(BaseException):
    """Raised inside an attempt's thread to stop it (BaseException: ``except Exception`` in
    user code does not swallow it)."""


def _interrupt(thread: threading.Thread) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                               ctypes.py_object(AttemptStopped))


@ray.remote(num_cpus=0)
class WorkerActor:
    def __init__(self, job_id: str, worker_id: str, sys_path: list[str] | None = None,
                 token: str = "", faults: dict | None = None):
        from zhongkui.files import private_files

        private_files()  # anything an instance writes locally (issue 14)
        if token:  # the job's scoped token: instances act as the submitter, no more
            from zhongkui import creds

            creds.set_token(token)
        for p in sys_path or []:  # the submit directory, where the job's own modules live
            if p not in sys.path:
                sys.path.insert(0, p)
        self.job_id = job_id
        self.worker_id = worker_id
        self._faults = FaultPolicy.from_dict(faults)  # the job's fault injection (tests only)
        self._token = token  # calls that change this worker carry it (only its JobMaster)
        self._cond = threading.Condition()
        self._queue: deque = deque()
        self._skip: set = set()
        self._finished: list[dict] = []
        self._running: tuple | None = None  # (key, monotonic start, thread)
        self._generation = 0  # the executor thread of the current generation owns the queue
        self._stopping: dict[tuple, tuple] = {}  # key -> (thread, monotonic stop time)
        self._fn_lock = threading.Lock()  # guards _in_fn; taken by the stopper to interrupt
        self._in_fn: dict[int, tuple] = {}  # thread ident -> attempt key, while fn(ctx) runs
        self._outputs: dict[tuple, list] = {}
        self._fns: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._log = logging.getLogger(f"fuxi.task.{worker_id}")
        self._log.propagate = False
        self._log.setLevel(logging.DEBUG)
        self._start_executor()

    def _start_executor(self) -> None:
        threading.Thread(target=self._run_forever, args=(self._generation,),
                         name=f"fuxi-executor-{self._generation}", daemon=True).start()

    def ping(self) -> dict:
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def _caller(self, cred, what: str) -> None:
        from zhongkui.guard import require_capability

        require_capability(self._token, cred, f"{what} on worker {self.worker_id}")

    async def exchange(self, push: list, skip: list, wait_s: float, front: list = (),
                       cred: str | None = None) -> dict:
        self._caller(cred, "exchange")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._event = asyncio.Event()
        with self._cond:
            if len(self._queue) + len(push) + len(front) > QUEUE_MAX:
                raise RuntimeError(f"worker queue would exceed QUEUE_MAX={QUEUE_MAX}")
            for k in skip:
                self._stop(tuple(k))
            self._queue.extend(push)
            self._queue.extendleft(reversed(front))
            self._cond.notify()
            busy = bool(self._queue) or self._running is not None
            ready = bool(self._finished)
        if not ready and busy:
            self._event.clear()
            with self._cond:
                ready = bool(self._finished)
            if not ready:
                try:
                    await asyncio.wait_for(self._event.wait(), timeout=wait_s)
                except asyncio.TimeoutError:
                    pass
        with self._cond:
            finished = self._finished[:REPLY_RESULTS_MAX]
            del self._finished[:REPLY_RESULTS_MAX]
            running = []
            if self._running is not None:
                key, t0, _ = self._running
                running.append((key, time.monotonic() - t0))
            now = time.monotonic()
            for key, (thread, t_stop) in list(self._stopping.items()):
                if not thread.is_alive():
                    del self._stopping[key]
            stuck = [(k, now - t) for k, (_, t) in self._stopping.items() if now - t > STOP_GRACE_S]
        return {"finished": finished, "running": running, "stuck": stuck,
                "stopping": len(self._stopping)}

    def _stop(self, key: tuple) -> None:
        """Skip a queued attempt, or interrupt the running one and continue on a new thread.
        Called with ``self._cond`` held."""
        if self._running is not None and self._running[0] == key:
            thread = self._running[2]
            self._stopping[key] = (thread, time.monotonic())
            self._running = None
            self._generation += 1
            with self._fn_lock:
                if self._in_fn.get(thread.ident) == key:
                    _interrupt(thread)
            self._start_executor()
        else:
            self._skip.add(key)

    def control(self, front: list, skip: list, cred: str | None = None) -> None:
        """Urgent changes while an ``exchange`` is in flight: backups to the front of the queue,
        attempts to stop. (The JobMaster would otherwise wait for the exchange to return.)"""
        self._caller(cred, "control")
        with self._cond:
            if len(self._queue) + len(front) > QUEUE_MAX:
                raise RuntimeError(f"worker queue would exceed QUEUE_MAX={QUEUE_MAX}")
            for k in skip:
                self._stop(tuple(k))
            self._queue.extendleft(reversed(front))
            self._cond.notify()

    def take_outputs(self, key: tuple, cred: str | None = None) -> tuple:
        """Hand over an attempt's partitions: (True, table, table, ...) — see module doc."""
        self._caller(cred, "take outputs")
        with self._cond:
            tables = self._outputs.pop(tuple(key), None)
        if tables is None:
            raise RuntimeError(f"worker {self.worker_id} holds no output for attempt {key}")
        return (True, *tables)

    def drop_outputs(self, keys: list, cred: str | None = None) -> int:
        """Forget outputs nobody will take (the attempt lost its race)."""
        self._caller(cred, "drop outputs")
        with self._cond:
            return sum(1 for k in keys if self._outputs.pop(tuple(k), None) is not None)

    # ---------------------------------------------------------------- executor thread

    def _run_forever(self, generation: int) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while not self._queue and generation == self._generation:
                    self._cond.wait(timeout=1.0)
                if generation != self._generation:
                    return  # stopped mid-attempt: a newer executor owns the queue
                spec = self._queue.popleft()
                if spec.key in self._skip:
                    self._skip.discard(spec.key)
                    continue
                self._running = (spec.key, time.monotonic(), me)
            try:
                result = self._run_one(spec)
            except AttemptStopped:  # landed outside the attempt's own try block
                result = None
            with self._cond:
                if generation != self._generation:
                    self._stopping.pop(spec.key, None)
                    return  # this attempt was stopped; its result is not wanted
                self._running = None
                self._finished.append(result)
            loop, event = self._loop, self._event
            if loop is not None and event is not None:
                loop.call_soon_threadsafe(event.set)

    def _get_upstream(self, refs: tuple) -> list:
        return ray.get(list(refs), timeout=UPSTREAM_GET_TIMEOUT_S)

    def _inject(self, spec) -> None:
        """The job's fault injection (``faults:`` in its spec; never on by default): fail this
        attempt, or hang it for ``hang_s`` (in short sleeps, so a stop still lands) and fail."""
        what = faults.decide(self._faults, spec.task, spec.instance, spec.attempt)
        if what == faults.FAIL:
            raise faults.InjectedFault(
                f"injected attempt failure (faults.attempt_fail_fraction="
                f"{self._faults.attempt_fail_fraction:g}, seed {self._faults.seed})")
        if what == faults.HANG:
            until = time.monotonic() + self._faults.hang_s
            while time.monotonic() < until:
                time.sleep(min(FAULT_SLEEP_STEP_S, max(until - time.monotonic(), 0.0)))
            raise faults.InjectedFault(
                f"injected hang of {self._faults.hang_s:g}s ended (faults.attempt_hang_fraction="
                f"{self._faults.attempt_hang_fraction:g}, seed {self._faults.seed})")

    def _capture(self, spec):
        """Start capturing this thread's output into the attempt's files (None: cannot)."""
        sink = tasklogs.open_attempt(tasklogs.cluster_of_namespace(
            ray.get_runtime_context().namespace), spec.job_id, spec.task, spec.instance,
            spec.attempt)
        if sink is not None:
            tasklogs.begin(sink)
            if tasklogs.CTX_HANDLER not in self._log.handlers:
                self._log.addHandler(tasklogs.CTX_HANDLER)
        return sink

    def _run_one(self, spec) -> dict:
        handler = AttemptLogHandler(RESULT_LOG_LINES_MAX, LOG_LINE_CHARS_MAX)
        self._log.addHandler(handler)
        t0 = time.monotonic()
        result: dict[str, Any] = {"key": spec.key, "ok": False}
        sink = self._capture(spec)  # print(), stderr, logging of this attempt (issue 18)
        ctx = None
        try:
            fn = self._fns.get(spec.fn)
            if fn is None:
                fn = self._fns[spec.fn] = resolve_fn(spec.fn)
            mapped = _map_output(spec)
            ctx = TaskContext(spec, self._get_upstream, self._log, EMIT_BYTES_MAX,
                              _output_opener(spec), mapped)
            me = threading.get_ident()
            with self._fn_lock:
                self._in_fn[me] = spec.key
            try:
                self._inject(spec)  # inside the fn region: a hang is stopped like the fn is
                returned = fn(ctx)
            finally:
                with self._fn_lock:
                    self._in_fn.pop(me, None)
            if returned is not None:
                ctx.emit(returned)
            table = ctx._output()
            streamed, ctx._output_writer = ctx._output_writer, None
            if streamed is not None:  # the fn wrote its output itself (ctx.write_output)
                if table.num_rows and not spec.downstream:
                    streamed.abort()
                    raise BadInput(f"task {spec.task!r} both streamed its output with "
                                   f"write_output() and returned or emitted {table.num_rows} "
                                   "rows; expected one or the other")
                streamed = streamed.close()
            parts: list[tuple] = []
            tables: list = []
            if mapped is not None:
                for p, piece in mapped.pieces().items():
                    parts.append((spec.downstream[0].consumer, p))
                    tables.append(piece)
                rows = mapped.rows
            elif table.num_columns:
                for edge in spec.downstream:
                    pieces = partition_table(table, edge.mode, edge.num_partitions, spec.instance,
                                             edge.partition_by, spec.num_instances)
                    for p, piece in sorted(pieces.items()):
                        parts.append((edge.consumer, p))
                        tables.append(piece)
                if spec.output and streamed is None:
                    OutputLocation(spec.output).write_attempt(spec.task, spec.instance,
                                                              spec.attempt, table)
            elif spec.output and streamed is None:
                OutputLocation(spec.output).write_attempt(spec.task, spec.instance, spec.attempt,
                                                          table)
            if tables:
                with self._cond:
                    self._outputs[spec.key] = tables
            if mapped is None:
                rows = table.num_rows if streamed is None or spec.downstream else streamed["rows"]
            result.update(ok=True, rows=rows, parts=parts)
        except BaseException as e:  # the user's code may raise anything; report it, stay alive
            if ctx is not None and ctx._output_writer is not None:
                ctx._output_writer.abort()
            result["error"] = "".join(traceback.format_exception(e))
            handler.lines.append(f"attempt failed: {type(e).__name__}: {e}")
        finally:
            self._log.removeHandler(handler)
            if sink is not None:  # an attempt that wrote nothing and succeeded leaves no file
                if result.get("error"):
                    sink.line("fuxi", result["error"].rstrip())
                if sink.written_bytes:
                    how = "succeeded" if result.get("ok") else "failed"
                    sink.line("fuxi", f"[fuxi] attempt {how} after {time.monotonic() - t0:.2f}s")
                tasklogs.end(sink)
        result["duration_s"] = time.monotonic() - t0
        if handler.dropped:
            handler.lines.append(f"... {handler.dropped} more lines dropped "
                                 f"(RESULT_LOG_LINES_MAX={RESULT_LOG_LINES_MAX})")
        result["logs"] = handler.lines
        return result

"""Captured output for ``fuxi job logs`` and ``fuxi service logs`` (issue 18 part 2): one read,
or (``-f``) reads every ``FOLLOW_POLL_S`` with a cursor per attempt until the job ends (exit
by its state: 0 succeeded, 1 otherwise) or Ctrl-C (130). A service is followed until Ctrl-C.

Text lines read ``task[i] aN stream: text`` (``replica stream: text`` for a service); with
``--json`` one JSON object a line: ``{"task", "instance", "attempt", "stream", "line"}`` (or
``"replica"``), and after each read that moved, ``{"cursor": TOKEN}``, which ``--cursor``
takes back to go on from there."""

from __future__ import annotations

import json
import sys
import time

import typer

from cli.common import EXIT_BAD_INPUT, EXIT_JOB_FAILED, EXIT_OK, fail
from cli.top import EXIT_INTERRUPTED  # one Ctrl-C code (cli.events has it too)

FOLLOW_POLL_S = 0.5  # a followed stream is read this often (live lines show within ~1 s)
FOLLOW_STATUS_S = 1.0  # how often -f asks whether the job ended
DRAIN_READS_MAX = 1000  # reads after the job ended to fetch what is left (bounded)


def check_inputs(attempt, cursor: str) -> dict[str, int]:
    """Checks the CLI can make before anything is read (exit 2 with the reason)."""
    from fuxi.core import tasklog as tl

    if attempt is not None and attempt < 0:
        fail(f"--attempt {attempt} is not valid; expected a number >= 0 (0 is the first)",
             EXIT_BAD_INPUT)
    try:
        return tl.parse_cursor(cursor or "")
    except tl.CursorError as e:
        fail(f"--cursor: {e}", EXIT_BAD_INPUT)


def check_selection(st: dict, task, instance) -> None:
    """--task and --instance against the job's own tasks (exit 2 naming the choices)."""
    tasks = st.get("tasks") or {}
    if task is not None and tasks and task not in tasks:
        fail(f"job {st.get('job_id')} has no task {task!r}; its tasks: {', '.join(sorted(tasks))}",
             EXIT_BAD_INPUT)
    if instance is not None:
        n = (tasks.get(task) or {}).get("instances") if task is not None else None
        if instance < 0 or (n is not None and instance >= n):
            fail(f"--instance {instance} is not valid; expected 0..{(n or 1) - 1}"
                 + (f" (task {task!r} has {n})" if n is not None else ""), EXIT_BAD_INPUT)


def _emit(reply: dict, cursors: dict, as_json: bool, service: bool, skip_streams=()) -> bool:
    """Print a reply's lines, move ``cursors``; True when anything moved."""
    moved = False
    for a in reply.get("attempts", ()):
        key = a["key"]
        if a["cursor"] != cursors.get(key, 0):
            moved = True
        cursors[key] = a["cursor"]
        who = a["replica"] if service else f"{a['task']}[{a['instance']}] a{a['attempt']}"
        for stream, text in a["lines"]:
            if stream in skip_streams:
                continue
            if as_json:
                ident = ({"replica": a["replica"]} if service else
                         {"task": a["task"], "instance": a["instance"], "attempt": a["attempt"]})
                sys.stdout.write(json.dumps({**ident, "stream": stream, "line": text}) + "\n")
            else:
                sys.stdout.write(f"{who} {stream}: {text}\n")
    for node in reply.get("unreachable") or ():
        typer.echo(f"fuxi: the agent of node {node[:12]} did not answer; its output shows later",
                   err=True)
    if moved and as_json:
        from fuxi.core.tasklog import format_cursor

        sys.stdout.write(json.dumps({"cursor": format_cursor(cursors)}) + "\n")
    sys.stdout.flush()
    return moved


def read_all(read, cursors: dict, as_json: bool, service: bool, skip_streams=()) -> None:
    """Read until nothing more is waiting (bounded by DRAIN_READS_MAX)."""
    for _ in range(DRAIN_READS_MAX):
        from fuxi.core.tasklog import format_cursor

        reply = read(format_cursor(cursors))
        moved = _emit(reply, cursors, as_json, service, skip_streams)
        if not reply.get("more") or not moved:
            return


def follow_job(jobs, job_id: str, read, cursors: dict, as_json: bool) -> int:
    """Stream until the job ends; the exit code by its state."""
    from fuxi.core.states import TERMINAL_JOB

    terminal = {getattr(s, "value", s) for s in TERMINAL_JOB}
    seen = {"checked": 0.0, "state": None}

    def ended() -> int | None:
        if time.monotonic() - seen["checked"] >= FOLLOW_STATUS_S:
            seen["checked"] = time.monotonic()
            seen["state"] = jobs.status(job_id)["state"]
        if seen["state"] not in terminal:
            return None
        read_all(read, cursors, as_json, False)  # what was written before it ended
        return EXIT_OK if seen["state"] == "succeeded" else EXIT_JOB_FAILED

    return _follow(read, cursors, as_json, False, ended)


def follow_service(read, cursors: dict, as_json: bool) -> int:
    return _follow(read, cursors, as_json, True, lambda: None)


def _follow(read, cursors: dict, as_json: bool, service: bool, ended) -> int:
    """Poll ``read`` from the cursors until ``ended()`` gives an exit code, or Ctrl-C (130)."""
    from fuxi.core.tasklog import format_cursor

    try:
        while True:
            code = ended()
            if code is not None:
                return code
            reply = read(format_cursor(cursors))
            _emit(reply, cursors, as_json, service)
            if not reply.get("more"):
                time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

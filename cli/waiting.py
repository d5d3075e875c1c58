"""Waiting from the command line: ``fuxi job wait``, ``fuxi submit``'s follow, and
``fuxi service register|upgrade --wait``; what a timeout and a Ctrl-C mean (exit codes in
``base.errors``: 0 done, 1 the job failed or the rollout was rolled back, 4 timed out with the
work still going, 130 interrupted -- the job keeps running unless --cancel-on-interrupt)."""

from __future__ import annotations

import math
import time
from typing import NoReturn

import typer

from cli.common import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_JOB_FAILED, EXIT_TIMEOUT, fail,
                        handle, print_json)

WAIT_TIMEOUT_S_MAX = 30 * 24 * 3600.0  # the largest --timeout (30 days)
SERVICE_WAIT_TIMEOUT_S = 300.0  # `service register|upgrade --wait`'s default --timeout
SERVICE_POLL_S = 0.5  # between two reads of a service's status while waiting for it


def summary(st: dict) -> None:
    """A job's end in two lines: state and time, output (or the report, on stderr)."""
    took = ""
    if st.get("started_at") and st.get("finished_at"):
        took = f" in {st['finished_at'] - st['started_at']:.2f}s"
    typer.echo(f"job {st['job_id']} {st['state']}{took}")
    if st["state"] == "succeeded" and st.get("output"):
        typer.echo(f"output: {st['output']}")
    if st.get("report"):
        typer.echo(st["report"], err=True)


def check_timeout(timeout_s: float | None, flag: str = "--timeout") -> None:
    """A --timeout is a number of seconds from 0 to WAIT_TIMEOUT_S_MAX (bad input: exit 2)."""
    if timeout_s is not None and not (math.isfinite(timeout_s)
                                      and 0 <= timeout_s <= WAIT_TIMEOUT_S_MAX):
        fail(f"{flag} {timeout_s:g}: expected seconds from 0 to {WAIT_TIMEOUT_S_MAX:g} "
             f"(WAIT_TIMEOUT_S_MAX)", EXIT_BAD_INPUT)


def interrupted(jobs, job_id: str, cancel: bool) -> NoReturn:
    """Ctrl-C while following a job: cancel it when asked, else leave it running; exit 130."""
    if cancel:
        jobs.cancel(job_id)
        typer.echo(f"interrupted: cancelled {job_id}", err=True)
    else:
        typer.echo(f"interrupted: {job_id} keeps running (`fuxi job wait {job_id}` to follow "
                   f"it again, `fuxi job cancel {job_id}` to stop it)", err=True)
    raise typer.Exit(EXIT_INTERRUPTED)


def finish(st: dict, timeout_s: float | None, as_json: bool) -> None:
    """Print a waited-for job's status; exit 1 if it failed or was cancelled, 4 if it was
    still running at ``timeout_s``."""
    from fuxi.client import TERMINAL

    print_json(st) if as_json else summary(st)
    if st["state"] == "succeeded":
        return
    if st["state"] in TERMINAL:
        raise typer.Exit(EXIT_JOB_FAILED)
    fail(f"job {st['job_id']} is still {st['state']} after --timeout {timeout_s:g}s; it keeps "
         f"running (`fuxi job wait {st['job_id']}` again, or `fuxi job cancel "
         f"{st['job_id']}`)", EXIT_TIMEOUT)


def service_verdict(st: dict, version: str) -> str | None:
    """``fuxi.servicedecl.service_verdict`` (the Python API's wait decides the same way), with
    the command that shows why a rollback happened."""
    from fuxi.servicedecl import service_verdict as verdict

    out = verdict(st, version)
    if out is not None and "rolled back" in out:
        out = out.replace("(its status's events say why)",
                          f"(`fuxi service status {st['name']}` shows why)")
    return out


def wait_service(cluster: str, name: str, version: str, timeout_s: float) -> dict:
    """Read the service's status until ``service_verdict`` decides, or ``timeout_s`` passes
    (exit 4); a rollback or removal exits 1."""
    from fuxi.client import FuxiClient
    from fuxi.runtime import connect

    deadline = time.monotonic() + timeout_s
    try:
        with connect(cluster, embedded_ok=False) as conn:
            client = FuxiClient(conn.master, cluster)
            while True:
                st = client.service_status(name)
                verdict = service_verdict(st, version)
                if verdict == "ready":
                    return st
                if verdict is not None:
                    fail(verdict, EXIT_JOB_FAILED)
                if time.monotonic() >= deadline:
                    fail(f"service {name}: {st['ready']}/{st['desired']} replicas ready after "
                         f"--timeout {timeout_s:g}s (version {version}); it keeps trying "
                         f"(`fuxi service status {name}`)", EXIT_TIMEOUT)
                time.sleep(SERVICE_POLL_S)
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - our errors become exit codes
        handle(e)

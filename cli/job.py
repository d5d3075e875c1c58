"""``fuxi job list|status|logs|cancel``."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Iterator, Optional

import typer

from cli.common import (EXIT_BAD_INPUT, EXIT_JOB_FAILED, ClusterOpt, blacklist_text, fail, handle,
                        print_json)
from cli.complete import job_ids
from cli.waiting import check_timeout, finish, interrupted

app = typer.Typer(no_args_is_help=True)
JobIdArg = typer.Argument(..., help="The job's id (`fuxi job list`).", autocompletion=job_ids)


@contextlib.contextmanager
def jobs_client(cluster: str) -> Iterator:
    """The running cluster's client, or the records on disk when no cluster runs (no Ray)."""
    from fuxi.client import FuxiClient, OfflineJobs
    from fuxi.runtime import cluster_dir, connect, find_cluster

    if find_cluster(cluster) is None:
        yield OfflineJobs(cluster_dir(cluster))
        return
    with connect(cluster, embedded_ok=False) as conn:
        yield FuxiClient(conn.master, cluster)


def _query(cluster: str, call):
    """Run ``call(jobs)`` on the running cluster or the records on disk; errors become exit codes."""
    try:
        with jobs_client(cluster) as jobs:
            return call(jobs)
    except Exception as e:
        handle(e)


def _when(ts) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Jobs known to the cluster, oldest first."""
    rows = _query(cluster, lambda jobs: jobs.list())
    if as_json:
        print_json(rows)
        return
    typer.echo(f"{'JOB ID':<44} {'STATE':<10} {'QUEUE':<12} {'SUBMITTED':<20} NAME")
    for st in rows:
        state = st["state"]
        if state == "queued" and st.get("position"):
            state = f"queued #{st['position']}"  # its place: 1 starts next
        typer.echo(f"{st['job_id']:<44} {state:<10} {st.get('queue') or 'default':<12} "
                   f"{_when(st.get('submitted_at')):<20} {st.get('name', '')}")


@app.command("status")
def status(job_id: str = JobIdArg, as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """One job's state and per-task counts."""
    st = _query(cluster, lambda jobs: jobs.status(job_id))
    if as_json:
        print_json(st)
        return
    typer.echo(f"job {st['job_id']} ({st.get('name')}): {st['state']}")
    if st["state"] == "queued" and st.get("position"):
        typer.echo(f"  waiting in queue {st.get('group')!r}: #{st['position']} in the cluster, "
                   f"#{st['group_position']} in its queue (effective priority "
                   f"{st.get('effective_priority')})")
    typer.echo(f"  started {_when(st.get('started_at'))}, finished {_when(st.get('finished_at'))}")
    if st.get("output"):
        typer.echo(f"  output {st['output']}")
    restarts = st.get("jobmaster_restarts") or 0
    if restarts:  # a JobMaster died and a new one resumed from its checkpoint
        typer.echo(f"  resumed {restarts} time(s) after its JobMaster died: per task, instances "
                   f"recovered from the checkpoint vs run again")
    for name, t in st.get("tasks", {}).items():
        resumed = (f", {t.get('recovered', 0)} recovered, {t.get('rerun', 0)} re-run"
                   if restarts else "")
        typer.echo(f"  {name}: {t['succeeded']}/{t['instances']} done{resumed}, {t['running']} "
                   f"running, {t['failed']} failed, {t['attempts']} attempts, {t['retries']} "
                   f"retries, backups {t['backups_won']}/{t['backups_launched']} won")
    for e in st.get("blacklisted_nodes") or ():
        if isinstance(e, dict):  # records of before issue 16 part 6 held bare node ids
            typer.echo(f"  blacklisted {e['node'][:12]}: {blacklist_text(e)}")
    rec = st.get("recovery") or {}
    if rec and not rec.get("restartable", True):
        typer.echo(f"  not recoverable: its JobMaster would not be restarted if it died "
                   f"({rec.get('why_not')})")
    elif rec and not rec.get("after_master_restart", True):
        typer.echo(f"  not recoverable after a FuxiMaster restart: {rec.get('why_not')}")
    ck = st.get("checkpoint") or {}
    if ck.get("resume_report"):
        typer.echo("  checkpoint records refused (those instances ran again):")
        for line in ck["resume_report"]:
            typer.echo(f"    {line}")
    if st.get("report"):
        typer.echo(st["report"])


@app.command("logs")
def logs(
    job_id: str,
    task: Optional[str] = typer.Option(None, "--task", help="Only this task."),
    instance: Optional[int] = typer.Option(None, "--instance", help="Only this instance (0-based)."),
    attempt: Optional[int] = typer.Option(None, "--attempt", help="Only this attempt (0 first)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream live until the job ends."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line, with cursors."),
    cursor: str = typer.Option("", "--cursor", help="Go on from a cursor --json printed."),
    cluster: str = ClusterOpt,
) -> None:
    """Lines the job's tasks wrote to ctx.log, tracebacks of failed attempts, and what they
    printed (stdout, stderr, logging). -f streams it live; --json, --attempt, --cursor read
    the captured stream (every stream, ctx.log too)."""
    from cli import logs as out

    cursors = out.check_inputs(attempt, cursor)
    stream_mode = follow or as_json or attempt is not None or bool(cursor)
    try:
        with jobs_client(cluster) as jobs:
            out.check_selection(jobs.status(job_id), task, instance)

            def read(tok: str) -> dict:
                return jobs.output(job_id, task, instance, attempt, tok)

            if not stream_mode:  # today's lines, then what the attempts printed
                for r in jobs.logs(job_id, task, instance):
                    typer.echo(f"{r['task']}[{r['instance']}] a{r['attempt']}: {r['line']}")
                out.read_all(read, cursors, False, False, skip_streams=("ctx.log", "fuxi"))
                return
            if not follow:
                out.read_all(read, cursors, as_json, False)
                return
            code = out.follow_job(jobs, job_id, read, cursors, as_json)
    except typer.Exit:
        raise
    except Exception as e:
        handle(e)
    raise typer.Exit(code)


@app.command("timeline")
def timeline(
    job_id: str = JobIdArg,
    out: str = typer.Option("trace.json", "--out", "-o", help="Where to write the trace."),
    cluster: str = ClusterOpt,
) -> None:
    """The job's attempts as Chrome trace events (open in https://ui.perfetto.dev)."""
    import json
    import time

    from fuxi.core.story import chrome_trace

    trace = chrome_trace(_query(cluster, lambda jobs: jobs.attempts(job_id)), now=time.time())
    n = sum(1 for e in trace["traceEvents"] if e["ph"] == "X")
    try:
        with open(out, "w", encoding="utf-8") as f:
            json.dump(trace, f)
    except OSError as e:
        fail(f"--out {out!r}: cannot write it: {e.strerror or e}", EXIT_BAD_INPUT)
    typer.echo(f"{n} attempt(s) of job {job_id} written to {out} (open it in "
               f"https://ui.perfetto.dev or chrome://tracing)")


@app.command("cancel")
def cancel(job_id: str = JobIdArg, cluster: str = ClusterOpt) -> None:
    """Stop a running job and every one of its workers."""
    from fuxi.client import OfflineJobs

    try:
        with jobs_client(cluster) as jobs:
            if isinstance(jobs, OfflineJobs):
                st = jobs.status(job_id)
                typer.echo(f"job {job_id} is {st['state']}; no cluster is running")
                raise typer.Exit(EXIT_JOB_FAILED)
            res = jobs.cancel(job_id)
            st = jobs.wait(job_id, timeout_s=30.0)
    except typer.Exit:
        raise
    except Exception as e:
        handle(e)
    if not res.get("cancelling"):
        typer.echo(f"job {job_id} already ended: {st['state']}")
    else:
        typer.echo(f"job {job_id}: {st['state']}")


@app.command("wait")
def wait(job_id: str = JobIdArg,
         timeout_s: Optional[float] = typer.Option(
             None, "--timeout", help="Give up after this many seconds (exit 4; the job keeps "
                                     "running). Default: wait as long as it takes."),
         cancel_on_interrupt: bool = typer.Option(
             False, "--cancel-on-interrupt", help="Ctrl-C cancels the job (default: it keeps "
                                                  "running; exit 130 either way)."),
         as_json: bool = typer.Option(False, "--json", help="Print the final status as JSON."),
         cluster: str = ClusterOpt) -> None:
    """Wait until a job ends. Exit 0 succeeded, 1 failed or cancelled, 4 still running at
    --timeout, 2 no such job, 3 no cluster, 130 Ctrl-C. Says `waiting for job <id>` on
    stderr once it waits (stdout: only the verdict)."""
    from fuxi.client import TERMINAL, OfflineJobs
    from fuxi.errors import NoCluster

    check_timeout(timeout_s)
    try:
        with jobs_client(cluster) as jobs:
            if isinstance(jobs, OfflineJobs):  # a record on disk that already ended will do
                st = jobs.status(job_id)
                if st["state"] not in TERMINAL:
                    raise NoCluster(f"job {job_id} was {st['state']} when cluster {cluster!r} "
                                    f"stopped, and no cluster {cluster!r} is running; start "
                                    f"one with `fuxi up`")
            else:
                try:
                    # On stderr, so a script's stdout is only the verdict; once it is printed a
                    # Ctrl-C is handled as one while waiting (exit 130).
                    typer.echo(f"waiting for job {job_id}", err=True)
                    st = jobs.wait(job_id, timeout_s=timeout_s)
                except KeyboardInterrupt:
                    interrupted(jobs, job_id, cancel_on_interrupt)
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - our errors become exit codes
        handle(e)
    finish(st, timeout_s, as_json)

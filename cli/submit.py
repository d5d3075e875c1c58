"""``fuxi submit SPEC``: validate, submit, and (by default) follow the job to its end."""

from __future__ import annotations

from typing import List, Optional

import typer

from cli.common import EXIT_BAD_INPUT, EXIT_JOB_FAILED, ClusterOpt, fail, handle, print_json
from cli.progress import progress_for


def submit(
    spec: str = typer.Argument(..., help="Job spec file (.yaml, .yml or .json)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key=value (params.x=..., tasks.t.instances=8; a bare key means params.key)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job until it ends (default) or return its id at once."),
    as_json: bool = typer.Option(False, "--json", help="Print the final status (or the job id with --no-wait) as JSON."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Clear a non-empty output location first."),
    working_dir: Optional[str] = typer.Option(None, "--working-dir", help="Ship this directory to every worker (their working directory and import path); default: none on one machine, the submit directory on a cluster spanning machines."),
    cluster: str = ClusterOpt,
) -> None:
    """Submit a batch job. Exit code 0 succeeded, 1 failed or cancelled, 2 bad input."""
    from fuxi.client import FuxiClient, load
    from fuxi.runtime import connect, ensure_pangu, find_cluster

    uses_pangu = "pangu://" in " ".join(set_ or ())
    try:
        with open(spec, "rb") as f:
            uses_pangu = uses_pangu or b"pangu://" in f.read()
    except OSError:
        pass  # load() reports the unreadable spec
    plan = None
    try:
        # Checked first: no spec is read for a command that cannot run.
        if not wait and find_cluster(cluster) is None:
            fail("--no-wait needs a running cluster (the embedded default stops when this command "
                 "ends); start one with `fuxi up`", EXIT_BAD_INPUT)
        if not uses_pangu:
            plan = load(spec, set_ or (), overwrite=overwrite, working_dir=working_dir)
    except typer.Exit:
        raise
    except Exception as e:
        handle(e)
    try:
        with connect(cluster) as conn:
            client = FuxiClient(conn.master, cluster)
            if plan is None:  # pangu:// inputs are listed, and outputs prepared, in Pangu
                ensure_pangu(conn)
                plan = load(spec, set_ or (), overwrite=overwrite, working_dir=working_dir)
            job_id = client.submit(plan)
            if not wait:
                print_json({"job_id": job_id}) if as_json else typer.echo(job_id)
                return
            typer.echo(f"submitted {job_id}" + (" (embedded cluster)" if conn.embedded else ""), err=True)
            try:
                with progress_for(job_id, enabled=not as_json) as prog:
                    st = client.wait(job_id, on_update=prog.update)
            except KeyboardInterrupt:
                if conn.embedded:
                    client.cancel(job_id)
                    typer.echo(f"cancelled {job_id}", err=True)
                else:
                    typer.echo(f"detached; {job_id} keeps running (`fuxi job cancel {job_id}`)", err=True)
                raise typer.Exit(EXIT_JOB_FAILED)
    except typer.Exit:
        raise
    except Exception as e:
        handle(e)
    if as_json:
        print_json(st)
    else:
        _summary(st)
    if st["state"] != "succeeded":
        raise typer.Exit(EXIT_JOB_FAILED)


def _summary(st: dict) -> None:
    took = ""
    if st.get("started_at") and st.get("finished_at"):
        took = f" in {st['finished_at'] - st['started_at']:.2f}s"
    typer.echo(f"job {st['job_id']} {st['state']}{took}")
    if st["state"] == "succeeded" and st.get("output"):
        typer.echo(f"output: {st['output']}")
    if st.get("report"):
        typer.echo(st["report"], err=True)

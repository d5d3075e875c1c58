"""``fuxi submit SPEC``: validate, submit, and (by default) follow the job to its end."""

from __future__ import annotations

from typing import List, Optional

import typer

from cli.common import EXIT_JOB_FAILED, EXIT_UNAVAILABLE, ClusterOpt, fail, handle, print_json
from cli.progress import progress_for
from cli.waiting import interrupted, summary


def submit(
    spec: str = typer.Argument(..., help="Job spec file (.yaml, .yml or .json)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key=value (params.x=..., tasks.t.instances=8; a bare key means params.key)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job until it ends (default) or return its id at once."),
    as_json: bool = typer.Option(False, "--json", help="Print the final status (or the job id with --no-wait) as JSON."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Clear a non-empty output location first."),
    request_id: Optional[str] = typer.Option(None, "--request-id", help="Make the submit idempotent: the same id with the same spec gives the same job (a safe retry); with another spec it is refused."),
    cancel_on_interrupt: bool = typer.Option(False, "--cancel-on-interrupt", help="Ctrl-C cancels the job (default: it keeps running on a `fuxi up` cluster; the embedded default always stops)."),
    working_dir: Optional[str] = typer.Option(None, "--working-dir", help="Ship this directory to every worker (their working directory and import path); default: none on one machine, the submit directory on a cluster spanning machines."),
    cluster: str = ClusterOpt,
) -> None:
    """Submit a batch job. Exit code 0 succeeded, 1 failed or cancelled, 2 bad input, 3 no
    cluster / unreachable / refused, 130 Ctrl-C."""
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
        if request_id is not None:
            from fuxi.core.submits import check_request_id

            check_request_id(request_id)
        if not wait and find_cluster(cluster) is None:
            fail("--no-wait needs a running cluster (the embedded default stops when this command "
                 "ends); start one with `fuxi up`", EXIT_UNAVAILABLE)
        if not uses_pangu:
            plan = load(spec, set_ or (), overwrite=overwrite, working_dir=working_dir)
    except typer.Exit:
        raise
    except Exception as e:
        handle(e)
    try:
        with connect(cluster, progress=lambda line: typer.echo(line, err=True)) as conn:
            client = FuxiClient(conn.master, cluster)
            if plan is None:  # pangu:// inputs are listed, and outputs prepared, in Pangu
                ensure_pangu(conn)
                plan = load(spec, set_ or (), overwrite=overwrite, working_dir=working_dir)
            job_id = client.submit(plan, request_id=request_id)
            if not wait:
                print_json({"job_id": job_id}) if as_json else typer.echo(job_id)
                return
            typer.echo(f"submitted {job_id}" + (" (embedded cluster)" if conn.embedded else ""), err=True)
            try:
                with progress_for(job_id, enabled=not as_json) as prog:
                    st = client.wait(job_id, on_update=prog.update)
            except KeyboardInterrupt:  # the embedded default ends with this command anyway
                interrupted(client, job_id, cancel_on_interrupt or conn.embedded)
    except typer.Exit:
        raise
    except Exception as e:
        handle(e)
    if as_json:
        print_json(st)
    else:
        summary(st)
    if st["state"] != "succeeded":
        raise typer.Exit(EXIT_JOB_FAILED)

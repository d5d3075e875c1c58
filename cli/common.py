"""Shared CLI plumbing: exit codes, error printing, JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer

from fuxi.errors import BadInput, ClusterError, FuxiError, JobNotFound

EXIT_OK = 0
EXIT_JOB_FAILED = 1  # the job failed or was cancelled
EXIT_BAD_INPUT = 2  # the spec, a flag or an id was wrong

ClusterOpt = typer.Option("default", "--cluster", "-c", help="Cluster name (records live in $FUXI_HOME/<name>).")


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"fuxi: {message}", err=True)
    raise typer.Exit(code)


def handle(e: Exception) -> NoReturn:
    """Turn our errors into a message and an exit code; let bugs show their traceback."""
    from zhongkui.errors import BadInput as ZBadInput
    from zhongkui.errors import ZhongkuiError

    if isinstance(e, ZBadInput):
        fail(str(e), EXIT_BAD_INPUT)
    if isinstance(e, ZhongkuiError):
        fail(f"{type(e).__name__}: {e}", EXIT_JOB_FAILED)
    if isinstance(e, (BadInput, JobNotFound)):
        fail(str(e), EXIT_BAD_INPUT)
    if isinstance(e, ClusterError):
        fail(str(e), EXIT_JOB_FAILED)
    if isinstance(e, FuxiError):
        fail(str(e), EXIT_JOB_FAILED)
    raise e


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def master_call(cluster: str, method: str, *args, needs: str = "this command",
                send_token: bool = False):
    """Call FuxiMaster's ``method`` on the running cluster (never the embedded default);
    our errors become exit codes. ``send_token``: pass the signed-in user's token as ``cred``."""
    import ray

    from fuxi.client import CALL_TIMEOUT_S, _translate
    from fuxi.errors import NoCluster
    from fuxi.runtime import connect, find_cluster

    try:
        if find_cluster(cluster) is None:
            raise NoCluster(f"no running cluster {cluster!r}: {needs} needs a persistent "
                            f"cluster; start one with `fuxi up`")
        with connect(cluster, embedded_ok=False) as conn:
            kw = {}
            if send_token:
                from zhongkui import creds

                kw["cred"] = creds.token(cluster) or None
            try:
                return ray.get(getattr(conn.master, method).remote(*args, **kw),
                               timeout=CALL_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - translated below
                raise _translate(e, method) from None
    except Exception as e:  # noqa: BLE001 - our errors become exit codes
        handle(e)

"""Shared CLI plumbing: exit codes, error printing, JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer

from base.errors import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_TIMEOUT,
                         EXIT_UNAVAILABLE, ClusterError, PlatformError, exit_code)
from base.errors import EXIT_FAILED as EXIT_JOB_FAILED
from fuxi.errors import FuxiError

__all__ = ["EXIT_OK", "EXIT_JOB_FAILED", "EXIT_BAD_INPUT", "EXIT_UNAVAILABLE", "EXIT_TIMEOUT",
           "EXIT_INTERRUPTED", "blacklist_text", "fail", "handle", "print_json", "pick_cluster"]


def pick_cluster(ctx: typer.Context, _param, value: str | None) -> str:
    """Which cluster a command talks to: its own ``-c``, else the global ``fuxi --cluster``,
    else ``$FUXI_CLUSTER``, else the recorded cluster whose Ray address is ``$RAY_ADDRESS``,
    else "default" (``base.cluster.cluster_for``)."""
    from base.cluster import cluster_for

    root = ctx.find_root().params.get("cluster") if ctx is not None else None
    try:
        return cluster_for(value or root)
    except PlatformError as e:
        raise typer.BadParameter(str(e)) from None


ClusterOpt = typer.Option(None, "--cluster", "-c", callback=pick_cluster, show_default=False,
                          help="The cluster's name (its record: $FUXI_HOME/<name>); default "
                               "fuxi --cluster, $FUXI_CLUSTER, $RAY_ADDRESS's, or 'default'.")


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"fuxi: {message}", err=True)
    raise typer.Exit(code)


def handle(e: Exception) -> NoReturn:
    """Turn our errors into a message and an exit code (one table for every command:
    ``base.errors.exit_code``); let bugs show their traceback."""
    if not isinstance(e, PlatformError):
        raise e
    # Fuxi's own messages are written for the command line; the others name their class.
    fail(str(e) if isinstance(e, (FuxiError, ClusterError)) else f"{type(e).__name__}: {e}", exit_code(e))


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def blacklist_text(entry: dict | None) -> str:
    """One blacklist entry (``fuxi.core.blacklist.Entry.view``) for a person: level, reason,
    how long it has left; "-" for none."""
    if not entry:
        return "-"
    left = entry.get("expires_in_s")
    if left is None:
        until = "for the rest of the job"
    else:
        m, s = divmod(int(round(left)), 60)
        until = f"expires in {m}m{s:02d}s" if m else f"expires in {s}s"
    return f"{entry.get('level')} level: {entry.get('reason')}, {until}"


def master_call(cluster: str, method: str, *args, needs: str = "this command",
                send_token: bool = False, actor: str = "master"):
    """Call FuxiMaster's ``method`` on the running cluster (never the embedded default);
    our errors become exit codes. ``send_token``: pass the signed-in user's token as ``cred``.
    ``actor="authority"``: call Zhongkui's authority actor instead."""
    from base import actors
    from fuxi.client import MASTER_REPLY_TIMEOUT_S, explain
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
                return actors.call(getattr(getattr(conn, actor), method), *args,
                                   timeout_s=MASTER_REPLY_TIMEOUT_S, **kw)
            except PlatformError as e:
                raise explain(e, method) from None
    except Exception as e:  # noqa: BLE001 - our errors become exit codes
        handle(e)

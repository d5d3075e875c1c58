"""``fuxi queue list|set|rm|limit``: the queues (quota groups) where jobs wait for room."""

from __future__ import annotations

from typing import Optional

import typer

from cli.common import ClusterOpt, handle, print_json

app = typer.Typer(no_args_is_help=True)


def _client(cluster: str):
    from fuxi.client import FuxiClient
    from fuxi.runtime import connect

    return connect(cluster, embedded_ok=False), lambda conn: FuxiClient(conn.master, cluster)


def _run(cluster: str, call):
    try:
        ctx, make = _client(cluster)
        with ctx as conn:
            return call(make(conn))
    except Exception as e:
        handle(e)


def _show(view: dict, as_json: bool) -> None:
    if as_json:
        print_json(view)
        return
    typer.echo(f"cluster: at most {view['jobs_running_max']} jobs running at once")
    typer.echo(f"{'QUEUE':<16} {'RUNNING':>8} {'WAITING':>8}  LIMIT")
    for name, q in view["queues"].items():
        cap = q.get("jobs_running_max")
        typer.echo(f"{name:<16} {q['running']:>8} {q['waiting']:>8}  "
                   f"{'-' if cap is None else cap}")


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """The queues, their limits, and how many jobs run and wait in each."""
    _show(_run(cluster, lambda c: c.queues()), as_json)


@app.command("set")
def set_(name: str,
         jobs_running_max: Optional[int] = typer.Option(
             None, "--jobs-running-max", help="At most this many of the queue's jobs run at once "
                                              "(omit: no limit of its own)."),
         as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Create a queue or change its limit (an administrator's command)."""
    def call(c):
        queues = {k: {"jobs_running_max": v.get("jobs_running_max")}
                  for k, v in c.queues()["queues"].items()}
        queues[name] = {"jobs_running_max": jobs_running_max}
        return c.configure_queues(queues)

    _show(_run(cluster, call), as_json)


@app.command("rm")
def rm(name: str, as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Remove a queue with no running or waiting jobs (``default`` always stays)."""
    def call(c):
        queues = {k: {"jobs_running_max": v.get("jobs_running_max")}
                  for k, v in c.queues()["queues"].items()}
        if name not in queues or name == "default":
            from fuxi.errors import BadInput

            raise BadInput(f"queue {name!r}: " + ("the default queue cannot be removed"
                                                  if name == "default" else
                                                  f"no such queue; known: {', '.join(queues)}"))
        del queues[name]
        return c.configure_queues(queues)

    _show(_run(cluster, call), as_json)


@app.command("limit")
def limit(jobs_running_max: int = typer.Argument(..., help="Jobs running at once, all queues."),
          as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Set how many jobs run at once in the whole cluster; the rest wait in their queues."""
    _show(_run(cluster, lambda c: c.configure_queues(None, jobs_running_max)), as_json)

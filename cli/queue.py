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


QUOTA_FLAG_ITEMS_MAX = 16  # resources one --min or --max may name (the master checks too)


def _res(doc: dict | None) -> str:
    if doc is None:
        return "-"
    return ",".join(f"{k}={v:g}" for k, v in sorted(doc.items())) or "-"


def _show(view: dict, as_json: bool) -> None:
    if as_json:
        print_json(view)
        return
    typer.echo(f"cluster: at most {view['jobs_running_max']} jobs running at once")
    typer.echo(f"{'QUEUE':<16} {'RUNNING':>8} {'WAITING':>8} {'LIMIT':>6}  {'MIN':<14} "
               f"{'MAX':<14} {'WEIGHT':>6}  USED")
    for name, q in view["queues"].items():
        cap = q.get("jobs_running_max")
        typer.echo(f"{name:<16} {q['running']:>8} {q['waiting']:>8} "
                   f"{'-' if cap is None else cap:>6}  {_res(q.get('min') or {}):<14} "
                   f"{_res(q.get('max')):<14} {q.get('weight', 1.0):>6g}  "
                   f"{_res(q.get('used') or {})}")


def parse_amounts(flag: str, items: list[str]) -> dict[str, float]:
    """``["cpu=2,memory_mb=1024", "gpu=1"]`` as ``{"cpu": 2.0, "memory_mb": 1024.0, "gpu": 1.0}``;
    the names and amounts are checked by FuxiMaster (``fuxi.shells.quotas``)."""
    from fuxi.errors import BadInput

    out: dict[str, float] = {}
    parts = [p.strip() for item in items for p in item.split(",") if p.strip()]
    if len(parts) > QUOTA_FLAG_ITEMS_MAX:
        raise BadInput(f"{flag}: got {len(parts)} resources, expected at most "
                       f"{QUOTA_FLAG_ITEMS_MAX}")
    for p in parts:
        k, eq, v = p.partition("=")
        try:
            amount = float(v)
        except ValueError:
            amount = None
        if not eq or not k.strip() or amount is None:
            raise BadInput(f"{flag}: got {p[:80]!r}, expected RESOURCE=AMOUNT (cpu=2, "
                           f"memory_mb=1024, gpu=1, custom:NAME=1)")
        out[k.strip()] = amount
    return out


def _conf(q: dict) -> dict:
    """A queue's configuration as ``configure_queues`` takes it (from ``queues()``'s view)."""
    return {k: q.get(k) for k in ("jobs_running_max", "min", "max", "weight") if k in q}


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """The queues, their limits, and how many jobs run and wait in each."""
    _show(_run(cluster, lambda c: c.queues()), as_json)


@app.command("set")
def set_(name: str,
         jobs_running_max: Optional[int] = typer.Option(
             None, "--jobs-running-max", help="At most this many of the queue's jobs run at once "
                                              "(omit: no limit of its own)."),
         min_: list[str] = typer.Option(
             [], "--min", help="Guaranteed resources, e.g. cpu=2,memory_mb=4096 (repeatable; "
                               "omit: keep the queue's)."),
         max_: list[str] = typer.Option(
             [], "--max", help="Cap on the resources the queue's jobs hold, e.g. cpu=4 "
                               "(omit: keep the queue's)."),
         weight: Optional[float] = typer.Option(
             None, "--weight", help="Share of idle quota it borrows, relative to other queues "
                                    "(omit: keep the queue's; default 1)."),
         no_quota: bool = typer.Option(False, "--no-quota",
                                       help="Drop the queue's min, max and weight first."),
         as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Create a queue or change its limit and quota (an administrator's command)."""
    def call(c):
        queues = {k: _conf(v) for k, v in c.queues()["queues"].items()}
        conf = {} if no_quota else {k: v for k, v in queues.get(name, {}).items()
                                    if k != "jobs_running_max"}
        conf["jobs_running_max"] = jobs_running_max
        if min_:
            conf["min"] = parse_amounts("--min", min_)
        if max_:
            conf["max"] = parse_amounts("--max", max_)
        if weight is not None:
            conf["weight"] = weight
        queues[name] = conf
        return c.configure_queues(queues)

    _show(_run(cluster, call), as_json)


@app.command("rm")
def rm(name: str, as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Remove a queue with no running or waiting jobs (``default`` always stays)."""
    def call(c):
        queues = {k: _conf(v) for k, v in c.queues()["queues"].items()}
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

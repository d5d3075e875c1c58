"""``fuxi alerts``: the cluster's active alerts (and with ``--all`` the recently resolved),
as FuxiMaster evaluates them (``fuxi.shells.alerting``)."""

from __future__ import annotations

import datetime as dt

import typer

from cli.common import ClusterOpt, master_call, print_json


def _when(ts) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "-"


def alerts(as_json: bool = typer.Option(False, "--json"),
           show_all: bool = typer.Option(False, "--all", help="Also the recently resolved."),
           cluster: str = ClusterOpt) -> None:
    """Active alerts (firing first, then pending), from the rules FuxiMaster evaluates."""
    info = master_call(cluster, "cluster_info", needs="`fuxi alerts`")
    view = info.get("alerts") or {"active": [], "resolved": []}
    if as_json:
        print_json(view if show_all else {k: v for k, v in view.items() if k != "resolved"})
        return
    active = view.get("active") or []
    typer.echo(f"{len(active)} active alert(s) from {view.get('source', '?')} "
               f"({len(view.get('rules') or [])} rules, every {view.get('eval_s', '?')} s)")
    if view.get("metrics_error"):
        typer.echo(f"  note: {view['metrics_error']}")
    rows = [("active", a) for a in active] + \
        ([("resolved", a) for a in view.get("resolved") or []] if show_all else [])
    for kind, a in rows:
        labels = ",".join(f"{k}={v}" for k, v in (a.get("labels") or {}).items())
        when = _when(a.get("resolved_at") if kind == "resolved" else
                     a.get("fired_at") or a.get("since"))
        state = "resolved" if kind == "resolved" else a.get("state", "")
        typer.echo(f"  {state:<8} {a.get('severity', ''):<8} {a.get('rule', ''):<24} "
                   f"{when:<8} {labels:<30} {a.get('summary', '')}")

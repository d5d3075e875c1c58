"""``fuxi node list``: the cluster's nodes, what is free on each, and whether it is
blacklisted for every job (cluster level, ``fuxi.core.blacklist``)."""

from __future__ import annotations

import typer

from cli.common import ClusterOpt, blacklist_text, master_call, print_json

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Alive nodes: id, address, CPU free/total, blacklist (level, reason, expiry)."""
    info = master_call(cluster, "cluster_info", needs="`fuxi node list`")
    rows = info.get("nodes", [])
    if as_json:
        print_json(rows)
        return
    typer.echo(f"{'NODE ID':<14} {'ADDRESS':<16} {'CPU FREE':<12} BLACKLIST")
    for n in rows:
        free, res = n.get("free", {}), n.get("resources", {})
        cpu = f"{free.get('CPU', 0):g}/{res.get('CPU', 0):g}"
        typer.echo(f"{n['node_id'][:12]:<14} {str(n.get('address')):<16} {cpu:<12} "
                   f"{blacklist_text(n.get('blacklisted'))}")

"""``fuxi node list``: the cluster's nodes, what is free on each, its FuxiAgent (state, age of
its last heartbeat, memory available and disk free), and whether it is blacklisted for every
job (cluster level, ``fuxi.core.blacklist``)."""

from __future__ import annotations

import typer

from cli.common import ClusterOpt, blacklist_text, master_call, print_json

app = typer.Typer(no_args_is_help=True)


def agent_text(agent: dict | None) -> str:
    """A node's agent (``fuxi.core.agentview.AgentView.view``) for a person: state, last
    heartbeat's age, memory available and disk free; "-" for no agent."""
    if not agent:
        return "-"
    age = agent.get("heartbeat_age_s")
    out = agent.get("state", "?") + (f" {age:.1f}s" if age is not None else " (never heard)")
    mem, disk = agent.get("mem_available_bytes"), agent.get("disk_free_bytes")
    if mem is not None and disk is not None:
        out += f" mem {mem / 1024**3:.1f}G disk {disk / 1024**3:.0f}G"
    return out


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Alive nodes: id, address, CPU free/total, agent (state, last heartbeat, health),
    blacklist (level, reason, expiry)."""
    info = master_call(cluster, "cluster_info", needs="`fuxi node list`")
    rows = info.get("nodes", [])
    if as_json:
        print_json(rows)
        return
    typer.echo(f"{'NODE ID':<14} {'ADDRESS':<16} {'CPU FREE':<12} {'AGENT':<34} BLACKLIST")
    for n in rows:
        free, res = n.get("free", {}), n.get("resources", {})
        cpu = f"{free.get('CPU', 0):g}/{res.get('CPU', 0):g}"
        typer.echo(f"{n['node_id'][:12]:<14} {str(n.get('address')):<16} {cpu:<12} "
                   f"{agent_text(n.get('agent')):<34} {blacklist_text(n.get('blacklisted'))}")

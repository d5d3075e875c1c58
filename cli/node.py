"""``fuxi node list|drain|undrain``: the cluster's nodes, what is free on each, its FuxiAgent
(state, age of its last heartbeat, memory available, disk free, load, and ``HOT`` when its
load stands well above its peers' (``fuxi.shells.hotnodes``)), whether it is blacklisted
for every job (cluster level, ``fuxi.core.blacklist``), and its drain state with what it still
holds (``fuxi.core.drain``: active / draining / drained (removable) / dead)."""

from __future__ import annotations

import time

import typer

from cli.common import ClusterOpt, blacklist_text, handle, master_call, print_json

app = typer.Typer(no_args_is_help=True)

NODE_DRAIN_POLL_S = 1.0  # `fuxi node drain --wait` asks this often
NODE_CALL_TIMEOUT_S = 30.0  # one call to the node keeper


def agent_text(agent: dict | None) -> str:
    """A node's agent (``fuxi.core.agentview.AgentView.view``) for a person: state, last
    heartbeat's age, memory available, disk free, load and ``HOT``; "-" for no agent."""
    if not agent:
        return "-"
    age = agent.get("heartbeat_age_s")
    out = agent.get("state", "?") + (f" {age:.1f}s" if age is not None else " (never heard)")
    mem, disk = agent.get("mem_available_bytes"), agent.get("disk_free_bytes")
    if mem is not None and disk is not None:
        out += f" mem {mem / 1024**3:.1f}G disk {disk / 1024**3:.0f}G"
    if agent.get("load") is not None:
        out += f" load {agent['load']:.1f}"
    if agent.get("hot"):
        out += " HOT"  # well above its peers' load: new work goes elsewhere while it fits
    return out


def state_text(view: dict | None) -> str:
    """A node's drain state and what it holds: ``draining (1 replica, 2 slots, 40 chunks)``."""
    if not view:
        return "active"
    h = view.get("holds", {})
    held = ", ".join(f"{h[k]} {k}" for k in ("replicas", "slots", "chunks") if h.get(k))
    state = view.get("state", "?") + (" (removable)" if view.get("removable") else "")
    return state + (f" [{held}]" if held else "")


def keeper_call(cluster: str, method: str, *args, quiet: bool = False, **kw):
    """Call the cluster's node keeper (``fuxi.shells.nodekeeper``); our errors become exit
    codes (``quiet``: None, nothing said)."""
    from base import actors
    from base.errors import PlatformError
    from fuxi.errors import ClusterError, NoCluster
    from fuxi.runtime import connect, find_cluster
    from fuxi.shells.nodekeeper import find_keeper

    try:
        if find_cluster(cluster) is None:
            raise NoCluster(f"no running cluster {cluster!r}: `fuxi node` needs a persistent "
                            f"cluster; start one with `fuxi up`")
        with connect(cluster, embedded_ok=False) as conn:
            import ray

            h = find_keeper(ray.get_runtime_context().namespace)
            if h is None:
                raise ClusterError(f"cluster {conn.cluster!r} has no node keeper: it starts with "
                                   f"FuxiMaster's agents (`fuxi up`)")
            if method in ("drain", "undrain"):
                from zhongkui import creds

                kw["cred"] = creds.token(cluster) or None
            return actors.call(getattr(h, method), *args, timeout_s=NODE_CALL_TIMEOUT_S, **kw)
    except PlatformError as e:
        if quiet:
            return None
        handle(e)


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Alive nodes: id, address, CPU free/total, drain state (what it still holds), agent
    (state, last heartbeat, health), blacklist (level, reason, expiry); then dead nodes still
    remembered."""
    info = master_call(cluster, "cluster_info", needs="`fuxi node list`")
    rows = info.get("nodes", [])
    states = (keeper_call(cluster, "view", quiet=True) or {}).get("nodes", {})
    for n in rows:
        n["drain"] = states.get(n["node_id"])
    dead = [v for k, v in states.items() if v["state"] == "dead"]
    if as_json:
        print_json({"nodes": rows, "dead": dead})
        return
    typer.echo(f"{'NODE ID':<14} {'ADDRESS':<16} {'CPU FREE':<10} {'STATE':<34} {'AGENT':<34} "
               f"BLACKLIST")
    for n in rows:
        free, res = n.get("free", {}), n.get("resources", {})
        cpu = f"{free.get('CPU', 0):g}/{res.get('CPU', 0):g}"
        typer.echo(f"{n['node_id'][:12]:<14} {str(n.get('address')):<16} {cpu:<10} "
                   f"{state_text(n['drain']):<34} {agent_text(n.get('agent')):<34} "
                   f"{blacklist_text(n.get('blacklisted'))}")
    for v in dead:
        typer.echo(f"{v['node_id'][:12]:<14} {'-':<16} {'-':<10} {state_text(v):<34}")


@app.command("drain")
def drain(node: str = typer.Argument(..., help="Node id (or a unique prefix, as `fuxi node "
                                               "list` shows it)."),
          wait: bool = typer.Option(False, "--wait", help="Wait until the node can be removed."),
          timeout: float = typer.Option(600.0, "--timeout", help="Seconds batch instances may "
                                        "run on there before they are moved (and how long "
                                        "--wait waits)."),
          cluster: str = ClusterOpt) -> None:
    """Stop new work on NODE, move its service replicas (surge first), let its batch
    instances finish (moved after --timeout), copy its Pangu data away; with --wait, report
    when it can be removed with no loss (exit 1 if it could not within --timeout)."""
    from fuxi.core.drain import check_timeout
    from fuxi.errors import BadInput

    try:
        check_timeout(timeout)
    except BadInput as e:
        handle(e)
    out = keeper_call(cluster, "drain", node, timeout)
    node_id = out["node_id"]
    typer.echo(f"node {node_id[:12]}: {state_text(out)}")
    if not wait:
        return
    deadline = time.monotonic() + timeout + 60.0  # the moves themselves take a moment
    last = out
    while last["state"] != "drained":
        if time.monotonic() > deadline:
            typer.echo(f"fuxi: node {node_id[:12]} is not drained after {timeout:g}s: "
                       f"{state_text(last)}", err=True)
            raise typer.Exit(1)
        time.sleep(NODE_DRAIN_POLL_S)
        last = keeper_call(cluster, "view")["nodes"].get(node_id, last)
        if last["state"] == "dead":
            typer.echo(f"fuxi: node {node_id[:12]} died while draining: what it held is "
                       f"being repaired elsewhere", err=True)
            raise typer.Exit(1)
    typer.echo(f"node {node_id[:12]} is drained: no replica, slot or chunk is left there; "
               f"it can be removed with no loss")


@app.command("undrain")
def undrain(node: str = typer.Argument(..., help="Node id (or a unique prefix)."),
            cluster: str = ClusterOpt) -> None:
    """Put NODE back to work: it takes new work and Pangu data again."""
    out = keeper_call(cluster, "undrain", node)
    typer.echo(f"node {out['node_id'][:12]}: {state_text(out)}")

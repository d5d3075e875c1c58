"""``fuxi up``, ``fuxi down``, ``fuxi status``."""

from __future__ import annotations

from typing import Optional

import typer

from base import actors
from cli.common import ClusterOpt, blacklist_text, handle, print_json


def up(
    address: Optional[str] = typer.Option(None, "--address", help="Deploy onto this existing Ray cluster (host:port) instead of starting one."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs the local head offers (default: all)."),
    auth_token_path: Optional[str] = typer.Option(None, "--auth-token-path", help="Ray auth token file of the cluster given by --address."),
    nuwa_replicas: Optional[int] = typer.Option(None, "--nuwa-replicas", help="Nuwa replica group size: 1, 3 or 5 (0: no Nuwa; default 3)."),
    auth: Optional[bool] = typer.Option(None, "--auth/--no-auth", help="Zhongkui access control: every call needs a token (default: on with --address, off for a local head)."),
    web_port: Optional[int] = typer.Option(None, "--web-port", "--metrics-port", help="Port of the head's web server: the console at / and Prometheus's /metrics (default 9469, or FUXI_WEB_PORT; 0: any free port)."),
    web_host: Optional[str] = typer.Option(None, "--web-host", "--metrics-host", help="Address the web server binds (default 127.0.0.1; 0.0.0.0 to be reached from other machines)."),
    alert_rules: Optional[str] = typer.Option(None, "--alert-rules", help="A YAML file of alert rules replacing the default set (see docs/operations.md)."),
    config: Optional[str] = typer.Option(None, "--config", help="A cluster configuration file (YAML; docs/config.md). Precedence: flag > FUXI_* env > file > default."),
    cluster: Optional[str] = typer.Option(None, "--cluster", "-c", help="Cluster name (default: FUXI_CLUSTER, the config file's, or 'default')."),
) -> None:
    """Start a persistent local cluster (or deploy onto an existing Ray cluster)."""
    from cli.config import start_config
    from fuxi import runtime

    try:
        eff = start_config(config, {"cluster": cluster, "ray.address": address,
                                    "ray.num_cpus": num_cpus, "ray.auth_token_path": auth_token_path,
                                    "nuwa.replicas": nuwa_replicas, "auth": auth, "web.port": web_port,
                                    "web.host": web_host, "web.alert_rules": alert_rules})
        c = eff.config
        cluster = c.cluster
        rec = runtime.up(cluster, address=c.ray.address, num_cpus=c.ray.num_cpus,
                         auth_token_path=c.ray.auth_token_path, nuwa_replicas=c.nuwa.replicas,
                         auth=c.auth, web_port=c.web.port, web_host=c.web.host,
                         alert_rules=c.web.alert_rules, config=eff)
    except Exception as e:
        handle(e)
    typer.echo(f"cluster {cluster!r} is up at {rec.address} (data in {rec.data_dir})"
               + ("; access control is on: you are signed in as admin" if rec.auth else ""))
    if rec.web:
        typer.echo(f"web console: {rec.web} (metrics: {rec.metrics or 'off'})")
    if rec.http:
        typer.echo(f"HTTP front door: {rec.http}/v1/services/<name>/<method>")


def down(cluster: str = ClusterOpt) -> None:
    """Stop the cluster's jobs and platform actors, and the Ray head if `fuxi up` started it."""
    from fuxi import runtime

    try:
        res = runtime.down(cluster)
    except Exception as e:
        handle(e)
    typer.echo(f"cluster {cluster!r} is down ({res['stopped_jobs']} running job(s) stopped)")


def status(as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """The cluster: name, address, nodes and their free resources, running jobs, the nodes
    blacklisted for every job."""
    from fuxi import runtime

    try:
        rec = runtime.find_cluster(cluster)
        if rec is None:
            info = {"cluster": cluster, "address": None, "running": False, "nodes": [],
                    "jobs_running": [], "data_dir": runtime.cluster_dir(cluster)}
        else:
            with runtime.connect(cluster, embedded_ok=False) as conn:
                info = actors.call(conn.master.cluster_info,
                                   timeout_s=runtime.CLUSTER_CONNECT_TIMEOUT_S)
            info.update(address=rec.address, running=True, data_dir=rec.data_dir,
                        namespace=rec.namespace, fuxi_master="FuxiMaster",
                        nuwa=[f"{h}:{p}" for h, p in (rec.nuwa or [])],
                        metrics=getattr(rec, "metrics", None), web=getattr(rec, "web", None),
                        http=getattr(rec, "http", None))
    except Exception as e:
        handle(e)
    if as_json:
        print_json(info)
        return
    if not info["running"]:
        typer.echo(f"cluster {cluster!r}: not running (commands use the embedded default)")
        return
    typer.echo(f"cluster {cluster!r} at {info['address']}: {len(info['nodes'])} node(s), "
               f"{len(info['jobs_running'])} job(s) running")
    if info.get("web"):
        typer.echo(f"  web console: {info['web']}")
    if info.get("http"):
        typer.echo(f"  HTTP front door: {info['http']}/v1/services/<name>/<method>")
    if info.get("nuwa"):
        typer.echo(f"  nuwa: {', '.join(info['nuwa'])}")
    if info.get("metrics"):
        typer.echo(f"  metrics: {info['metrics']}")
    for line in info.get("nuwa_events", [])[-5:]:
        typer.echo(f"  nuwa event: {line}")
    for n in info["nodes"]:
        res = n["resources"]
        free = n.get("free", {})
        typer.echo(f"  {n['node_id'][:12]} {n.get('address')}: CPU {free.get('CPU', 0):g}/{res.get('CPU', 0):g} free")
    if info.get("blacklist"):
        typer.echo("  blacklisted for every job (cluster level):")
    for e in info.get("blacklist", []):
        typer.echo(f"    {e['node'][:12]}: {blacklist_text(e)}")

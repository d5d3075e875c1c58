"""``fuxi config show|set|reference``, and the configuration ``fuxi up --config`` starts with.

The model and its layering (flag > FUXI_* env > file > default) are fuxi.core.clusterconfig's;
reading the layers and keeping the result (the cluster record, Nuwa's /fuxi/config/cluster)
are fuxi.io.clusterconfig's. ``show`` reads Nuwa directly, so it answers while FuxiMaster is down.
"""

from __future__ import annotations

import typer

from cli.common import ClusterOpt, handle, print_json

app = typer.Typer(no_args_is_help=True)


def start_config(config_path: str | None, flags: dict):
    """The effective configuration of a `fuxi up`, checked before anything starts: every
    problem at once (exit 2), then every fixed port free (exit 2, naming the component)."""
    from fuxi import runtime
    from fuxi.io import clusterconfig as io

    eff = io.effective(config_path, flags)
    c = eff.config
    # `fuxi up`'s own waits (this process's): the configuration's timeouts.
    runtime.HEAD_START_TIMEOUT_S = c.timeouts.head_start_s
    runtime.ACTOR_READY_TIMEOUT_S = c.timeouts.actor_ready_s
    runtime.CLUSTER_CONNECT_TIMEOUT_S = c.timeouts.connect_s
    if c.ray.address is None and runtime.find_cluster(c.cluster) is None:
        # A local head: every fixed port is on this machine (a cluster already up is
        # runtime.up's error to report, not a taken port).
        io.check_ports_free(c, "127.0.0.1", host_of={"web.port": c.web.host})
    return eff


def _stored(cluster: str):
    """(Effective, where it was read, a note) of a running cluster, or None when none runs."""
    from base.errors import PlatformError
    from fuxi.core import clusterconfig as cc
    from fuxi.io import clusterconfig as io
    from fuxi.runtime import find_cluster
    from zhongkui import creds

    rec = find_cluster(cluster)
    if rec is None:
        return None
    note = ""
    try:
        doc, where = io.read_stored(rec, token=creds.token(cluster) or None)
    except (PlatformError, OSError) as e:
        doc, where = getattr(rec, "config", None), "cluster record"
        note = f"Nuwa did not answer ({type(e).__name__}); showing the record's copy"
    if doc is None:
        return cc.layer({}), "nothing stored (started without --config support)", note
    return cc.from_stored(doc), where, note


@app.command("show")
def show(as_json: bool = typer.Option(False, "--json"),
         config: str = typer.Option(None, "--config", help="With no cluster running: the file `fuxi up --config` would read."),
         cluster: str = ClusterOpt) -> None:
    """The effective configuration, each value with its source (default, file, env, flag,
    set) and whether `fuxi config set` can change it online."""
    from fuxi.io import clusterconfig as io

    try:
        got = _stored(cluster)
        if got is None:
            eff, where, note = io.effective(config, {}), "not running: what `fuxi up` would use", ""
        else:
            eff, where, note = got
    except Exception as e:  # noqa: BLE001 - our errors become exit codes
        handle(e)
    if as_json:
        print_json({"cluster": cluster, "read_from": where, "note": note or None,
                    "settings": eff.view()})
        return
    typer.echo(f"cluster {cluster!r} configuration ({where})" + (f"; {note}" if note else ""))
    for key, v in eff.view().items():
        value = "none" if v["value"] is None else v["value"]
        typer.echo(f"  {key} = {value}  [{v['source']}{', online' if v['online'] else ''}]")


@app.command("set")
def set_(key: str, value: str, cluster: str = ClusterOpt) -> None:
    """Change a setting of the running cluster that its components pick up without a restart
    (see `fuxi config show`: online); the others are refused with the reason."""
    from fuxi.core import clusterconfig as cc
    from fuxi.errors import NoCluster
    from fuxi.io import clusterconfig as io
    from fuxi.runtime import find_cluster
    from zhongkui import creds

    try:
        cc.check_online_set(key)
        rec = find_cluster(cluster)
        if rec is None or not rec.nuwa:
            raise NoCluster(f"config set needs a running cluster {cluster!r} with Nuwa (where "
                            f"the components read it); start one with `fuxi up`")
        token = creds.token(cluster) or None
        doc, _ = io.read_stored(rec, token=token)
        layers = dict(doc.get("layers", {})) if isinstance(doc, dict) else {}
        cc.set_dotted(layers.setdefault("set", {}), key, cc.parse_value(key, value))
        eff = cc.layer(layers)
        io.publish(rec, cc.stored_doc(eff), token=token)
    except Exception as e:  # noqa: BLE001 - our errors become exit codes
        handle(e)
    typer.echo(f"{key} = {eff.get(key)} (set; picked up by {cc.ONLINE[key]})")


@app.command("reference")
def reference() -> None:
    """Every key as a markdown table: type, default, environment variable, online or not."""
    from fuxi.core.clusterconfig import reference as table

    typer.echo(table(), nl=False)

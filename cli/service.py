"""``fuxi service register|list|status|scale|upgrade|remove``: online services on a running
cluster (`fuxi up`). Services are called with `fuxi call nuwa://<cluster>/<name> METHOD`."""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

from cli.common import ClusterOpt, handle, master_call, print_json

app = typer.Typer(no_args_is_help=True)
SetOpt = typer.Option(None, "--set", help="Override a field: key=value (dotted keys for nested).")


def _master_call(cluster: str, method: str, *args):
    return master_call(cluster, method, *args, needs="an online service", send_token=True)


WorkingDirOpt = typer.Option(None, "--working-dir", help="Ship this directory to every replica "
                             "(its working directory and import path) instead of running in "
                             "this directory, which other machines do not have.")


def _load(spec: str, overrides: list[str], working_dir: str | None = None,
          cluster: str | None = None) -> dict:
    from fuxi.io.specfile import load_service_spec

    for where in (os.getcwd(), working_dir and os.path.abspath(working_dir)):
        if where and where not in sys.path:
            sys.path.insert(0, where)  # service modules are found relative to the shell
    try:
        doc = load_service_spec(spec, overrides or ()).to_doc()
        if working_dir is not None or doc.get("runtime_env"):
            from cli.shipping import ship_service_code

            doc = ship_service_code(doc, working_dir, cluster)
    except Exception as e:  # noqa: BLE001
        handle(e)
    if doc.get("workdir") is None and not (doc.get("runtime_env") or {}).get("working_dir"):
        doc["workdir"] = os.getcwd()  # replicas run here, like jobs submitted from here
    return doc


def _show(st: dict) -> None:
    typer.echo(f"{st['name']}  version {st['version']}  {st['ready']}/{st['desired']} ready"
               f"{'  (removing)' if st['removing'] else ''}"
               f"{'  rollout: ' + st['rollout'] if st['rollout'] else ''}")
    typer.echo(f"requests {st['requests']}  errors {st['errors']}  "
               f"{st['requests_per_s']}/s  p99 {st['p99_ms_max']} ms")
    typer.echo(f"{'REPLICA':<28} {'VERSION':<10} {'STATE':<10} {'HEALTH':<16} {'NODE':<14} SERVED")
    for r in st["replicas"]:
        typer.echo(f"{r['replica']:<28} {r['version']:<10} {r['state']:<10} {r['health']:<16} "
                   f"{(r['node'] or '-')[:12]:<14} {r['served']}")
    for e in st["events"][-5:]:
        typer.echo(f"  {e}")


@app.command("register")
def register(spec: str = typer.Argument(..., help="The service spec (YAML or JSON)."),
             overrides: Optional[List[str]] = SetOpt,
             as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt,
             working_dir: Optional[str] = WorkingDirOpt) -> None:
    """Register a service: Fuxi starts its replicas and keeps them running."""
    st = _master_call(cluster, "service_register", _load(spec, overrides, working_dir, cluster))
    print_json(st) if as_json else _show(st)


@app.command("upgrade")
def upgrade(name: str, spec: str, overrides: Optional[List[str]] = SetOpt,
            as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt,
            working_dir: Optional[str] = WorkingDirOpt) -> None:
    """Roll a service to a new spec (rolling, within max_unavailable/max_surge; rolled back
    automatically when the new version's replicas fail)."""
    doc = _load(spec, overrides, working_dir, cluster)
    if doc["name"] != name:
        from fuxi.errors import BadInput

        handle(BadInput(f"the spec {spec} is for service {doc['name']!r}, not {name!r}"))
    st = _master_call(cluster, "service_upgrade", doc)
    print_json(st) if as_json else _show(st)


@app.command("scale")
def scale(name: str, replicas: int, as_json: bool = typer.Option(False, "--json"),
          cluster: str = ClusterOpt) -> None:
    """Set the number of replicas."""
    st = _master_call(cluster, "service_scale", name, replicas)
    print_json(st) if as_json else _show(st)


@app.command("remove")
def remove(name: str, as_json: bool = typer.Option(False, "--json"),
           cluster: str = ClusterOpt) -> None:
    """Drain and stop every replica, then forget the service."""
    st = _master_call(cluster, "service_remove", name)
    print_json(st) if as_json else typer.echo(f"removing {name}: draining "
                                               f"{len(st['replicas'])} replicas")


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Registered services."""
    rows = _master_call(cluster, "service_list")
    if as_json:
        print_json(rows)
        return
    typer.echo(f"{'NAME':<24} {'VERSION':<10} {'READY':<9} {'REQ/S':<8} ROLLOUT")
    for s in rows:
        typer.echo(f"{s['name']:<24} {s['version']:<10} {str(s['ready']) + '/' + str(s['desired']):<9} "
                   f"{s['requests_per_s']:<8} {s['rollout']}")


@app.command("status")
def status(name: str, as_json: bool = typer.Option(False, "--json"),
           cluster: str = ClusterOpt) -> None:
    """A service's replicas (version, state, health, node), requests, errors and latency."""
    st = _master_call(cluster, "service_status", name)
    print_json(st) if as_json else _show(st)

"""``fuxi service register|list|status|scale|upgrade|canary|promote|rollback|remove``:
online services on a running cluster (`fuxi up`). Services are called with `fuxi call nuwa://<cluster>/<name> METHOD`."""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

from cli.common import EXIT_BAD_INPUT, ClusterOpt, fail, handle, master_call, print_json
from cli.complete import service_names
from cli.waiting import SERVICE_WAIT_TIMEOUT_S, check_timeout, wait_service

app = typer.Typer(no_args_is_help=True)
SetOpt = typer.Option(None, "--set", help="Override a field: key=value (dotted keys for nested).")
NameArg = typer.Argument(..., help="The service's name (`fuxi service list`).",
                         autocompletion=service_names)
WaitOpt = typer.Option(False, "--wait", help="Return once every replica of this version is "
                                             "ready (exit 1 if rolled back, 4 at --timeout).")
TimeoutOpt = typer.Option(SERVICE_WAIT_TIMEOUT_S, "--timeout", help="How long --wait waits, "
                                                                    "in seconds.")


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
               f"{'  (scaled to zero)' if (st.get('autoscaling') or {}).get('scaled_to_zero') else ''}"
               f"{'  rollout: ' + st['rollout'] if st['rollout'] else ''}")
    c = st.get("canary")
    if c:
        typer.echo(f"canary {c['version']}: {c['percent']:g}% of calls, {c['replicas']} "
                   f"replica(s)")
    typer.echo(f"requests {st['requests']}  errors {st['errors']}  "
               f"{st['requests_per_s']}/s  p99 {st['p99_ms_max']} ms")
    a = st.get("autoscaling")
    if a:
        typer.echo(f"autoscaling: target {a['target']}, {a['min']}..{a['max']} replicas; "
                   f"current {a['current']}, recommended {a['recommended'] if a['recommended'] is not None else '-'}"
                   f"{' (waiting out the ' + a['pending'] + ' delay)' if a['pending'] else ''}")
        if a.get("scaled_to_zero"):
            typer.echo(f"  scaled to zero: no replica runs; the next call waits at the proxy "
                       f"while one starts")
        elif a.get("scale_to_zero"):
            typer.echo(f"  scales to zero after {a['scale_to_zero_after_s']:g}s with no call")
        last = a.get("last")
        typer.echo(f"  last decision: {last['from']} -> {last['to']}: {last['reason']}" if last
                   else "  last decision: none yet")
    typer.echo(f"{'REPLICA':<28} {'VERSION':<10} {'STATE':<10} {'HEALTH':<16} {'NODE':<14} SERVED")
    for r in st["replicas"]:
        typer.echo(f"{r['replica']:<28} {r['version']:<10} {r['state']:<10} {r['health']:<16} "
                   f"{(r['node'] or '-')[:12]:<14} {r['served']}")
    for e in st["events"][-5:]:
        typer.echo(f"  {e}")


@app.command("register")
def register(spec: str = typer.Argument(..., help="The service spec (YAML or JSON)."),
             overrides: Optional[List[str]] = SetOpt,
             wait: bool = WaitOpt, timeout_s: float = TimeoutOpt,
             as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt,
             working_dir: Optional[str] = WorkingDirOpt) -> None:
    """Register a service: Fuxi starts its replicas and keeps them running."""
    check_timeout(timeout_s)
    doc = _load(spec, overrides, working_dir, cluster)
    st = _master_call(cluster, "service_register", doc)
    if wait:
        st = wait_service(cluster, doc["name"], doc["version"], timeout_s)
    print_json(st) if as_json else _show(st)


@app.command("upgrade")
def upgrade(name: str = NameArg, spec: str = typer.Argument(..., help="The new spec."),
            overrides: Optional[List[str]] = SetOpt, wait: bool = WaitOpt,
            timeout_s: float = TimeoutOpt,
            as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt,
            working_dir: Optional[str] = WorkingDirOpt) -> None:
    """Roll a service to a new spec (rolling, within max_unavailable/max_surge; rolled back
    automatically when the new version's replicas fail)."""
    check_timeout(timeout_s)
    doc = _load(spec, overrides, working_dir, cluster)
    if doc["name"] != name:
        from fuxi.errors import BadInput

        handle(BadInput(f"the spec {spec} is for service {doc['name']!r}, not {name!r}"))
    st = _master_call(cluster, "service_upgrade", doc)
    if wait:
        st = wait_service(cluster, name, doc["version"], timeout_s)
    print_json(st) if as_json else _show(st)


@app.command("canary")
def canary(name: str = NameArg, spec: str = typer.Argument(..., help="The new version's spec."),
           percent: float = typer.Option(..., "--percent", help="The share of the calls the "
                                         "new version gets, in percent (0.1 to below 100)."),
           overrides: Optional[List[str]] = SetOpt,
           as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt,
           working_dir: Optional[str] = WorkingDirOpt) -> None:
    """Run a new version beside the current one, taking --percent of the calls; then
    `fuxi service promote` or `fuxi service rollback` it."""
    from fuxi.errors import BadInput

    if not 0.1 <= percent < 100.0:  # NaN fails too
        handle(BadInput(f"--percent {percent!r}: expected a share of the calls from 0.1 to "
                        f"below 100"))
    doc = _load(spec, overrides, working_dir, cluster)
    if doc["name"] != name:
        handle(BadInput(f"the spec {spec} is for service {doc['name']!r}, not {name!r}"))
    st = _master_call(cluster, "service_upgrade", doc, {"canary": percent})
    print_json(st) if as_json else _show(st)


@app.command("promote")
def promote(name: str = NameArg, wait: bool = WaitOpt, timeout_s: float = TimeoutOpt,
            as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Make the canary's version the service's: a rolling upgrade to it."""
    check_timeout(timeout_s)
    st = _master_call(cluster, "service_upgrade", name, {"promote": True})
    if wait:
        st = wait_service(cluster, name, st["version"], timeout_s)
    print_json(st) if as_json else _show(st)


@app.command("rollback")
def rollback(name: str = NameArg, as_json: bool = typer.Option(False, "--json"),
             cluster: str = ClusterOpt) -> None:
    """Stop the canary: its replicas drain and every call goes to the current version."""
    st = _master_call(cluster, "service_upgrade", name, {"rollback": True})
    print_json(st) if as_json else _show(st)


@app.command("scale")
def scale(name: str = NameArg, replicas: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json"),
          cluster: str = ClusterOpt) -> None:
    """Set the number of replicas."""
    st = _master_call(cluster, "service_scale", name, replicas)
    print_json(st) if as_json else _show(st)


@app.command("remove")
def remove(name: str = NameArg, as_json: bool = typer.Option(False, "--json"),
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
def status(name: str = NameArg, as_json: bool = typer.Option(False, "--json"),
           cluster: str = ClusterOpt) -> None:
    """A service's replicas (version, state, health, node), requests, errors and latency."""
    st = _master_call(cluster, "service_status", name)
    print_json(st) if as_json else _show(st)


@app.command("logs")
def logs(
    name: str,
    replica: Optional[str] = typer.Option(None, "--replica", help="Only this replica."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream live until Ctrl-C."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line, with cursors."),
    cursor: str = typer.Option("", "--cursor", help="Go on from a cursor --json printed."),
    cluster: str = ClusterOpt,
) -> None:
    """What the service's replicas printed and logged (stdout, stderr, logging)."""
    from cli import logs as out
    from fuxi.client import FuxiClient
    from fuxi.runtime import connect, find_cluster

    cursors = out.check_inputs(None, cursor)
    try:
        if find_cluster(cluster) is None:
            from fuxi.errors import NoCluster

            raise NoCluster(f"no running cluster {cluster!r}: service logs need a persistent "
                            f"cluster; start one with `fuxi up`")
        with connect(cluster, embedded_ok=False) as conn:
            client = FuxiClient(conn.master, cluster)

            def read(tok: str) -> dict:
                return client.service_output(name, replica, tok)

            if replica is not None and not read("")["attempts"]:
                fail(f"service {name!r} has no output kept for replica {replica!r}; `fuxi "
                     f"service status {name}` lists its replicas", EXIT_BAD_INPUT)

            if not follow:
                out.read_all(read, cursors, as_json, True)
                return
            code = out.follow_service(read, cursors, as_json)
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - our errors become exit codes
        handle(e)
    raise typer.Exit(code)

"""``fuxi nuwa ls|get|put|rm|stat|watch PATH``: the coordination service from the shell.

These talk to the Nuwa replicas' sockets directly (the addresses are in the cluster record),
so they need no Ray and answer in milliseconds."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from cli.common import EXIT_UNAVAILABLE, ClusterOpt, fail, handle, print_json

app = typer.Typer(no_args_is_help=True)


def _client(cluster: str):
    from base.cluster import find_cluster
    from nuwa.client import connect

    rec = find_cluster(cluster)
    if rec is None or not getattr(rec, "nuwa", None):
        fail(f"no running cluster {cluster!r} with Nuwa; start one with `fuxi up`", EXIT_UNAVAILABLE)
    from zhongkui import creds

    return connect([tuple(a) for a in rec.nuwa], creator="cli", token=creds.token(cluster))


def _run(cluster: str, fn):
    from base.errors import PlatformError

    c = _client(cluster)
    try:
        return fn(c)
    except PlatformError as e:
        handle(e)
    finally:
        c.close()


@app.command("ls")
def ls(path: str = typer.Argument("/"), as_json: bool = typer.Option(False, "--json"),
       cluster: str = ClusterOpt) -> None:
    """List a directory (names of directories end with '/')."""
    names = _run(cluster, lambda c: c.list(path))
    print_json(names) if as_json else [typer.echo(n) for n in names]


@app.command("get")
def get(path: str, as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Print a file's value (raw bytes), or with --json its value and stat."""
    value, stat = _run(cluster, lambda c: c.get(path))
    if as_json:
        print_json({"path": path, "value": value.decode(errors="replace"), "stat": stat})
    else:
        sys.stdout.buffer.write(value)
        if value and not value.endswith(b"\n") and sys.stdout.isatty():
            sys.stdout.write("\n")


@app.command("put")
def put(path: str, value: Optional[str] = typer.Argument(None, help="The value; read from stdin if omitted."),
        version: Optional[int] = typer.Option(None, "--version", help="Only if the current version is this."),
        parents: bool = typer.Option(True, "--parents/--no-parents", "-p/-P",
                                     help="Create missing parent directories (the default, "
                                          "like etcdctl); --no-parents refuses instead."),
        cluster: str = ClusterOpt) -> None:
    """Create or overwrite a file (a path ending in '/' creates a directory); missing parent
    directories are created unless --no-parents."""
    from nuwa.errors import NoNode

    data = value.encode() if value is not None else sys.stdin.buffer.read()

    def do(c):
        if path.endswith("/"):
            return c.create(path, parents=parents)
        try:
            return c.set(path, data, version=version)
        except NoNode:
            if version is not None:
                raise
            return c.create(path, data, parents=parents)

    _run(cluster, do)


@app.command("rm")
def rm(path: str, recursive: bool = typer.Option(False, "--recursive", "-r"),
       version: Optional[int] = typer.Option(None, "--version"), cluster: str = ClusterOpt) -> None:
    """Delete a file or an (empty, or with -r any) directory."""
    _run(cluster, lambda c: c.delete(path, version=version, recursive=recursive))


@app.command("stat")
def stat(path: str, as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Creator, revisions, version, children and size of a node."""
    st = _run(cluster, lambda c: c.stat(path))
    if as_json:
        print_json(st)
    else:
        for k, v in st.items():
            typer.echo(f"{k}: {v}")


@app.command("watch")
def watch(path: str, recursive: bool = typer.Option(False, "--recursive", "-r"),
          count: Optional[int] = typer.Option(None, "--count", help="Stop after this many events."),
          timeout_s: float = typer.Option(3600.0, "--timeout-s", help="Stop after this long without an event."),
          as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Print events (created, changed, deleted) under PATH as they happen, in revision order."""
    def do(c):
        w = c.watch(path, recursive=recursive)
        n = 0
        try:
            while count is None or n < count:
                ev = w.next(timeout_s)
                n += 1
                if as_json:
                    ev = {k: (v.decode(errors="replace") if isinstance(v, bytes) else v) for k, v in ev.items()}
                    print_json(ev)
                else:
                    typer.echo(f"{ev['revision']} {ev['type']} {ev['path']}")
        except TimeoutError:
            pass

    _run(cluster, do)

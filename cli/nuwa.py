"""``fuxi nuwa ls|get|put|rm|stat|watch PATH`` and ``fuxi nuwa snapshot save|status|restore``:
the coordination service from the shell.

These talk to the Nuwa replicas' sockets directly (the addresses are in the cluster record),
so they need no Ray and answer in milliseconds."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from cli.common import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, ClusterOpt, fail, handle, print_json

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


snapshot_app = typer.Typer(no_args_is_help=True, help="Online backup of the Nuwa tree, checks "
                           "and restore (like etcdctl snapshot save / etcdutl snapshot restore).")
app.add_typer(snapshot_app, name="snapshot")


@snapshot_app.command("save")
def snapshot_save(file: str = typer.Argument(..., help="Where to write the backup (0600)."),
                  as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Write one consistent image of the running cluster's Nuwa tree to FILE (administrators
    only; the cluster keeps serving)."""
    from nuwa.backup import save

    meta = _run(cluster, lambda c: save(c, file))
    if as_json:
        print_json(meta)
    else:
        typer.echo(f"saved revision {meta['revision']} ({meta['nodes']} nodes, "
                   f"{meta['image_bytes']} bytes) to {file}")


def _checked(fn):
    from nuwa.core.backup import BackupCorrupt
    from nuwa.errors import BadRequest

    try:
        return fn()
    except FileNotFoundError as e:
        fail(f"no such backup file: {e.filename}", EXIT_BAD_INPUT)
    except (BackupCorrupt, BadRequest) as e:
        fail(str(e), EXIT_BAD_INPUT)


@snapshot_app.command("status")
def snapshot_status(file: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Check a backup file end to end (magic, checksum, a full read of the tree) and show
    its revision, node and session counts."""
    from nuwa.backup import status

    info = _checked(lambda: status(file))
    if as_json:
        print_json(info)
    else:
        for k in ("revision", "index", "nodes", "sessions", "image_bytes", "sha256", "taken_at"):
            typer.echo(f"{k}: {info[k]}")


@snapshot_app.command("restore")
def snapshot_restore(file: str,
                     replicas: int = typer.Option(3, "--nuwa-replicas",
                                                  help="Voters of the new group (1, 3 or 5)."),
                     data_dir: Optional[str] = typer.Option(
                         None, "--data-dir", help="The new cluster's data dir (default: "
                         "$FUXI_HOME/<cluster>, as `fuxi up` uses)."),
                     as_json: bool = typer.Option(False, "--json"),
                     cluster: str = ClusterOpt) -> None:
    """Make a new Nuwa group's disks from FILE; the next `fuxi up` of that cluster starts
    from it. Refuses a data dir that already holds a group, and a running cluster."""
    from base.cluster import cluster_dir, find_cluster
    from nuwa.backup import restore

    if data_dir is None and find_cluster(cluster) is not None:
        fail(f"cluster {cluster!r} is running; `fuxi down` it first (a restore makes new "
             f"disks)", EXIT_BAD_INPUT)
    out = _checked(lambda: restore(file, data_dir or cluster_dir(cluster), replicas))
    if as_json:
        print_json(out)
    else:
        typer.echo(f"restored revision {out['revision']} ({out['nodes']} nodes) into "
                   f"{out['data_dir']}; start it with `fuxi up`"
                   f"{'' if replicas == 3 else f' --nuwa-replicas {replicas}'}")

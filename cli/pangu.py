"""``fuxi pangu ls|put|get|cat|rm|mkdir|mv|stat|du|fsck``: the distributed file system from
the shell. Paths are Pangu paths (``/dir/file``) or URLs (``pangu:///dir/file``). On the
embedded default (no `fuxi up`), the command starts Pangu for its own duration; the files
stay under the cluster's data directory for the next command."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Optional

import typer

from cli.common import EXIT_BAD_INPUT, EXIT_JOB_FAILED, ClusterOpt, fail, handle, print_json

app = typer.Typer(no_args_is_help=True)

COPY_BLOCK_BYTES = 8 * 1024 * 1024


@contextlib.contextmanager
def _pangu(cluster: str) -> Iterator:
    from fuxi.runtime import connect, ensure_pangu
    from pangu.client import Client

    try:
        with connect(cluster) as conn:
            ensure_pangu(conn)
            yield Client(cluster)
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001
        handle(e)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command("ls")
def ls(path: str = typer.Argument("/"), as_json: bool = typer.Option(False, "--json"),
       cluster: str = ClusterOpt) -> None:
    """List a directory: type, size, replication, owner, name."""
    with _pangu(cluster) as c:
        entries = c.ls(path, detail=True)
    if as_json:
        print_json(entries)
        return
    for e in entries:
        name = e["path"].rsplit("/", 1)[1] + ("/" if e["type"] == "directory" else "")
        rf = e.get("replication", "-")
        typer.echo(f"{e['type'][0]} {e['size']:>14} {rf!s:>2} {e['owner']:<12} {name}")


@app.command("put")
def put(local: str = typer.Argument(..., help="Local file, or - for stdin."),
        path: str = typer.Argument(..., help="Pangu path to write (overwritten)."),
        replication: Optional[int] = typer.Option(None, "--replication", "-r"),
        chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="Bytes (multiple of 64 KiB)."),
        parents: bool = typer.Option(True, "--parents/--no-parents", help="Create missing directories."),
        cluster: str = ClusterOpt) -> None:
    """Copy a local file into Pangu."""
    if local != "-" and not os.path.isfile(local):
        fail(f"{local}: no such local file", EXIT_BAD_INPUT)
    with _pangu(cluster) as c:
        from pangu.client import parse_url

        p = parse_url(path)[1]
        if parents and p.rsplit("/", 1)[0]:
            c.mkdir(p.rsplit("/", 1)[0], parents=True)
        src = sys.stdin.buffer if local == "-" else open(local, "rb")
        n = 0
        try:
            with c.open(p, "wb", replication=replication, chunk_size=chunk_size) as f:
                while block := src.read(COPY_BLOCK_BYTES):
                    f.write(block)
                    n += len(block)
        finally:
            if src is not sys.stdin.buffer:
                src.close()
    typer.echo(f"wrote {n} bytes to {p}", err=True)


@app.command("get")
def get(path: str, local: str = typer.Argument(..., help="Local file to write."),
        cluster: str = ClusterOpt) -> None:
    """Copy a Pangu file to a local file (written to a temporary name, then renamed)."""
    with _pangu(cluster) as c:
        tmp = f"{local}.pangu-part"
        try:
            with c.open(path, "rb") as f, open(tmp, "wb") as out:
                while block := f.read(COPY_BLOCK_BYTES):
                    out.write(block)
            os.replace(tmp, local)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


@app.command("cat")
def cat(path: str, cluster: str = ClusterOpt) -> None:
    """Write a file's bytes to stdout."""
    with _pangu(cluster) as c:
        with c.open(path, "rb") as f:
            while block := f.read(COPY_BLOCK_BYTES):
                sys.stdout.buffer.write(block)
    sys.stdout.buffer.flush()


@app.command("rm")
def rm(path: str, recursive: bool = typer.Option(False, "--recursive", "-r"),
       cluster: str = ClusterOpt) -> None:
    """Delete a file or a directory (non-empty ones need -r)."""
    with _pangu(cluster) as c:
        res = c.rm(path, recursive=recursive)
    typer.echo(f"removed {res['path']} ({len(res['freed'])} chunk(s) freed)", err=True)


@app.command("mkdir")
def mkdir(path: str, parents: bool = typer.Option(False, "--parents", "-p"),
          cluster: str = ClusterOpt) -> None:
    """Create a directory (-p: with its parents, and no error if it exists)."""
    with _pangu(cluster) as c:
        c.mkdir(path, parents=parents)


@app.command("mv")
def mv(src: str, dst: str, overwrite: bool = typer.Option(False, "--overwrite", "-f"),
       cluster: str = ClusterOpt) -> None:
    """Rename a file or a whole directory, atomically."""
    with _pangu(cluster) as c:
        c.mv(src, dst, overwrite=overwrite)


@app.command("stat")
def stat(path: str, as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """Type, size, owner, times, replication, chunk size and chunks of a path."""
    with _pangu(cluster) as c:
        st = c.stat(path)
    if as_json:
        print_json(st)
    else:
        for k, v in st.items():
            typer.echo(f"{k}: {v}")


@app.command("du")
def du(path: str = typer.Argument("/"), as_json: bool = typer.Option(False, "--json"),
       cluster: str = ClusterOpt) -> None:
    """Files, directories and bytes under a path."""
    with _pangu(cluster) as c:
        res = c.du(path)
    if as_json:
        print_json(res)
    else:
        typer.echo(f"{_size(res['bytes'])} ({res['bytes']} bytes) in {res['files']} file(s), "
                   f"{res['directories']} director(ies) under {res['path']}")


@app.command("fsck")
def fsck(path: str = typer.Argument("/"), as_json: bool = typer.Option(False, "--json"),
         cluster: str = ClusterOpt) -> None:
    """Report under-replicated, missing and stale-only chunks. Exit 1 when not healthy."""
    with _pangu(cluster) as c:
        rep = c.fsck(path)
    if as_json:
        print_json(rep)
    else:
        typer.echo(f"{rep['path']}: {rep['files']} file(s), {rep['chunks']} chunk(s); "
                   f"under-replicated {len(rep['under_replicated'])}, missing "
                   f"{len(rep['missing'])}, stale only {len(rep['stale_only'])}; corrupt "
                   f"replicas found so far {rep['corrupt_found']} -> "
                   + ("HEALTHY" if rep["healthy"] else "NOT HEALTHY"))
        for kind in ("missing", "stale_only", "under_replicated"):
            for item in rep[kind][:20]:
                typer.echo(f"  {kind}: {item}")
    if not rep["healthy"]:
        raise typer.Exit(EXIT_JOB_FAILED)


@app.command("servers")
def servers(as_json: bool = typer.Option(False, "--json"), cluster: str = ClusterOpt) -> None:
    """The chunkservers as the active master sees them, and its recent events."""
    with _pangu(cluster) as c:
        st = c.status()
    if as_json:
        print_json(st)
        return
    typer.echo(f"active master {st['master']}, journal at {st['journal_seq']}, "
               f"{st['files']} file(s), {st['chunks']} chunk(s)")
    for s in st["servers"]:
        state = "dead" if s["dead"] else ("draining" if s["draining"] else "live")
        typer.echo(f"  {s['id']:<14} {state:<9} {s['chunks']:>6} chunks "
                   f"{_size(s['used_bytes']):>10} of {_size(s['capacity_bytes']):>10}  "
                   f"node {s['node'][:12]}")


@app.command("drain")
def drain(server: str = typer.Argument(..., help="Chunkserver id (see `fuxi pangu servers`)."),
          undo: bool = typer.Option(False, "--undo", help="Take data again."),
          cluster: str = ClusterOpt) -> None:
    """Move a chunkserver's data away before taking it out (decommission)."""
    with _pangu(cluster) as c:
        res = c.call("drain", server, not undo)
    typer.echo(f"{res['server']}: " + ("draining" if res["draining"] else "takes data again")
               + f" ({res['chunks']} chunk(s) on it now; watch `fuxi pangu servers`)")

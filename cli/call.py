"""``fuxi call URI METHOD [key=value ...]``: call a Kuafu service from the shell.

    fuxi call nuwa://default/wordfreq lookup word=the
    fuxi call tcp://127.0.0.1:9000/echo echo --data @payload.bin > back.bin
    fuxi call nuwa://default/echo echo --data 'hello' --json

The message is a str-to-str map when key=value pairs are given, the bytes of a file with
``--data @path`` (``--data -`` reads stdin), a str with ``--data text``, or empty bytes.
``nuwa://`` addresses are looked up in the cluster's Nuwa (no Ray needed)."""

from __future__ import annotations

import base64
import sys
from typing import List, Optional

import typer

from base.errors import exit_code
from cli.common import EXIT_BAD_INPUT, EXIT_JOB_FAILED, fail, print_json

DATA_FILE_BYTES_MAX = 1024 * 1024 * 1024  # what --data @file may send


def _message(pairs: list[str], data: str | None):
    if pairs and data is not None:
        fail("give key=value pairs or --data, not both", EXIT_BAD_INPUT)
    if pairs:
        out = {}
        for p in pairs:
            k, sep, v = p.partition("=")
            if not sep or not k:
                fail(f"argument {p!r}: expected key=value", EXIT_BAD_INPUT)
            out[k] = v
        return out
    if data is None:
        return b""
    if data == "-":
        return sys.stdin.buffer.read(DATA_FILE_BYTES_MAX + 1)
    if data.startswith("@"):
        try:
            with open(data[1:], "rb") as f:
                body = f.read(DATA_FILE_BYTES_MAX + 1)
        except OSError as e:
            fail(f"--data {data}: {e.strerror or e}", EXIT_BAD_INPUT)
        if len(body) > DATA_FILE_BYTES_MAX:
            fail(f"--data {data}: over {DATA_FILE_BYTES_MAX} bytes", EXIT_BAD_INPUT)
        return body
    return data


def _as_json(reply):
    import pyarrow as pa

    if isinstance(reply, bytes):
        try:
            return {"type": "bytes", "text": reply.decode()}
        except UnicodeDecodeError:
            return {"type": "bytes", "base64": base64.b64encode(reply).decode()}
    if isinstance(reply, str):
        return {"type": "str", "value": reply}
    if isinstance(reply, dict):
        return {"type": "map", "value": reply}
    if isinstance(reply, pa.Table):
        return {"type": "arrow", "rows": reply.to_pylist()}
    return {"type": type(reply).__name__, "value": repr(reply)}


def call(uri: str = typer.Argument(..., help="tcp://host:port/<service> or nuwa://<cluster>/<service>"),
         method: str = typer.Argument(..., help="The method to call."),
         pairs: Optional[List[str]] = typer.Argument(None, help="key=value pairs: a map message."),
         data: Optional[str] = typer.Option(None, "--data", "-d",
                                            help="@file for its bytes, - for stdin, else a str."),
         as_json: bool = typer.Option(False, "--json", help="Print the reply as JSON."),
         timeout_s: float = typer.Option(30.0, "--timeout", help="Deadline in seconds."),
         idempotent: bool = typer.Option(False, "--idempotent",
                                         help="Allow a resend if the first endpoint fails mid-call.")) -> None:
    """Call METHOD of the service at URI and print the reply."""
    import kuafu

    message = _message(pairs or [], data)
    try:
        with kuafu.connect(uri, timeout_s=timeout_s) as c:
            reply = c.call(method, message, idempotent=idempotent)
    except (kuafu.BadRequest, kuafu.FrameError) as e:
        fail(f"{type(e).__name__}: {e}", EXIT_BAD_INPUT)
    except kuafu.RemoteError as e:
        if as_json:
            print_json({"error": e.code, "type": e.remote_type, "message": e.remote_message,
                        "traceback": e.remote_traceback})
            raise typer.Exit(EXIT_JOB_FAILED)
        fail(f"the service raised {e}\n{e.remote_traceback}", EXIT_JOB_FAILED)
    except Exception as e:  # noqa: BLE001 - finding the proxy in Nuwa (a refused token, ...)
        from nuwa.errors import NuwaError

        if not isinstance(e, (NuwaError, kuafu.KuafuError)):
            raise
        if isinstance(e, NuwaError):  # no quorum, refused token: the platform, exit 3
            fail(f"finding a proxy in the cluster's Nuwa: {type(e).__name__}: {e}",
                 exit_code(e))
        if as_json:  # unreachable, overloaded, denied: 3; timed out mid-call: 3 (unknown)
            print_json({"error": e.code, "message": str(e),
                        "maybe_executed": bool(e.maybe_executed)})
            raise typer.Exit(exit_code(e))
        fail(f"{type(e).__name__}: {e}", exit_code(e))
    if as_json:
        print_json(_as_json(reply))
    elif isinstance(reply, bytes):
        sys.stdout.buffer.write(reply)
        sys.stdout.flush()
    elif isinstance(reply, dict):
        for k, v in reply.items():
            typer.echo(f"{k}={v}")
    elif isinstance(reply, str):
        typer.echo(reply)
    else:
        typer.echo(arrow_text(reply))


ARROW_ROWS_SHOWN_MAX = 1000  # rows of an Arrow reply printed as text (--json prints all)


def arrow_text(table) -> str:
    """An Arrow table as aligned text columns, with pyarrow alone (a plain install has no
    pandas); at most ARROW_ROWS_SHOWN_MAX rows, then how many were left out."""
    names = list(table.column_names)
    shown = table.slice(0, ARROW_ROWS_SHOWN_MAX)
    cols = [["" if v is None else str(v) for v in shown.column(n).to_pylist()] for n in names]
    widths = [max([len(n)] + [len(v) for v in col]) for n, col in zip(names, cols)]
    lines = [" ".join(n.rjust(w) for n, w in zip(names, widths))]
    for i in range(shown.num_rows):
        lines.append(" ".join(col[i].rjust(w) for col, w in zip(cols, widths)))
    if table.num_rows > shown.num_rows:
        lines.append(f"... {table.num_rows - shown.num_rows} more row(s) (--json prints all)")
    return "\n".join(lines)

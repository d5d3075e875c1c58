"""``fuxi validate SORTED [--expect INPUT]``: check a sort's output like the Sort Benchmark's
``valsort`` (``fuxi.io.valsort``): every record's key at or above the one before it, within
and across the ``part-*.records`` files in name order; with ``--expect`` (the generator's
output) the same record count and order-independent checksum as the input. Reads the files
in bounded blocks in this process (local paths, ``file://`` or ``pangu://`` URLs; a Pangu URL
connects to the cluster). Exit 0 valid, 1 not valid (with the report), 2 bad input."""

from __future__ import annotations

import contextlib
from typing import Optional

import typer

from cli.common import EXIT_JOB_FAILED, ClusterOpt, handle, print_json


@contextlib.contextmanager
def _storage(cluster: str, urls: list[str]):
    """A Pangu connection for the command's duration when a URL needs one."""
    if not any(u.startswith("pangu://") for u in urls):
        yield
        return
    from fuxi.runtime import connect, ensure_pangu

    with connect(cluster) as conn:
        ensure_pangu(conn)
        yield


def _text(report: dict) -> str:
    lines = [f"{'VALID' if report['ok'] else 'NOT VALID'}: {report['records']} records in "
             f"{report['files']} files, checksum {report['checksum']}, "
             f"{report['duplicate_keys']} duplicate keys"]
    if report["expected_records"] is not None:
        lines.append(f"  input: {report['expected_records']} records, checksum "
                     f"{report['expected_checksum']}")
    else:
        lines.append("  input: not compared (give --expect the generator's output)")
    for p in report["problems"]:
        lines.append(f"  problem: {p}")
    return "\n".join(lines)


def validate(
    sorted_dir: str = typer.Argument(..., help="The sort's output directory (part-*.records)."),
    expect: Optional[str] = typer.Option(None, "--expect", help="The generator's output "
                                         "directory: compare count and checksum with its "
                                         "_checksum/ files."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    cluster: str = ClusterOpt,
) -> None:
    """Check a sorted output (globally sorted; with --expect also the input's record count
    and checksum). Exit code 0 valid, 1 not valid, 2 bad input, 3 no cluster (Pangu URLs)."""
    from fuxi.io.valsort import validate as run

    try:
        with _storage(cluster, [sorted_dir] + ([expect] if expect else [])):
            report = run(sorted_dir, expect)
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - our errors become exit codes
        handle(e)
    if as_json:
        print_json(report)
    else:
        typer.echo(_text(report))
    if not report["ok"]:
        raise typer.Exit(EXIT_JOB_FAILED)

"""The CLI reference, generated from the typer app: ``python -m cli.reference > docs/cli.md``.

A unit test (tests/unit/test_cli_contract.py) fails when docs/cli.md differs from what this
prints, so the reference cannot drift from the commands."""

from __future__ import annotations

import sys

HEADER = """# The `fuxi` command: reference

Generated from the CLI itself by `python -m cli.reference > docs/cli.md`; do not edit by hand
(`tests/unit/test_cli_contract.py` fails when this file is out of date).

## The contract for scripts

| exit code | meaning |
|---|---|
| 0 | success (the job succeeded, the call answered, the service is ready) |
| 1 | the job failed or was cancelled, the call's handler raised, a rollout was rolled back |
| 2 | bad input: fix the command (invalid spec, unknown id, bad flag value) |
| 3 | the platform is unavailable or refused: no cluster (record), unreachable, not serving, auth denied |
| 4 | a wait ran out (`fuxi job wait --timeout`, `--wait --timeout`): the work goes on |
| 130 | interrupted by Ctrl-C: a followed job keeps running unless `--cancel-on-interrupt` |

The cluster a command talks to: its own `-c/--cluster`, else the global `fuxi --cluster`,
else `$FUXI_CLUSTER`, else the recorded cluster whose Ray address is `$RAY_ADDRESS`, else
`default`. Shell completion (`fuxi --install-completion`) completes job ids and service names
from the running cluster (one Nuwa request, at most 1 s; nothing when it cannot be reached).
"""


def _param_rows(cmd) -> list[str]:
    rows = []
    for p in cmd.params:
        if p.param_type_name == "argument":
            name = f"`{p.name.upper()}`"
            kind = "argument" + ("" if p.required else " (optional)")
        else:
            name = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            kind = "flag" if getattr(p, "is_flag", False) else "option"
        default = ""
        if not p.required and p.default not in (None, (), [], False) and p.show_default is not False:
            default = f" (default `{p.default}`)"
        text = " ".join((getattr(p, "help", None) or "").split()).replace("|", "\\|")
        rows.append(f"| {name} | {kind} | {text}{default} |".replace("\n", " "))
    return rows


def _usage(path: list[str], cmd) -> str:
    parts = ["fuxi", *path[1:]]
    for p in cmd.params:
        if p.param_type_name == "argument":
            parts.append(p.name.upper() if p.required else f"[{p.name.upper()}]")
    if any(p.param_type_name == "option" for p in cmd.params):
        parts.append("[OPTIONS]")
    return " ".join(parts)


def _walk(path: list[str], cmd, out: list[str]) -> None:
    sub = getattr(cmd, "commands", None)
    if len(path) > 1:
        title = " ".join(["fuxi", *path[1:]])
        out.append(f"\n## `{title}`\n")
        doc = (cmd.help or "").strip()
        if doc:
            out.append(" ".join(doc.split()) + "\n")
        if not sub:
            out.append(f"```\n{_usage(path, cmd)}\n```\n")
    rows = _param_rows(cmd)
    if rows:
        out.append("| name | kind | what |\n|---|---|---|")
        out.extend(rows)
    if sub:
        for name in sorted(sub):
            _walk([*path, name], sub[name], out)


def reference() -> str:
    """docs/cli.md's text."""
    import typer

    from cli.main import app

    out = [HEADER, "## `fuxi`\n"]
    _walk(["fuxi"], typer.main.get_command(app), out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())

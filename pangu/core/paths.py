"""Pangu path syntax: absolute and '/'-separated, like a POSIX path without the surprises.

Valid: '/', '/data', '/data/part-0.parquet'. A trailing '/' is allowed on input and dropped.
Refused, with a message saying why: relative paths, empty components ('//'), '.' and '..',
control characters, components over COMPONENT_BYTES_MAX or paths over PATH_BYTES_MAX bytes.
Pure string functions.
"""

from __future__ import annotations

from base.limits import COMPONENT_BYTES_MAX, PATH_BYTES_MAX

import re

from pangu.errors import BadPath

ROOT = "/"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def normalize(path: object) -> str:
    """``path`` in canonical form (no trailing '/', except the root), or BadPath."""
    if not isinstance(path, str):
        raise BadPath(f"bad path {path!r}: a path is a str, got {type(path).__name__}; "
                      f"expected an absolute path such as '/data/x'")
    if not path.startswith("/"):
        raise BadPath(f"bad path {path!r}: relative; expected an absolute path such as "
                      f"'/{path}'")
    try:
        n = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadPath(f"bad path {path!r}: not encodable as UTF-8") from None
    if n > PATH_BYTES_MAX:
        raise BadPath(f"bad path {path[:64]!r}...: {n} bytes; expected at most "
                      f"PATH_BYTES_MAX={PATH_BYTES_MAX}")
    m = _CONTROL.search(path)
    if m:
        raise BadPath(f"bad path {path!r}: control character U+{ord(m.group()):04X} at "
                      f"index {m.start()}; expected printable names")
    if path == ROOT:
        return ROOT
    body = path[1:-1] if path.endswith("/") else path[1:]
    for part in body.split("/"):
        if part == "":
            raise BadPath(f"bad path {path!r}: empty component ('//'); expected names "
                          f"separated by single '/'")
        if part in (".", ".."):
            raise BadPath(f"bad path {path!r}: {part!r} components are not allowed; "
                          f"expected a path without '.' or '..'")
        if len(part.encode("utf-8")) > COMPONENT_BYTES_MAX:
            raise BadPath(f"bad path {path!r}: component {part[:32]!r}... is longer than "
                          f"COMPONENT_BYTES_MAX={COMPONENT_BYTES_MAX} bytes")
    return "/" + body


def parent(path: str) -> str:
    if path == ROOT:
        return ROOT
    head = path.rsplit("/", 1)[0]
    return head or ROOT


def name(path: str) -> str:
    return path.rsplit("/", 1)[1] if path != ROOT else ""


def join(dirpath: str, child: str) -> str:
    return (dirpath.rstrip("/") + "/" + child) if dirpath != ROOT else "/" + child


def is_under(path: str, ancestor: str) -> bool:
    """True if ``path`` is ``ancestor`` or below it."""
    return ancestor == ROOT or path == ancestor or path.startswith(ancestor + "/")

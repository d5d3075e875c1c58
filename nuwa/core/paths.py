"""Nuwa path syntax: absolute, '/'-separated; directories end with '/'; the root is '/'.

    /                 the root directory
    /services/        a directory
    /services/kv/r1   a file

A name is either a file or a directory, never both: '/a' and '/a/' cannot coexist.
Pure string functions; nothing here looks at a tree.
"""

from __future__ import annotations

from base.limits import COMPONENT_BYTES_MAX, PATH_BYTES_MAX

import re

from nuwa.errors import BadPath

ROOT = "/"

KIND_ANY = "any"
KIND_FILE = "file"
KIND_DIR = "dir"

# C0 controls, DEL and C1 controls (Unicode category Cc).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

__all__ = [
    "PATH_BYTES_MAX", "COMPONENT_BYTES_MAX", "ROOT", "KIND_ANY", "KIND_FILE", "KIND_DIR",
    "validate_path", "is_dir_path", "parent_of", "name_of", "other_kind", "ancestors",
    "is_under",
]


def _bad(path: object, why: str, expected: str = "an absolute path such as '/a/b' (file) or "
                                                   "'/a/b/' (directory)") -> BadPath:
    return BadPath(f"bad path {path!r}: {why}; expected {expected}",
                   path=path if isinstance(path, str) else None)


def validate_path(path: object, kind: str = KIND_ANY) -> str:
    """Return `path` if it is a valid Nuwa path of the given kind, else raise BadPath saying
    what is wrong and what is expected. `kind` is KIND_ANY, KIND_FILE or KIND_DIR."""
    if not isinstance(path, str):
        raise _bad(path, f"a path is a str, got {type(path).__name__}")
    if not path:
        raise _bad(path, "empty path")
    if not path.startswith("/"):
        raise _bad(path, "relative path (Nuwa names everything by its absolute path)",
                   f"an absolute path starting with '/', e.g. '/{path}'")
    try:
        path_bytes = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise _bad(path, "not encodable as UTF-8 (lone surrogate)") from None
    if path_bytes > PATH_BYTES_MAX:
        raise _bad(path[:64] + "...", f"{path_bytes} bytes long",
                   f"at most PATH_BYTES_MAX={PATH_BYTES_MAX} bytes")
    m = _CONTROL.search(path)
    if m:
        raise _bad(path, f"control character U+{ord(m.group()):04X} at index {m.start()}",
                   "printable characters only")
    if path == ROOT:
        names: list[str] = []
    else:
        names = (path[1:-1] if path.endswith("/") else path[1:]).split("/")
    for name in names:
        if name == "":
            raise _bad(path, "empty component ('//')", "one '/' between names")
        if name in (".", ".."):
            raise _bad(path, f"{name!r} component (Nuwa has no relative names)",
                       "an absolute path without '.' or '..'")
        name_bytes = len(name.encode("utf-8"))
        if name_bytes > COMPONENT_BYTES_MAX:
            raise _bad(path, f"component {name[:32]!r}... is {name_bytes} bytes long",
                       f"names of at most COMPONENT_BYTES_MAX={COMPONENT_BYTES_MAX} bytes")
    if kind == KIND_FILE and path.endswith("/"):
        raise _bad(path, "names a directory (ends with '/') where a file is expected",
                   f"a file path without the trailing '/', e.g. {path.rstrip('/') or '/f'!r}")
    if kind == KIND_DIR and not path.endswith("/"):
        raise _bad(path, "names a file where a directory is expected",
                   f"a directory path ending with '/', e.g. {path + '/'!r}")
    return path


def is_dir_path(path: str) -> bool:
    return path.endswith("/")


def parent_of(path: str) -> str | None:
    """'/a/b' -> '/a/', '/a/b/' -> '/a/', '/a' -> '/', '/' -> None."""
    if path == ROOT:
        return None
    cut = path.rstrip("/").rfind("/")
    return path[: cut + 1]


def name_of(path: str) -> str:
    """The last component, keeping the trailing '/' of a directory: '/a/b/' -> 'b/'."""
    parent = parent_of(path)
    return path if parent is None else path[len(parent):]


def other_kind(path: str) -> str | None:
    """The same name as the other kind: '/a/b' <-> '/a/b/'; the root has none."""
    if path == ROOT:
        return None
    return path[:-1] if path.endswith("/") else path + "/"


def ancestors(path: str) -> list[str]:
    """The directory paths from the root down to `path`'s parent: '/a/b/c' -> ['/', '/a/', '/a/b/']."""
    out = []
    parent = parent_of(path)
    while parent is not None:
        out.append(parent)
        parent = parent_of(parent)
    out.reverse()
    return out


def is_under(path: str, directory: str) -> bool:
    """True if `path` is a strict descendant of `directory` (a directory path)."""
    return path != directory and path.startswith(directory)

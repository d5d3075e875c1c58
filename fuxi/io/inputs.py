"""Input resolution and split: which files a task reads, and which instance reads which.

Pure except for fsspec listing (glob, info). No Ray.

* :func:`expand_inputs` turns a job's input patterns into a sorted, de-duplicated list of
  files with their sizes.
* :func:`split_files` deals those files to a task's instances, balancing bytes.
"""

from __future__ import annotations

import heapq
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec

from fuxi.errors import BadInput, LimitExceeded

__all__ = ["FileInfo", "expand_inputs", "split_files", "input_files_max", "instances_max"]

#: The most input files one task may read after expansion.
input_files_max = 100_000

#: The most instances a split may produce.
instances_max = 100_000

_GLOB_CHARS = "*?["


@dataclass(frozen=True, order=True)
class FileInfo:
    """One input file. ``path`` is a plain absolute path for local files, a full URL otherwise."""

    path: str
    size_bytes: int


def _is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def _hidden(name: str) -> bool:
    # Hadoop/Spark convention: _SUCCESS, _attempts/, .crc files are bookkeeping, not data.
    return name.startswith("_") or name.startswith(".")


def _expand_one(pattern: str, base_dir: str) -> list[FileInfo]:
    if "://" in pattern:
        url = pattern
    else:
        url = os.path.normpath(os.path.join(os.path.abspath(base_dir), pattern))
    fs, path = fsspec.core.url_to_fs(url)
    local = _is_local(fs)

    def name_of(p: str) -> str:
        return p if local else fs.unstrip_protocol(p)

    found: list[FileInfo] = []
    if any(c in path for c in _GLOB_CHARS):
        for p, info in sorted(fs.glob(path, detail=True).items()):
            if info.get("type") == "file":
                found.append(FileInfo(name_of(p), int(info.get("size") or 0)))
    elif fs.isdir(path):
        # A directory means the data files under it (e.g. another job's output).
        for p, info in sorted(fs.find(path, detail=True).items()):
            relative = posixpath.relpath(p, path) if local else p[len(path) :].lstrip("/")
            if not any(_hidden(part) for part in relative.replace(os.sep, "/").split("/")):
                found.append(FileInfo(name_of(p), int(info.get("size") or 0)))
    elif fs.isfile(path):
        found.append(FileInfo(name_of(path), int(fs.size(path) or 0)))
    if not found and not local:
        # fsspec's walk and glob swallow OSErrors: a refusal (Zhongkui) would read as "no
        # files". Ask for the fixed part of the pattern directly, so it says so.
        fixed = path
        for c in _GLOB_CHARS:
            fixed = fixed.split(c, 1)[0]
        try:
            fs.info(fixed.rstrip("/") or "/")
        except PermissionError as e:
            raise BadInput(f"input pattern {pattern!r}: {e}") from None
        except (FileNotFoundError, OSError, ValueError):
            pass
    return found


def expand_inputs(patterns: str | Sequence[str], base_dir: str) -> list[FileInfo]:
    """Resolve input patterns to files, sorted by path and de-duplicated.

    Each pattern is a path (relative ones are taken from ``base_dir``), a glob (``*``, ``?``,
    ``[...]``, ``**``) or an fsspec URL (``memory://x/*.txt``, ``s3://b/k``). A directory
    stands for the files under it, skipping names starting with ``_`` or ``.``. Local files
    come back as plain absolute paths, other protocols as full URLs. A pattern matching no
    file is an error, so a typo never silently yields an empty job.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise BadInput(f"input pattern must be a non-empty string; got {p!r}")
    by_path: dict[str, FileInfo] = {}
    for pattern in patterns:
        found = _expand_one(pattern, base_dir)
        if not found:
            raise BadInput(
                f"input pattern {pattern!r} (relative to {base_dir!r}) matched no files; "
                "expected at least one existing file"
            )
        for info in found:
            by_path[info.path] = info
        if len(by_path) > input_files_max:
            raise LimitExceeded(
                f"input_files_max is {input_files_max}; patterns {patterns} matched more"
            )
    return [by_path[p] for p in sorted(by_path)]


def split_files(files: Sequence[FileInfo], num_instances: int) -> list[list[str]]:
    """Deal ``files`` to ``num_instances`` instances, balancing bytes; return paths per instance.

    Greedy longest-processing-time: files from largest to smallest (ties by path) each go to
    the instance with the fewest bytes so far (ties by lowest index). Deterministic; each list
    is sorted by path; with more instances than files some lists are empty.
    """
    if isinstance(num_instances, bool) or not isinstance(num_instances, int) or num_instances < 1:
        raise BadInput(f"num_instances must be an int >= 1; got {num_instances!r}")
    if num_instances > instances_max:
        raise LimitExceeded(f"instances_max is {instances_max}; got num_instances {num_instances}")
    for f in files:
        if not isinstance(f, FileInfo):
            raise BadInput(f"split_files takes FileInfo items; got {type(f).__name__} {f!r}")
    loads = [(0, i) for i in range(num_instances)]  # (bytes so far, instance): a min-heap
    assigned: list[list[str]] = [[] for _ in range(num_instances)]
    for f in sorted(files, key=lambda f: (-f.size_bytes, f.path)):
        load, i = heapq.heappop(loads)
        assigned[i].append(f.path)
        heapq.heappush(loads, (load + f.size_bytes, i))
    return [sorted(paths) for paths in assigned]

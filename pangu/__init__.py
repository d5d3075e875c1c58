"""Pangu: the distributed file system (issue 4).

The public API:

* ``pangu.open(url, mode)``, ``ls``, ``stat``, ``exists``, ``mkdir``, ``rm``, ``mv``, ``du``,
  ``Client(cluster)``, ``PanguFile`` and ``parse_url`` (from ``pangu.client``; its
  ``client(cluster)`` stays there: ``pangu.client`` is the module's name);
* ``PanguFileSystem``, the fsspec file system of ``pangu://`` URLs (from ``pangu.fs``);
* the error types (``pangu.errors``): ``PanguError`` and what derives from it.

The client and the file system are imported on first use (they pull in Ray, pyarrow and
fsspec), so ``import pangu`` and the pure cores (``pangu.core``) load without them."""

import importlib

from pangu.errors import (BadPath, BadRequest, Busy, ChecksumError, Denied, DiskFailed, DiskFull,
                          Exists, IsADir, LeaseExpired, NoSpace, NotActive, NotADir, NotEmpty,
                          NotEnoughServers, NotFound, PanguError, ReplicaWriteFailed,
                          StaleFencingToken, StaleReplica, Unauthenticated, Unavailable)

_LAZY = {**{name: "pangu.client" for name in ("open", "ls", "stat", "exists", "mkdir", "rm",
                                              "mv", "du", "Client", "PanguFile", "parse_url")},
         "PanguFileSystem": "pangu.fs"}

__all__ = sorted(_LAZY) + [
    "BadPath", "BadRequest", "Busy", "ChecksumError", "Denied", "DiskFailed", "DiskFull",
    "Exists", "IsADir", "LeaseExpired", "NoSpace", "NotADir", "NotActive", "NotEmpty",
    "NotEnoughServers", "NotFound", "PanguError", "ReplicaWriteFailed", "StaleFencingToken",
    "StaleReplica", "Unauthenticated", "Unavailable"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pangu' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

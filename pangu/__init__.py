"""Pangu: the distributed file system (issue 4).

``pangu.open(url, mode)``, ``ls``, ``stat``, ``exists``, ``mkdir``, ``rm``, ``mv``, ``du`` and
``Client(cluster)`` come from ``pangu.client`` and are imported on first use, so the pure
cores (``paths``, ``placement``, ``chunkfile``, ``namespace``, ``journal``) load without Ray."""

import importlib

_CLIENT_API = ("open", "ls", "stat", "exists", "mkdir", "rm", "mv", "du", "Client",
               "PanguFile", "parse_url")


def __getattr__(name):
    if name in _CLIENT_API:
        return getattr(importlib.import_module("pangu.client"), name)
    raise AttributeError(f"module 'pangu' has no attribute {name!r}")

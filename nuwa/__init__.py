"""Nuwa: the Raft-replicated coordination service (tree namespace, sessions, watches, locks,
election).

The public API::

    import nuwa

    c = nuwa.connect("10.0.0.5:41001,10.0.0.6:41002,10.0.0.7:41003", timeout_s=5)
    c.create("/app/", parents=True)
    value, stat = c.get("/app/")

* ``connect``, ``Nuwa`` (blocking) and ``AsyncNuwa`` (asyncio), ``Session``,
  ``SessionState``: from ``nuwa.client``;
* the recipes ``Lock``, ``Election``, ``Barrier``, ``ServiceRegistry`` and ``FencingToken``:
  from ``nuwa.recipes``;
* the error types (``NuwaError`` and every subclass, all rooted in ``base.errors``): from
  ``nuwa.errors``.

The client and the recipes are imported on first use, so ``import nuwa`` (and the pure
cores under ``nuwa.core``) load neither sockets nor msgpack. Layout: docs/nuwa.md.
"""

import importlib

from nuwa.errors import (BadPath, BadRequest, BadVersion, Compacted, CorruptSnapshot, Denied,
                         IsADirectory, LimitExceeded, LockLost, NodeExists, NoNode, NoSession,
                         NotADirectory, NotEmpty, NotLeader, NuwaError, OutcomeUnknown,
                         QuotaExceeded, SessionExpired, Timeout, TxnFailed, Unauthenticated,
                         Unavailable, ValueTooLarge)

_LAZY = {
    "connect": "nuwa.client", "Nuwa": "nuwa.client", "AsyncNuwa": "nuwa.client",
    "Session": "nuwa.client", "SessionState": "nuwa.client",
    "Lock": "nuwa.recipes", "Election": "nuwa.recipes", "Barrier": "nuwa.recipes",
    "ServiceRegistry": "nuwa.recipes", "FencingToken": "nuwa.recipes",
}

__all__ = [
    *_LAZY,
    "NuwaError", "BadRequest", "BadPath", "LimitExceeded", "ValueTooLarge", "QuotaExceeded",
    "NodeExists", "NoNode", "NotEmpty", "BadVersion", "NotADirectory", "IsADirectory",
    "NoSession", "TxnFailed", "Compacted", "CorruptSnapshot", "NotLeader", "Unavailable",
    "Timeout", "OutcomeUnknown", "SessionExpired", "LockLost", "Unauthenticated", "Denied",
]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nuwa' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

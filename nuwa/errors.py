"""The one exception tree of Nuwa, documented in one place.

    NuwaError
    ├── BadRequest            the caller asked for something invalid; retrying will not help
    │   ├── BadPath           path syntax (relative, '//', '.', '..', control chars, too long,
    │   │                     a directory path where a file is expected or the reverse)
    │   ├── LimitExceeded     a named limit (children per directory, txn ops, sessions, ...)
    │   │   ├── ValueTooLarge a value over VALUE_BYTES_MAX (never truncated)
    │   │   └── QuotaExceeded a per-user limit (sessions, watches, ephemerals, requests in
    │   │                     flight, connections) that `user` has reached
    │   ├── NodeExists        create of a path that exists (or exists as the other kind)
    │   ├── NoNode            the path (or the parent directory of a create) does not exist
    │   ├── NotEmpty          delete of a non-empty directory without recursive=True
    │   ├── BadVersion        expected_version / check version did not match
    │   ├── NotADirectory     a directory path names something that is a file
    │   ├── IsADirectory      a file path names something that is a directory
    │   ├── NoSession         an ephemeral create or session_close names no live session
    │   └── TxnFailed         op `index` of a txn failed with `error`; nothing was applied
    ├── Compacted             watch history before `oldest_revision` was dropped: re-read state
    ├── CorruptSnapshot       Tree.restore was given bytes that are not a valid snapshot
    ├── NotLeader             ask `leader_hint` (may be None) instead           [retryable]
    ├── Unavailable           no quorum / overloaded / stopping; try later       [retryable]
    ├── Timeout               no answer in time (a read; for a write see OutcomeUnknown)
    ├── OutcomeUnknown        a write whose result could not be learned: it may or may not
    │                         have happened; retry only if the write is idempotent
    └── SessionExpired        the session is gone and its ephemeral nodes with it

Errors cross the wire as small dicts (``to_dict`` / ``error_from_dict``), never as pickles:
``{"type": "NoNode", "message": "...", "path": "/a"}``. Pickling an error (Ray does so when
an actor method raises) goes through the same dict, so the fields survive.
"""

from __future__ import annotations

from base import errors as base_errors

from typing import Any

__all__ = [
    "NuwaError", "BadRequest", "BadPath", "LimitExceeded", "ValueTooLarge", "NodeExists",
    "NoNode", "NotEmpty", "BadVersion", "NotADirectory", "IsADirectory", "NoSession",
    "TxnFailed", "Compacted", "CorruptSnapshot", "NotLeader", "Unavailable", "Timeout",
    "OutcomeUnknown", "SessionExpired", "LockLost", "QuotaExceeded", "Unauthenticated",
    "Denied", "error_from_dict",
]


class NuwaError(base_errors.PlatformError):
    """Base of every Nuwa error. `fields` names the extra attributes carried on the wire."""

    fields: tuple[str, ...] = ()
    # True when the same request can simply be sent again (to another replica, or later)
    # without any risk of applying it twice.
    retryable: bool = False

    def __init__(self, message: str, **kwargs: Any):
        super().__init__(message)
        self.message = message
        unknown = set(kwargs) - set(self.fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown fields {sorted(unknown)}; "
                            f"expected some of {list(self.fields)}")
        for name in self.fields:
            setattr(self, name, kwargs.get(name))

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        extra = "".join(f", {n}={getattr(self, n)!r}" for n in self.fields)
        return f"{type(self).__name__}({self.message!r}{extra})"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"type": type(self).__name__, "message": self.message}
        for name in self.fields:
            d[name] = getattr(self, name)
        return d

    def __reduce__(self):
        return (error_from_dict, (self.to_dict(),))


class BadRequest(NuwaError, base_errors.BadInput):
    """The request is invalid for the current state; the message says what was given and
    what was expected. Deterministic: every replica refuses it the same way."""


class BadPath(BadRequest):
    fields = ("path",)


class LimitExceeded(BadRequest, base_errors.LimitExceeded):
    """A named limit was hit; `limit` is the constant's name, `limit_value` its value."""
    fields = ("limit", "limit_value")


class ValueTooLarge(LimitExceeded):
    fields = ("limit", "limit_value", "path", "value_bytes")


class QuotaExceeded(LimitExceeded):
    """User `user` holds as much of something as one user may (`limit`, `limit_value`);
    other users are not affected. Release some (close sessions, cancel watches) first."""
    fields = ("limit", "limit_value", "user")


class NodeExists(BadRequest, base_errors.Conflict):
    fields = ("path",)


class NoNode(BadRequest, base_errors.NotFound):
    fields = ("path",)


class NotEmpty(BadRequest):
    fields = ("path",)


class BadVersion(BadRequest, base_errors.Conflict):
    fields = ("path", "expected_version", "actual_version")


class NotADirectory(BadRequest):
    fields = ("path",)


class IsADirectory(BadRequest):
    fields = ("path",)


class NoSession(BadRequest):
    fields = ("session",)


class TxnFailed(BadRequest):
    """Op number `index` (0-based) of a txn failed with `error` (a NuwaError); the txn as a
    whole applied nothing."""
    fields = ("index", "error")

    def to_dict(self) -> dict:
        d = super().to_dict()
        if isinstance(self.error, NuwaError):
            d["error"] = self.error.to_dict()
        return d


class Compacted(NuwaError):
    """Events after `oldest_revision` are still available, older ones are not. A watcher
    must re-read the state it cares about, then watch from the revision of that read."""
    fields = ("oldest_revision",)


class CorruptSnapshot(NuwaError):
    pass


class NotLeader(NuwaError, base_errors.Unavailable):
    fields = ("leader_hint",)
    retryable = True


class Unavailable(NuwaError, base_errors.Unavailable):
    retryable = True


class Timeout(NuwaError, base_errors.Unavailable):
    pass


class OutcomeUnknown(NuwaError, base_errors.OutcomeUnknown):
    pass


class SessionExpired(NuwaError):
    fields = ("session",)


class LockLost(SessionExpired):
    """A recipe (lock, election, barrier, registration) lost what it held because its session
    ended (expired, or not confirmed within its TTL): stop acting as its owner at once."""


class Unauthenticated(NuwaError, base_errors.Unauthenticated):
    """No token, or one that is malformed, forged, expired or of another cluster (Zhongkui)."""


class Denied(NuwaError, base_errors.Denied):
    """A signed-in caller without the permission the operation needs (Zhongkui)."""


def _all_error_classes() -> dict[str, type[NuwaError]]:
    found: dict[str, type[NuwaError]] = {}
    todo: list[type[NuwaError]] = [NuwaError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


_ERROR_TYPES = _all_error_classes()


def error_from_dict(d: Any) -> NuwaError:
    """Rebuild an error from `to_dict()` output. Never raises: an unknown type (a newer peer)
    becomes a plain NuwaError with the same message; unknown fields are dropped."""
    if not isinstance(d, dict):
        return NuwaError(f"malformed error {d!r}; expected a dict with 'type' and 'message'")
    cls = _ERROR_TYPES.get(str(d.get("type")), NuwaError)
    message = d.get("message")
    if not isinstance(message, str):
        message = repr(message)
    kwargs = {name: d.get(name) for name in cls.fields}
    if cls is TxnFailed and isinstance(kwargs.get("error"), dict):
        kwargs["error"] = error_from_dict(kwargs["error"])
    return cls(message, **kwargs)

"""Zhongkui's typed errors. Messages never contain a token, a password or a key."""

from __future__ import annotations

from base import errors as base_errors


class ZhongkuiError(base_errors.PlatformError):
    """Base of every Zhongkui error."""


class BadCredentials(ZhongkuiError, base_errors.Unauthenticated):
    """No token, or a token that is malformed, forged, expired or signed by an unknown key;
    or a wrong user name or password. Says which, never echoes the secret."""


class Malformed(BadCredentials):
    pass


class BadSignature(BadCredentials):
    pass


class Expired(BadCredentials):
    pass


class UnknownKey(BadCredentials):
    pass


class Revoked(BadCredentials):
    """A token that verified but no longer counts: its user was removed (or removed and
    re-created), or the key that signed it was revoked (``fuxi rotate-keys --revoke-old``)."""


class UnknownUser(Revoked, UnknownKey):
    """The token's user (or this generation of the account) is not in the identities this
    guard knows: removed -- or added since its last poll, so the guard asks again first
    (an UnknownKey too: callers that fetch on an unknown key go the asking path)."""


class Denied(ZhongkuiError, base_errors.Denied):
    """An authenticated caller without the permission asked for."""


class BadInput(ZhongkuiError, base_errors.BadInput, ValueError):
    """A bad user name, group, password, permission or ACL entry."""

"""Kuafu's typed errors; each says what was wrong and what was expected.

On the wire an ERROR frame carries ``code`` (the class name below), ``msg`` and, for
``RemoteError``, the remote exception's type and traceback; ``ex`` says whether the request
may have run (``maybe_executed``)."""

from __future__ import annotations

from base import errors as base_errors


class KuafuError(base_errors.PlatformError):
    """Base of every Kuafu error."""

    code = "KuafuError"
    maybe_executed = False

    def to_header(self) -> dict:
        return {"code": self.code, "msg": str(self), "ex": int(bool(self.maybe_executed))}


class FrameError(KuafuError, base_errors.BadInput, ValueError):
    """Bytes that are not a valid Kuafu frame: the connection that sent them is closed."""

    code = "FrameError"


class TooLarge(FrameError, base_errors.LimitExceeded):
    """A frame, header or message over its named limit."""

    code = "TooLarge"


class BadRequest(KuafuError, base_errors.BadInput, ValueError):
    """A well-formed frame asking for something invalid: an unknown service or method, a bad
    header field, a message of the wrong type. Never executed."""

    code = "BadRequest"


class Overloaded(KuafuError, base_errors.Unavailable):
    """A flow-control window or queue is full and the caller asked not to wait (or the queue
    in front of a service is at its bound). Never executed: safe to retry later."""

    code = "Overloaded"


class Unavailable(KuafuError, base_errors.Unavailable):
    """No endpoint could take the call, or the connection carrying it was lost.
    ``maybe_executed`` is False when the request certainly did not reach a server (safe to
    retry) and True when it was sent and its outcome is unknown."""

    code = "Unavailable"

    def __init__(self, msg: str = "", maybe_executed: bool = False, no_resend: bool = False):
        super().__init__(msg)
        self.maybe_executed = maybe_executed
        # The server declared the method never idempotent: not even a caller who says the
        # call is idempotent resends it (``nr`` on the wire).
        self.no_resend = no_resend

    def to_header(self) -> dict:
        h = super().to_header()
        if self.no_resend:
            h["nr"] = 1
        return h


class UnavailableInFlight(Unavailable, base_errors.OutcomeUnknown):
    """The connection or the endpoint was lost with the call in flight: it may have run
    (``maybe_executed`` is True). On the wire it is an ``Unavailable`` with ``ex`` set; as a
    type it is an ``OutcomeUnknown``, so callers test the type, never the flag alone."""

    def __init__(self, msg: str = "", no_resend: bool = False):
        super().__init__(msg, maybe_executed=True, no_resend=no_resend)


class TimedOut(KuafuError, base_errors.OutcomeUnknown, TimeoutError):
    """The deadline passed before a reply came. The outcome is unknown: the server may have
    run the request."""

    code = "TimedOut"
    maybe_executed = True


class Unauthenticated(KuafuError, base_errors.Unauthenticated):
    """No token, or one that is malformed, forged, expired or of another cluster (Zhongkui)."""

    code = "Unauthenticated"


class Denied(KuafuError, base_errors.Denied, PermissionError):
    """A signed-in caller without the permission the call needs (Zhongkui)."""

    code = "Denied"


class RemoteError(KuafuError, base_errors.Failed):
    """The service's method raised. ``remote_type`` is the exception's qualified type name
    and ``remote_traceback`` its formatted traceback on the server."""

    code = "RemoteError"
    maybe_executed = True

    def __init__(self, msg: str = "", remote_type: str = "", remote_traceback: str = ""):
        super().__init__(f"{remote_type}: {msg}" if remote_type else msg)
        self.remote_message = msg
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def to_header(self) -> dict:
        return {"code": self.code, "msg": self.remote_message, "rtype": self.remote_type,
                "tb": self.remote_traceback, "ex": 1}


CODES = {c.code: c for c in (KuafuError, FrameError, TooLarge, BadRequest, Overloaded,
                             Unauthenticated, Denied,
                             Unavailable, TimedOut, RemoteError)}


def error_from_header(h: dict) -> KuafuError:
    """The typed error an ERROR frame's header describes."""
    code = h.get("code")
    msg = str(h.get("msg", ""))
    cls = CODES.get(code if isinstance(code, str) else "", KuafuError)
    if cls is RemoteError:
        return RemoteError(msg, str(h.get("rtype", "")), str(h.get("tb", "")))
    if cls is Unavailable:
        if h.get("ex"):
            return UnavailableInFlight(msg, no_resend=bool(h.get("nr")))
        return Unavailable(msg)
    if cls is KuafuError and code != "KuafuError":
        return KuafuError(f"{code}: {msg}")
    return cls(msg)

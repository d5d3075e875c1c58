"""The one exception tree of the platform. Every package's errors derive from ``PlatformError``
and, where they mean one of the shared conditions below, from that class too — so a caller can
catch ``base.errors.Denied`` whichever layer refused, and nothing ever matches a message::

    PlatformError
    ├── BadInput            the caller sent something wrong                          exit 2
    │   └── LimitExceeded   a named limit (``*_max``, ``*_bytes_max``, ``*_s``) was exceeded
    ├── NotFound            the job, file, node, user or service named does not exist  exit 2
    ├── Conflict            it exists, is busy, or changed under the caller (versions)  exit 2
    ├── Unauthenticated     no credentials, or ones that do not verify               exit 3
    ├── Denied              authenticated, but without the permission                exit 3
    ├── Unavailable         the service cannot be reached or is not serving now      exit 3
    │   ├── ClusterError    the cluster could not be found, reached, started or stopped
    │   │   └── NoCluster   no running cluster where one was required
    │   └── OutcomeUnknown  a request was sent and may or may not have taken effect
    ├── Failed              the work ran and ended failed (a job, a remote handler)   exit 1
    └── WaitTimedOut        a wait ran out before the work ended (it goes on)        exit 4

Exit codes (the contract for scripts, docs/cli.md): 0 success, 1 the job or call failed (or
anything else that went wrong), 2 the caller's input was wrong (fix the command), 3 the
platform is unavailable or refused (no cluster, unreachable, auth denied: fix the setup or
retry), 4 a wait timed out (the work goes on), 130 interrupted by Ctrl-C.

The base classes derive from no builtin exception, so an ``except OSError`` or ``except
ValueError`` around I/O never swallows one of ours by accident; a package adds a builtin base
where its users expect one (Pangu's ``NotFound`` is a ``FileNotFoundError``, as fsspec wants).

The CLI maps this tree to exit codes in one place (``exit_code``). Ray's own exceptions
become these in one place too (``base.actors.translate``).
"""

from __future__ import annotations


class PlatformError(Exception):
    """Base of every error the platform raises on purpose."""


class BadInput(PlatformError):
    """The caller gave something wrong; the message says what was given and what was expected."""


class LimitExceeded(BadInput):
    """A named limit was exceeded; the message names the limit, its value and what was asked."""


class NotFound(PlatformError):
    """The job, node, file, user or service named does not exist."""


class Conflict(PlatformError):
    """It exists already, or it changed under the caller (a version or an owner differs)."""


class Unauthenticated(PlatformError):
    """No credentials, or credentials that are malformed, forged, expired or revoked."""


class Denied(PlatformError):
    """An authenticated caller without the permission asked for."""


class Unavailable(PlatformError):
    """The service is unreachable, has no leader, or is not serving right now; retrying later
    may succeed. Nothing was done (else it would be ``OutcomeUnknown``)."""


class ClusterError(Unavailable):
    """The cluster could not be found, reached, started or stopped."""


class NoCluster(ClusterError):
    """No running cluster was found where one was required."""


class OutcomeUnknown(Unavailable):
    """The request was sent but no answer came: it may or may not have taken effect. Read back
    before retrying anything that is not idempotent."""


class Failed(PlatformError):
    """The work ran and ended failed (a job, a remote handler)."""


class WaitTimedOut(PlatformError):
    """A wait (``fuxi job wait --timeout``, ``--wait``) ran out before the work ended; the
    work goes on. ``status`` is the last one read."""

    def __init__(self, message: str, status: dict | None = None):
        self.status = status or {}
        super().__init__(message)


# Most specific first: the first class an error is an instance of decides its code.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3  # no cluster, unreachable, not serving, or auth refused
EXIT_TIMEOUT = 4  # `--wait`/`fuxi job wait --timeout` ran out; the work goes on
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (BadInput, EXIT_BAD_INPUT),
    (NotFound, EXIT_BAD_INPUT),
    (Conflict, EXIT_BAD_INPUT),
    (Unauthenticated, EXIT_UNAVAILABLE),
    (Denied, EXIT_UNAVAILABLE),
    (Unavailable, EXIT_UNAVAILABLE),
    (Failed, EXIT_FAILED),
    (WaitTimedOut, EXIT_TIMEOUT),
    (PlatformError, EXIT_FAILED),
    (KeyboardInterrupt, EXIT_INTERRUPTED),
)


def exit_code(e: BaseException) -> int:
    """The CLI's exit code for an error: one table for every command."""
    for cls, code in EXIT_CODES:
        if isinstance(e, cls):
            return code
    return EXIT_FAILED

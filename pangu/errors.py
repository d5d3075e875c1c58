"""Pangu's errors: each says what was wrong and what was expected. The root derives from
``base.errors.PlatformError`` and each shared condition from its base class."""

from __future__ import annotations

from base import errors as base_errors


class PanguError(base_errors.PlatformError):
    """Base of every Pangu error."""


class BadPath(PanguError, base_errors.BadInput, ValueError):
    pass


class NotFound(PanguError, base_errors.NotFound, FileNotFoundError):
    pass


class Exists(PanguError, base_errors.Conflict, FileExistsError):
    pass


class NotADir(PanguError, base_errors.Conflict, NotADirectoryError):
    pass


class IsADir(PanguError, base_errors.Conflict, IsADirectoryError):
    pass


class NotEmpty(PanguError, base_errors.Conflict, OSError):
    pass


class BadRequest(PanguError, base_errors.BadInput, ValueError):
    pass


class ChecksumError(PanguError, IOError):
    """A block of a chunk replica does not match its checksum: read another replica."""

    def __init__(self, message: str, chunk: str | None = None, block: int | None = None):
        super().__init__(message)
        self.chunk, self.block = chunk, block

    def __reduce__(self):
        return (type(self), (str(self), self.chunk, self.block))


class NoSpace(PanguError, OSError):
    pass


class DiskFailed(PanguError, OSError):
    """A disk refused a write or an fdatasync (``errno``: EIO, ENOSPC, ...) under the master's
    journal or a chunk replica. After a failed fdatasync nothing written to that file since
    its last good sync is trusted (never fsync again and believe it): the component stops
    writing there until it restarts."""


class DiskFull(DiskFailed, NoSpace):
    """ENOSPC: the disk is full. Writes are refused until space returns; nothing is lost."""


class NotEnoughServers(PanguError):
    """Placement could not find enough distinct, live nodes with room."""


class Busy(PanguError, base_errors.Conflict):
    """The file is open for writing by another client (one writer per file)."""


class StaleReplica(PanguError):
    """A chunk replica is at an older version than asked for: it missed writes."""


class LeaseExpired(PanguError):
    """The chunk's primary holds no valid lease for this write: ask the master again."""


class ReplicaWriteFailed(PanguError):
    """Some replicas did not take a write; the master marks them stale and the writer retries."""

    def __init__(self, message: str, failed: list | None = None):
        super().__init__(message)
        self.failed = list(failed or [])

    def __reduce__(self):
        return (type(self), (str(self), self.failed))


class NotActive(PanguError, base_errors.Unavailable):
    """This master is a standby (or was deposed): ask the active master."""


class Unavailable(PanguError, base_errors.Unavailable):
    """No master or no replica could be reached within the time allowed."""


class Unauthenticated(PanguError, base_errors.Unauthenticated, PermissionError):
    """No token, or a token (or chunk access token) that is malformed, forged, expired, of
    another cluster, or for another chunk (Zhongkui)."""


class Denied(PanguError, base_errors.Denied, PermissionError):
    """A signed-in caller without the permission the operation needs (Zhongkui)."""


class StaleFencingToken(PanguError, base_errors.Denied, PermissionError):
    """A write carried a fencing token (a Nuwa lock path and its token) older than the newest
    this file system has seen for that lock: its holder lost the lock (issue 14, defect 16)."""

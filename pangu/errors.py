"""Pangu's errors: each says what was wrong and what was expected."""

from __future__ import annotations


class PanguError(Exception):
    """Base of every Pangu error."""


class BadPath(PanguError, ValueError):
    pass


class NotFound(PanguError, FileNotFoundError):
    pass


class Exists(PanguError, FileExistsError):
    pass


class NotADir(PanguError, NotADirectoryError):
    pass


class IsADir(PanguError, IsADirectoryError):
    pass


class NotEmpty(PanguError, OSError):
    pass


class BadRequest(PanguError, ValueError):
    pass


class ChecksumError(PanguError, IOError):
    """A block of a chunk replica does not match its checksum: read another replica."""

    def __init__(self, message: str, chunk: str | None = None, block: int | None = None):
        super().__init__(message)
        self.chunk, self.block = chunk, block


class NoSpace(PanguError, OSError):
    pass


class NotEnoughServers(PanguError):
    """Placement could not find enough distinct, live nodes with room."""

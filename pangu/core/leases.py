"""Lease bookkeeping of the Pangu master: a pure module. Time comes in as ``now`` (seconds of
the master's monotonic clock); nothing here reads a clock or talks to a chunkserver.

Two kinds of lease:

* A writer's lease on a file (``FileLease``): one writer per file. Every call the writer makes
  renews it; while it lasts another writer gets ``Busy`` -- unless that one holds a newer
  fencing token of the same lock as the holder: the holder lost the lock, so it is replaced
  and its chunk leases end (``take_file`` reports the takeover).
* A primary's lease on a chunk (``ChunkLease``): who is primary of which chunk, over which
  replica set, at which version, for which writer, until when. The master hands the same
  lease out again while it is current (same version, writer and replicas, and not about to
  end); otherwise it grants a new one, after raising the chunk's version.

A lease naming a server that died, a file that was deleted, or a chunk that was freed is
dropped (``drop_server``, ``drop_under``, ``drop_chunks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from pangu.core import paths as P
from pangu.errors import Busy, NotFound

LEASE_REUSE_MARGIN_S = 1.0  # a chunk lease ending sooner than this is not handed out again

Fence = tuple[str, int]  # (lock path, fencing token)


@dataclass(frozen=True)
class FileLease:
    writer: str
    until: float
    fence: Fence | None = None  # the token the writer opened the file with


@dataclass(frozen=True)
class ChunkLease:
    primary: str
    replicas: tuple[str, ...]  # server ids, the primary among them
    version: int
    writer: str
    until: float


@dataclass(frozen=True)
class Takeover:
    """A writer with a newer fencing token of the same lock replaced the file's writer."""
    path: str
    old_writer: str
    old_token: int
    new_token: int
    lock: str


def choose_primary(replicas: Iterable[str], used_bytes: Mapping[str, int]) -> str:
    """The least used replica (then the smallest id) leads the writes of a chunk."""
    return min(replicas, key=lambda s: (used_bytes[s], s))


class Leases:
    def __init__(self) -> None:
        self.files: dict[str, FileLease] = {}  # path -> its writer's lease
        self.chunks: dict[str, ChunkLease] = {}  # chunk id -> its primary's lease

    def clear(self) -> None:
        """A master that just became active honours no lease of a previous term."""
        self.files.clear()
        self.chunks.clear()

    # ------------------------------------------------------------ file leases
    def take_file(self, path: str, writer: str, now: float, lease_s: float, *,
                  fence: Fence | None = None, take: bool = False,
                  exists: bool = True) -> Takeover | None:
        """Take (``take``: the writer opens the file) or renew ``writer``'s lease on ``path``
        until ``now + lease_s``. Raises Busy while another writer's lease lasts (unless
        ``fence`` is a newer token of the lock it holds), NotFound when renewing a lease on a
        file that no longer ``exists``. A writer renewing keeps the token it opened with."""
        held = self.files.get(path)
        replaced = None
        if held is not None and held.writer != writer and held.until > now:
            old = held.fence
            if fence is not None and old is not None and old[0] == fence[0] \
                    and old[1] < fence[1]:
                replaced = Takeover(path, held.writer, old[1], fence[1], old[0])
                self.drop_writer_chunks(held.writer)
            else:
                raise Busy(f"{path} is open for writing by another client (its lease ends in "
                           f"{held.until - now:.0f}s unless renewed); one writer per file")
        if held is None and not take and not exists:
            raise NotFound(f"{path} no longer exists (deleted or moved while open)")
        if fence is None and held is not None and held.writer == writer:
            fence = held.fence
        self.files[path] = FileLease(writer, now + lease_s, fence)
        return replaced

    def writer_of(self, path: str) -> str | None:
        held = self.files.get(path)
        return held.writer if held is not None else None

    def release_file(self, path: str, writer: str | None = None) -> None:
        """End the lease on ``path`` (only ``writer``'s, if given)."""
        if writer is None or self.writer_of(path) == writer:
            self.files.pop(path, None)

    def close(self, path: str, writer: str) -> None:
        """The writer closed the file: its file lease and its chunk leases end."""
        self.release_file(path, writer)
        self.drop_writer_chunks(writer)

    def drop_under(self, path: str) -> None:
        """``path`` was deleted: leases on it and on files under it end."""
        for fp in [f for f in self.files if P.is_under(f, path)]:
            del self.files[fp]

    # ------------------------------------------------------------ chunk leases
    def reusable(self, cid: str, version: int, writer: str, replicas: Iterable[str],
                 now: float) -> ChunkLease | None:
        """The chunk's lease if it can be handed out again as it is: same version, writer
        and replica set, and not ending within LEASE_REUSE_MARGIN_S."""
        lease = self.chunks.get(cid)
        if (lease is not None and lease.version == version
                and lease.until > now + LEASE_REUSE_MARGIN_S and lease.writer == writer
                and set(lease.replicas) == set(replicas)):
            return lease
        return None

    def grant(self, cid: str, primary: str, replicas: Iterable[str], version: int,
              writer: str, until: float) -> ChunkLease:
        lease = ChunkLease(primary, tuple(replicas), version, writer, until)
        self.chunks[cid] = lease
        return lease

    def leased(self, now: float) -> set[str]:
        """Chunks whose lease still runs: a writer may be writing them."""
        return {cid for cid, lease in self.chunks.items() if lease.until > now}

    def drop_chunks(self, cids: Iterable[str]) -> None:
        for cid in cids:
            self.chunks.pop(cid, None)

    def drop_writer_chunks(self, writer: str) -> None:
        for cid in [c for c, lease in self.chunks.items() if lease.writer == writer]:
            del self.chunks[cid]

    def drop_server(self, server: str) -> None:
        """``server`` died: no lease over a replica set that includes it survives."""
        for cid in [c for c, lease in self.chunks.items() if server in lease.replicas]:
            del self.chunks[cid]

"""The Raft log: ``MemoryStorage`` (what is durable) plus the unstable tail (what is not yet).

Layout of indexes, as in etcd-io/raft::

    storage:  [snapshot .. compacted] (first_index ........ last_index]
    unstable:                                     [offset ....... ]   (may overwrite a suffix)
    RaftLog:  applied <= applying <= committed <= last_index

``MemoryStorage`` only changes when the caller (the shell, or the simulator) persists a Ready:
``append`` the Ready's entries, ``set_hard_state``, ``apply_snapshot``; later
``create_snapshot`` + ``compact`` after it has snapshotted its state machine. At restart the
shell refills a fresh ``MemoryStorage`` from its WAL and hands it to a new ``RaftNode``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from nuwa.core.raft_types import (
    EMPTY_HARD_STATE,
    EMPTY_SNAPSHOT,
    Entry,
    EntryUnavailable,
    HardState,
    LogCompacted,
    Snapshot,
)

__all__ = ["MemoryStorage", "RaftLog"]


def _limit_bytes(entries: list[Entry], bytes_max: int | None) -> list[Entry]:
    """Longest prefix within ``bytes_max`` (counting data only), but always at least one."""
    if bytes_max is None or not entries:
        return entries
    size = 0
    for i, e in enumerate(entries):
        size += len(e.data)
        if size > bytes_max and i > 0:
            return entries[:i]
    return entries


class MemoryStorage:
    """The persisted part of one replica's Raft state, mirrored in memory.

    Entries are kept from ``first_index()`` to ``last_index()``; everything up to
    ``snapshot().index`` may be compacted away. ``_base`` is the (index, term) of the entry just
    before the first kept one (etcd's dummy entry).
    """

    def __init__(self) -> None:
        self._hard_state = EMPTY_HARD_STATE
        self._snapshot = EMPTY_SNAPSHOT
        self._base_index = 0
        self._base_term = 0
        self._entries: list[Entry] = []

    # ---------------------------------------------------------------- queries
    def hard_state(self) -> HardState:
        return self._hard_state

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def first_index(self) -> int:
        return self._base_index + 1

    def last_index(self) -> int:
        return self._base_index + len(self._entries)

    def term(self, index: int) -> int:
        if index < self._base_index:
            raise LogCompacted(f"index {index} is compacted (first index {self.first_index()})")
        if index == self._base_index:
            return self._base_term
        if index > self.last_index():
            raise EntryUnavailable(f"index {index} is beyond last index {self.last_index()}")
        return self._entries[index - self._base_index - 1].term

    def entries(self, lo: int, hi: int, bytes_max: int | None = None) -> list[Entry]:
        """Entries [lo, hi), at most ``bytes_max`` of data (but at least one)."""
        if lo <= self._base_index:
            raise LogCompacted(f"index {lo} is compacted (first index {self.first_index()})")
        if hi > self.last_index() + 1:
            raise EntryUnavailable(f"entries up to {hi - 1} requested, last index "
                                   f"{self.last_index()}")
        out = self._entries[lo - self._base_index - 1:hi - self._base_index - 1]
        return _limit_bytes(out, bytes_max)

    # ---------------------------------------------------------------- updates
    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = hs

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries, replacing any suffix they conflict with. Entries at or below the
        compaction point are skipped (they are already covered by the snapshot)."""
        entries = [e for e in entries if e.index > self._base_index]
        if not entries:
            return
        first = entries[0].index
        for prev, e in zip(entries, entries[1:]):
            if e.index != prev.index + 1:
                raise ValueError(f"entries not contiguous: {prev.index} then {e.index}")
        if first > self.last_index() + 1:
            raise ValueError(f"gap: appending at {first} after last index {self.last_index()}")
        del self._entries[first - self._base_index - 1:]
        self._entries.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace everything with ``snap`` (a follower installing the leader's snapshot, or
        the shell restoring its latest snapshot at restart)."""
        if snap.index < self._snapshot.index:
            raise ValueError(f"snapshot at {snap.index} is older than the one stored "
                             f"({self._snapshot.index})")
        self._snapshot = snap
        self._base_index, self._base_term = snap.index, snap.term
        self._entries = []
        if self._hard_state.commit < snap.index:
            self._hard_state = HardState(self._hard_state.term, self._hard_state.vote, snap.index)

    def create_snapshot(self, index: int, data: bytes, voters: Iterable[int],
                        learners: Iterable[int] = ()) -> Snapshot:
        """Record the state machine image ``data`` taken after applying ``index``."""
        if index < self._snapshot.index:
            raise ValueError(f"snapshot at {index} is older than the one stored "
                             f"({self._snapshot.index})")
        if index > self.last_index():
            raise ValueError(f"snapshot at {index} is beyond last index {self.last_index()}")
        self._snapshot = Snapshot(index, self.term(index), tuple(voters), bytes(data),
                                  tuple(learners))
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to ``index``, which a snapshot must already cover."""
        if index <= self._base_index:
            return
        if index > self._snapshot.index:
            raise ValueError(f"compact({index}) beyond the latest snapshot "
                             f"({self._snapshot.index}): create_snapshot first")
        term = self.term(index)
        del self._entries[:index - self._base_index]
        self._base_index, self._base_term = index, term


class _Unstable:
    """Entries (and possibly a snapshot) the node has accepted but the caller has not yet
    persisted. ``entries[i].index == offset + i``."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.entries: list[Entry] = []
        self.snapshot: Snapshot | None = None

    def term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.index == index:
                return self.snapshot.term
            return None
        if index - self.offset < len(self.entries):
            return self.entries[index - self.offset].term
        return None

    def last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.index
        return None

    def truncate_and_append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif first <= self.offset:
            # Replaces everything unstable and possibly a suffix of storage: the caller's
            # MemoryStorage.append truncates that suffix when it persists these.
            self.offset = first
            self.entries = list(entries)
        else:
            self.entries = self.entries[:first - self.offset] + list(entries)

    def stable_to(self, index: int, term: int) -> None:
        if self.term(index) == term and index >= self.offset:
            del self.entries[:index + 1 - self.offset]
            self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.index == index:
            self.snapshot = None

    def restore(self, snap: Snapshot) -> None:
        self.offset = snap.index + 1
        self.entries = []
        self.snapshot = snap


class RaftLog:
    """Storage plus the unstable tail, with the commit and apply cursors."""

    def __init__(self, storage: MemoryStorage, applied: int = 0) -> None:
        self.storage = storage
        self.unstable = _Unstable(storage.last_index() + 1)
        first = storage.first_index()
        self.committed = max(storage.hard_state().commit, first - 1)
        self.applied = min(max(applied, first - 1), self.committed)
        self.applying = self.applied  # handed out in a Ready, not yet advanced

    # ---------------------------------------------------------------- indexes
    def first_index(self) -> int:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        last = self.unstable.last_index()
        return last if last is not None else self.storage.last_index()

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted or beyond the end."""
        if index < self.first_index() - 1 or index > self.last_index():
            return None
        t = self.unstable.term(index)
        if t is not None:
            return t
        if index >= self.unstable.offset:
            return None
        try:
            return self.storage.term(index)
        except (LogCompacted, EntryUnavailable):
            return None

    def last_term(self) -> int:
        t = self.term(self.last_index())
        assert t is not None, "the last entry's term is always known"
        return t

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a candidate's log is at least as up-to-date as ours."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    # ---------------------------------------------------------------- reading
    def slice(self, lo: int, hi: int, bytes_max: int | None = None) -> list[Entry] | None:
        """Entries [lo, hi); None if ``lo`` is compacted (send a snapshot instead)."""
        if lo < self.first_index():
            return None
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return []
        out: list[Entry] = []
        off = self.unstable.offset
        if lo < off:
            try:
                out = self.storage.entries(lo, min(hi, off), bytes_max)
            except LogCompacted:
                return None
            if len(out) < min(hi, off) - lo:  # cut by bytes_max
                return out
        if hi > off:
            out = out + self.unstable.entries[max(lo, off) - off:hi - off]
        return _limit_bytes(out, bytes_max)

    def has_next_committed(self) -> bool:
        return self.committed > self.applying and self.unstable.snapshot is None

    def next_committed(self) -> list[Entry]:
        if not self.has_next_committed():
            return []
        return self.slice(self.applying + 1, self.committed + 1) or []

    # ---------------------------------------------------------------- writing
    def append(self, entries: list[Entry]) -> int:
        if entries:
            assert entries[0].index > self.committed, (
                f"would overwrite committed entry {entries[0].index} (commit {self.committed})")
            self.unstable.truncate_and_append(entries)
        return self.last_index()

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or conflicts with ours; 0 if none."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest (i, term(i)) with i <= index and term(i) <= term: the furthest point where
        our log may still agree with a log whose entry at ``index`` has ``term``."""
        index = min(index, self.last_index())
        while index > 0:
            t = self.term(index)
            if t is None:
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    def maybe_append(self, prev_index: int, prev_term: int, commit: int,
                     entries: Sequence[Entry]) -> int | None:
        """Follower side of AppendEntries. Returns the last new index, or None to reject."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                # A leader never sends entries conflicting with committed ones (§5.4); only
                # a lost or corrupted disk could lead here. Refuse rather than rewrite history.
                return None
            self.append(list(entries[conflict - prev_index - 1:]))
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            self.committed = min(index, self.last_index())

    def maybe_commit(self, index: int, term: int) -> bool:
        """Leader: commit up to ``index`` only if that entry is of the current ``term``."""
        if index > self.committed and self.term(index) == term:
            self.committed = index
            return True
        return False

    def restore(self, snap: Snapshot) -> None:
        self.committed = snap.index
        self.unstable.restore(snap)

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            self.applied = index
        self.applying = max(self.applying, self.applied)

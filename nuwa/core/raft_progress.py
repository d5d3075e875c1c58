"""The leader's view of each follower: how far it matches, what to send next, flow control.

States (etcd-io/raft's tracker)::

    PROBE ──(append accepted)──> REPLICATE ──(append rejected)──> PROBE
      │  ^                                                           │
      │  └────────(snapshot acknowledged / resend timer)── SNAPSHOT <┘ (needed entries compacted)

* PROBE: one append in flight at a time, until the follower answers (or a heartbeat answer
  says it is alive); used to find where the logs agree.
* REPLICATE: optimistic pipelining, at most ``inflight_appends_max`` appends in flight.
* SNAPSHOT: the follower needs a snapshot; nothing else is sent until it acknowledges one,
  or ``snapshot_resend_ticks`` pass (the snapshot message may have been lost).
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = ("match", "next", "state", "probe_sent", "inflights", "inflight_appends_max",
                 "pending_snapshot", "snapshot_elapsed_ticks", "recent_active")

    def __init__(self, next_index: int, inflight_appends_max: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflights: deque[int] = deque()  # last index of each append in flight
        self.inflight_appends_max = inflight_appends_max
        self.pending_snapshot = 0
        self.snapshot_elapsed_ticks = 0
        self.recent_active = False

    def __repr__(self) -> str:
        return (f"Progress(match={self.match}, next={self.next}, {self.state.value}, "
                f"inflight={len(self.inflights)}, probe_sent={self.probe_sent})")

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.clear()

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.snapshot_elapsed_ticks = 0
        self.probe_sent = False
        self.inflights.clear()

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflights) >= self.inflight_appends_max
        return True

    def sent_append(self, last_index: int, has_entries: bool) -> None:
        """An append ending at ``last_index`` was sent (maybe empty: a probe, or a commit)."""
        if self.state is ProgressState.REPLICATE:
            if has_entries:
                self.next = last_index + 1
                self.inflights.append(last_index)
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged ``index``. False if the ack is stale."""
        updated = False
        if index > self.match:
            self.match = index
            self.probe_sent = False
            updated = True
        self.next = max(self.next, index + 1)
        while self.inflights and self.inflights[0] <= index:
            self.inflights.popleft()
        return updated

    def maybe_decrease_to(self, rejected: int, hint: int) -> bool:
        """The follower rejected an append whose preceding index was ``rejected``; ``hint`` is
        where to probe next. False if the rejection is stale (duplicate or reordered)."""
        if self.state is ProgressState.REPLICATE:
            # rejected == match is possible only if the follower lost its disk (or the
            # rejection is an old duplicate); probing again from match sorts out both.
            if rejected < self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), 1)
        if self.next <= self.match:
            # The follower has less than it once acknowledged: it lost its disk. Forget what
            # it acknowledged (the commit index never moves back, so this is safe).
            self.match = self.next - 1
        self.probe_sent = False
        return True

"""Session expiry: the leader's timers, as a pure table (time passed in).

Sessions are timed by the leader, like etcd leases. The namespace tree
(``nuwa.core.tree``) holds which sessions are open and what they own; closing one deletes
its ephemerals. This table holds *when* each one expires, and only the leader acts on it:

* a keep-alive renews a session's deadline to at least its TTL from now;
* a session whose deadline has passed is *due*: the leader proposes its
  ``session_close(reason="expired")``; once that proposal is taken the timer is dropped
  (``closing``), so a keep-alive arriving before the close commits is refused -- the client
  must not count on a session that is about to go. A proposal that Raft refused (nothing
  appended) puts the timer back (``close_refused``) and the close is tried again next tick;
* a new leader gives every open session a full TTL (``lead``): a keep-alive may have gone to
  the old leader, and no replica knows the old leader's deadlines;
* the table follows the log on every replica (``opened``, ``closed``), so a follower that
  becomes leader knows which sessions exist.

Time is the leader's own ticks (``now``), never wall time: the shell ticks at least
``tick_s`` of monotonic time apart (ticks only run late), so a deadline of
``now + ceil(ttl_s / tick_s) + 1`` ticks leaves a session at least its TTL after its last
keep-alive, and a jump of any clock changes nothing.

States of one session's timer::

    (none) --opened/lead/renew--> TIMED --now > deadline--> DUE --closing--> (none)
                                    ^                                         |
                                    +------------- close_refused -------------+
"""

from __future__ import annotations

import math
from typing import Iterable


class SessionTimers:
    """Deadlines (in ticks) of the open sessions, kept by the leader. Not thread-safe."""

    def __init__(self, tick_s: float) -> None:
        if not tick_s > 0:
            raise ValueError(f"tick_s must be > 0, got {tick_s}")
        self.tick_s = tick_s
        self.deadlines: dict[int, int] = {}  # session -> tick after which it expires
        self.leading = False  # the timers run (this replica leads, and gave each a full TTL)

    def __len__(self) -> int:
        return len(self.deadlines)

    def deadline(self, ttl_s: float, now: int) -> int:
        """The tick after which a session renewed at tick ``now`` expires: at least ``ttl_s``
        later, since a tick never comes sooner than ``tick_s`` after the last."""
        return now + math.ceil(float(ttl_s) / self.tick_s) + 1

    # ---------------------------------------------------------------- the log, on every replica
    def opened(self, session: int, ttl_s: float, now: int) -> None:
        """A ``session_open`` was applied."""
        self.deadlines[session] = self.deadline(ttl_s, now)

    def closed(self, session: int) -> None:
        """A ``session_close`` was applied (expired, or closed by its client)."""
        self.deadlines.pop(session, None)

    # ---------------------------------------------------------------- leadership
    def lead(self, sessions: Iterable[tuple[int, float]], now: int) -> None:
        """This replica became leader: every open session (id, ttl_s) gets a full TTL."""
        self.deadlines = {sid: self.deadline(ttl_s, now) for sid, ttl_s in sessions}
        self.leading = True

    def follow(self) -> None:
        """This replica no longer leads: its timers stop (the next leader starts its own)."""
        self.leading = False

    # ---------------------------------------------------------------- the leader's duties
    def due(self, now: int) -> list[tuple[int, int]]:
        """(session, deadline) of every session past its deadline at tick ``now``: the leader
        proposes their close. Empty unless leading."""
        if not self.leading:
            return []
        return [(sid, d) for sid, d in self.deadlines.items() if now > d]

    def closing(self, session: int) -> None:
        """The close of ``session`` was proposed: its timer is gone (keep-alives are refused)."""
        self.deadlines.pop(session, None)

    def close_refused(self, session: int, deadline: int) -> None:
        """Raft refused the close (nothing appended): due again at the next tick, if this
        replica still leads and nothing renewed or closed the session meanwhile."""
        if self.leading:
            self.deadlines.setdefault(session, deadline)

    def keep_alive(self, session: int, ttl_s: float, now: int) -> bool:
        """A keep-alive of open ``session`` at tick ``now``. False when it has expired (past its
        deadline, or its close already proposed): the client must be told so. Else the
        deadline is renewed. Before the timers run (a new leader before its first tick, which
        gives every session a full TTL anyway) it is only renewed."""
        if self.leading:
            deadline = self.deadlines.get(session)
            if deadline is None or now > deadline:
                return False
        self.deadlines[session] = self.deadline(ttl_s, now)
        return True

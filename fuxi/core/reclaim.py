"""When a quota group's guarantee is reclaimed by force.

A queue's guaranteed minimum is lent out while its owner is idle. When the owner's jobs come
back, the borrowers' fair-share targets drop at once and their JobMasters hand slots back as
workers go idle — a reclaim that costs no work. A borrower whose workers never go idle (long
attempts) would keep the owner waiting for as long as its attempts run, so the guarantee
would be a wish. As YARN's capacity scheduler does (``max_wait_before_kill``), a demand that
has waited within its guarantee for ``RECLAIM_GRACE_S`` makes FuxiMaster's next syncs say
``preempt``: the jobs above their targets stop their excess workers at once (their running
attempts go back to the ready queue, not counted as failures).

    clock = ReclaimClock()
    due = clock.due(plan.reclaim_wait, now)   # plan: fuxi.core.slots.GrantPlan

Pure: the caller passes the time.
"""

from __future__ import annotations

from typing import Iterable

RECLAIM_GRACE_S = 10.0  # an owner waits this long for borrowers to give back idly
RECLAIM_GRACE_S_MAX = 3600.0


class ReclaimClock:
    """Since when each demand has waited for slots within its group's guarantee. Entries live
    only while their demand waits, so it holds at most as many as there are demands."""

    def __init__(self, grace_s: float = RECLAIM_GRACE_S):
        if isinstance(grace_s, bool) or not isinstance(grace_s, (int, float)) or \
                not 0.0 <= grace_s <= RECLAIM_GRACE_S_MAX:
            raise ValueError(f"grace_s={grace_s!r}: expected seconds between 0 and "
                             f"RECLAIM_GRACE_S_MAX={RECLAIM_GRACE_S_MAX}")
        self.grace_s = float(grace_s)
        self.since: dict[str, float] = {}
        self.forced = 0  # syncs that said preempt because of a guarantee

    def due(self, waiting: Iterable[str], now: float) -> str | None:
        """``waiting``: the demand ids the last plan saw waiting within their guarantee (the
        whole cluster's, as every plan sees every demand). Returns the reason to preempt —
        naming the demand that waited longest — or None."""
        waiting = set(waiting)
        for did in [d for d in self.since if d not in waiting]:
            del self.since[did]
        for did in waiting:
            self.since.setdefault(did, now)
        if not self.since:
            return None
        did, t0 = min(self.since.items(), key=lambda kv: (kv[1], kv[0]))
        if now - t0 < self.grace_s:
            return None
        self.forced += 1
        return (f"preempted: {did} waited {now - t0:.1f} s (RECLAIM_GRACE_S={self.grace_s:g}) "
                f"for slots within its queue's guarantee")

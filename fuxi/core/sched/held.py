"""Slots a demand holds, given back or kept: the half of the protocol a JobMaster's heartbeat
carries (a mixin of ``scheduler.Scheduler``, which owns the state it changes).

    release(demand, node, n, done)          n slots of one demand on one node back
    release_many(demand, {node: n}, done)   one delta for many nodes (one heartbeat's ends)
    reuse(demand, node, n, now) -> k        n slots whose instances finished: the core
                                            decides how many (k) the demand keeps for its
                                            next waiting instances; the rest go back

``reuse`` is Fuxi's slot reuse: a JobMaster whose instance ends hands the slot to its own
next instance without the slot going through the free index and back. It is a decision of
the core, not of the JobMaster: a slot is kept only when the demand would be the one to get
it anyway, by the core's own order (``scheduler``'s module doc) against every waiting queue
top whose shape fits on that node once the slot is free (guarantee tier, effective priority
with ageing, borrowing share, max-min by job) or that may make room (within its guarantee,
which may reclaim; any, when priority preemption is on), never on a node the demand excludes or
avoids, never above what the demand waits for, and off its preferred places only for the
instances that prefer none. When any waiting demand deserves the slot more, nothing is
kept and the slot is released as usual, so the normal ``decide`` gives it to the better one.
A kept slot counts as a decision (``decisions``) and restarts its place in the preemption
order (it is the most recently started).

Pure: no clocks, no I/O.
"""

from __future__ import annotations

import heapq
from typing import Mapping

from fuxi.core.sched.quota import borrow_share, guaranteed, under_max
from fuxi.core.sched.resources import fit_count, give, take
from fuxi.errors import BadInput

SHARE = "share"  # the key of a group's borrowing share among the scheduler's cached facts


def consume(prefs: dict[str, int], place: str, n: int = 1) -> int:
    """Take up to ``n`` off the preference for ``place``; returns how many were taken."""
    have = prefs.get(place, 0)
    if have > n:
        prefs[place] = have - n
        return n
    if have:
        del prefs[place]
    return have


class HeldSlots:
    """Releasing and reusing held slots (mixed into ``Scheduler``)."""

    def release(self, demand_id: str, node_id: str, n: int = 1, done: bool = False) -> None:
        """Give back ``n`` slots of one demand on one node in one delta (the most recently
        started first). ``done``: their work is finished, so the demand also wants ``n`` fewer
        (``ask(-n)`` and the release as one call, what a JobMaster sends when instances end)."""
        d = self._demand(demand_id)
        self._check_release(d, node_id, n, done, n)
        if n == 0:
            return
        self._release_on(d, node_id, n)
        self._released(d, n if done else 0)

    def release_many(self, demand_id: str, counts: Mapping[str, int], done: bool = False) -> None:
        """``release`` on many nodes as one delta (``counts[node]`` slots on each): what one
        heartbeat of a JobMaster carries. All or nothing: bad input changes nothing."""
        d = self._demand(demand_id)
        if not isinstance(counts, Mapping):
            raise BadInput(f"release_many {demand_id!r}: counts={counts!r}: expected a mapping "
                           f"of node id to a slot count")
        total = 0
        for node_id, n in counts.items():
            total += n if isinstance(n, int) and not isinstance(n, bool) else 0
        for node_id, n in counts.items():
            self._check_release(d, node_id, n, done, total)
        if total == 0:
            return
        for node_id, n in counts.items():
            if n:
                self._release_on(d, node_id, n)
        self._released(d, total if done else 0)

    def reuse(self, demand_id: str, node_id: str, n: int = 1, now: float = 0.0) -> int:
        """``n`` slots of the demand on ``node_id`` finished their instances (as
        ``release(..., done=True)``); returns how many of them (0..n) the demand keeps for
        its next waiting instances, by the rule of the module doc. The others are released."""
        d = self._demand(demand_id)
        self._check_release(d, node_id, n, True, n)
        if n == 0:
            return 0
        self._advance(now)
        k = self._keepable(d, node_id, n)
        if k < n:
            self._release_on(d, node_id, n - k)
        if k:
            stack = self._slots[(demand_id, node_id)]
            for _ in range(k):  # restarted: the most recent in the preemption order
                self._live.pop(stack.pop(), None)
            self._stamp(d, node_id, k)
            if node_id in d.prefer_nodes:
                d.pref_total -= consume(d.prefer_nodes, node_id, k)
            elif d.prefer_racks:
                d.pref_total -= consume(d.prefer_racks, self.index.nodes[node_id].rack, k)
            d.waiting_since, d.boost = now, 0  # served: its age starts again
            self.decisions += k
            self.reused += k
        self._released(d, n)
        if k and d.pending > 0:
            self._age_later(d)
        return k

    # ------------------------------------------------------------ the parts

    def _check_release(self, d, node_id: str, n, done: bool, total: int) -> None:
        have = d.held.get(node_id, 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n > have:
            raise BadInput(f"release {n!r} slots of {d.did!r} on {node_id!r}: {have} held; "
                           f"expected an integer from 0 to {have}")
        if done and d.wanted < total:
            raise BadInput(f"release {total} done slots of {d.did!r}: it wants {d.wanted} "
                           f"in all; expected done only for slots it still wants")

    def _release_on(self, d, node_id: str, n: int) -> None:
        """The slots and the node's room back (checked by the caller)."""
        stack = self._slots[(d.did, node_id)]
        for _ in range(n):
            self._live.pop(stack.pop(), None)  # the most recently started go first
        if not stack:
            del self._slots[(d.did, node_id)]
        left = d.held[node_id] - n
        if left:
            d.held[node_id] = left
        else:
            del d.held[node_id]
        d.held_total -= n
        self.job_held[d.job] -= n
        take(self.group_used[d.group], d.needs, n)
        node = self.index.nodes.get(node_id)
        if node is not None:
            give(node.free, d.needs, n)
            node.workers -= n
            node.fits.clear()
            self.index.grew(node)  # clears the full mark of every shape that fits there now

    def _released(self, d, done: int) -> None:
        """After one delta's releases: the caches, ``done`` fewer wanted, the job re-filed."""
        self._group_facts.pop(d.group, None)
        if self._quota_full:
            self._quota_full = {q for q in self._quota_full if q[0] != d.group}
        if done:  # after the release, so a demand that still waits keeps its preferences
            d.wanted -= done  # fewer wanted never starts a wait: no ageing to file
            if d.wanted <= d.held_total:
                d.prefer_nodes.clear()
                d.prefer_racks.clear()
                d.pref_total = 0
        for did in self.job_demands.get(d.job, ()):  # the job's keys got better
            other = self.demands[did]
            if other.parked is None:
                self._push(other)

    def _keepable(self, d, node_id: str, n: int) -> int:
        """How many of ``n`` finished slots of ``d`` on ``node_id`` it deserves to keep."""
        node = self.index.nodes.get(node_id)
        k = min(n, d.pending)  # pending counts the n as held: what waits besides them
        if (k <= 0 or node is None or d.parked is not None or node_id in d.avoid
                or node_id in d.excluded or node_id in self.excluded_nodes):
            return 0
        if node_id in d.prefer_nodes:
            k = min(k, d.prefer_nodes[node_id])
        elif d.prefer_racks and node.rack in d.prefer_racks:
            k = min(k, d.prefer_racks[node.rack])
        else:  # off its places: only for instances that prefer none
            k = min(k, d.pending - d.pref_total)
        group = self.groups[d.group]
        used = dict(self.group_used[d.group])
        take(used, d.needs, n)  # the group as if the n went back
        if k <= 0 or not under_max(group, used, d.needs):
            return 0
        tier = 0 if group.min and guaranteed(group, used, d.needs) else 1
        prio = -(d.priority + d.boost)
        job_held = self.job_held[d.job] - n
        mine = (tier, prio, borrow_share(group, used, self.index.capacity),
                (prio, job_held, d.held_total - n, d.seq, d.did))
        free = dict(node.free)
        give(free, d.needs, n)
        room = self.index.workers_max - node.workers + n
        best = None
        preempting = self.config.preempt_priority_gap is not None
        for q, heap in self._queues.items():
            if not heap or q in self._quota_full:
                continue
            r = self._top(heap)
            if r is d:  # its own queue: the runner-up behind it
                entry = heapq.heappop(heap)
                r = self._top(heap)
                heapq.heappush(heap, entry)
            if r is None or node_id in r.excluded:
                continue
            rg = self.groups[r.group]
            if r.group == d.group:
                if not under_max(rg, used, r.needs):
                    continue
                within = bool(rg.min) and guaranteed(rg, used, r.needs)
                share = mine[2]
            else:
                if not under_max(rg, self.group_used[r.group], r.needs):
                    continue
                within, share = self._facts_of(r.group, r.sh)
            rkey = self.key(r)
            if r.job == d.job:  # the job's count as if the n went back
                rkey = (rkey[0], job_held) + rkey[2:]
            theirs = (0 if within else 1, rkey[0], share, rkey)
            fits = fit_count(free, r.needs, room) > 0
            if theirs < mine and (fits or theirs[0] == 0 or preempting):
                return 0  # someone deserves the slot more (or may make room): it goes back
            if fits and (best is None or theirs < best[0]):
                best = (theirs, r)
        if best is not None and best[0][:2] == mine[:2] and k > 1:  # max-min, as batch_slots
            theirs, r = best
            if r.job == d.job:
                k = min(k, r.held_total - (d.held_total - n) + 1)
            else:
                k = min(k, theirs[3][1] - job_held + 1)
        return max(0, k)

    def _facts_of(self, name: str, sh) -> tuple[bool, float]:
        """A group's cached facts (as ``_pick`` keeps them): whether its next slot of
        ``sh``'s shape (a ``ShapeIndex``, the facts' key) is guaranteed, and its borrowing
        share."""
        facts = self._group_facts.get(name)
        if facts is None:
            facts = self._group_facts[name] = {}
        within = facts.get(sh)
        if within is None:
            group = self.groups[name]
            within = facts[sh] = bool(group.min) and guaranteed(group, self.group_used[name],
                                                                sh.needs)
        share = facts.get(SHARE)
        if share is None:
            share = facts[SHARE] = borrow_share(self.groups[name], self.group_used[name],
                                                self.index.capacity)
        return within, share

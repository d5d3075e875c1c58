"""The incremental scheduler: one long-lived state, changed by deltas, deciding one grant
(of one slot, or batched of many of one demand on one node: ``batch``) at a time in O(log N).

Deltas in (each O(log N) or better, never a scan of all nodes or slots):
    add_node / remove_node / exclude_node     the cluster changes
    set_demand / ask / ask_at / set_wanted / remove_demand   a job asks for more (or fewer)
                                               slots, optionally at nodes or a rack (locality)
    release                                    a job gives slots back (done: wants fewer too)
    load_grant                                 rebuild from a ledger (after a restart)
Decisions out:
    decide(now, slots_max) -> (Grant | None, [Revocation])    the next grant, and what it revoked
    schedule(now) -> Plan                          decide until nothing more fits
    schedule_job(job, now, caps) -> Plan           one job's grants, capped (FuxiMaster's sync)
    targets() -> {demand_id: slots}                fair shares (see ``fairshare``)

Which demand goes next: the quota group whose next slot is within its guarantee first
(tier 0), then by effective priority (priority plus ageing), then the group borrowing least
for its weight (idle quota lent in proportion), then the job holding fewest slots (max-min
fairness), then the demand holding fewest, then submit order. Where: the free index
(``index``).

Demands wait in one lazy heap per (quota group, shape). A shape that fits on no node marks
its heaps full until a node gets room for it; a group at its max marks its heaps full until
the group releases a slot; so a saturated cluster costs nothing per decision but a scan of
those few heaps. A demand that fits somewhere, but not where it may go (its exclusions), is
parked alone until the next ``schedule``.
When a demand within its group's guarantee fits nowhere, borrowed running slots of other
groups are revoked (reclaim): least important first, most recently started first, on one
node until the slot fits. "Within the guarantee" and "borrowed" are one rule seen from both
sides (``quota.guaranteed`` / ``quota.borrowed``), so a slot reclaim grants can never be
reclaimed back by its victim's group: with nothing released, a pass of reclaims ends. With ``preempt_priority_gap`` set, a demand may also revoke slots of
priority at least that much lower. The core applies its own decisions to its state at once
(so the next one sees them); the shell re-checks each grant against its ledger and releases
here any it did not apply.

Pure: no clocks (``now`` is passed in), no randomness, no I/O.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from typing import Collection, Mapping

from fuxi.core.sched import fairshare
from fuxi.core.sched.index import DEFAULT_RACK, FreeIndex
from fuxi.core.sched.model import (
    LOCALITY_CLUSTER,
    LOCALITY_NODE,
    LOCALITY_RACK,
    PREFERRED_PLACES_MAX,
    DemandSpec,
    Grant,
    Plan,
    Revocation,
    SchedConfig,
    quota_groups,
)
from fuxi.core.sched.batch import batch_slots
from fuxi.core.sched.held import SHARE, HeldSlots, consume
from fuxi.core.sched.quota import borrow_share, borrowed, guaranteed, under_max
from fuxi.core.sched.resources import check_resources, fit_count, give, needs_of, take
from fuxi.errors import BadInput, LimitExceeded

# Slots granted (anywhere) before a queue whose making room failed tries again: new slots are
# new victims. Bounds the cost of a guarantee that cannot be met (say, GPUs that no borrower
# holds) to one bounded victim scan per this many grants. At least the scan's own length
# (``reclaim_victims_max``) is waited: the scan reads the least important, most recent slots
# first, so a retry after fewer new grants mostly re-reads victims it has just turned down
# (at 5,000 nodes a retry every 64 grants made failed GPU reclaims a third of decide's time).
ROOM_RETRY_GRANTS = 64
VICTIM_SLACK = 64  # released slots the victim lists may keep beyond twice the live ones
PARK_RETRY = "retry"  # fits somewhere, but not where this demand may go: next schedule()


class _Demand:
    __slots__ = ("spec", "did", "job", "group", "priority", "seq", "needs", "sh", "wanted",
                 "held", "held_total", "prefer_nodes", "prefer_racks", "avoid", "excluded",
                 "waiting_since", "boost", "version", "parked", "wait_stamp", "pref_total",
                 "queue")

    def __init__(self, spec: DemandSpec, sh, now: float):
        self.spec = spec
        self.did = spec.demand_id
        self.job = spec.job_id
        self.group = spec.quota_group
        self.priority = spec.priority
        self.seq = spec.submit_seq
        self.needs = sh.needs
        self.sh = sh
        self.wanted = 0
        self.held: dict[str, int] = {}
        self.held_total = 0
        self.prefer_nodes: dict[str, int] = {}
        self.prefer_racks: dict[str, int] = {}
        self.avoid: frozenset = frozenset()
        self.excluded: frozenset = frozenset()
        self.waiting_since = now
        self.boost = 0
        self.version = 0
        self.parked: str | None = None
        self.wait_stamp = 0
        self.pref_total = 0  # the counts of prefer_nodes and prefer_racks, summed
        self.queue: list | None = None  # its (group, shape) queue, once filed (None: look up)

    @property
    def pending(self) -> int:
        return self.wanted - self.held_total


class Scheduler(HeldSlots):
    def __init__(self, config: SchedConfig = SchedConfig()):
        self.config = config
        self.index = FreeIndex(config.workers_per_node_max, config.spread_probes_max)
        self.groups = quota_groups(config.quota_groups)
        self.group_used: dict[str, dict[str, float]] = {g: {} for g in self.groups}
        self._queues: dict[tuple, list] = {}  # (group, needs) -> heap of (key, version)
        # Queue entries' versions, unique in the scheduler: a demand removed and set again
        # under its id starts afresh, and with versions counted per demand its new version
        # could equal an old entry's in another (group, shape) queue, which then passed for
        # current and was re-filed there (found by tests/unit/test_sched_index_props.py)
        self._versions = itertools.count(1)
        # what _pick walks: per queue (key, heap, its ShapeIndex, group name, QuotaGroup),
        # so a pick hashes no (group, needs) tuple; rebuilt when a queue is made or the
        # index's shapes change (``shape_epoch``)
        self._qlist: list | None = None
        self._qlist_epoch = -1
        self._quota_full: set[tuple] = set()  # (group, needs) whose group is at its max
        # (group, needs) whose shape fits nowhere -> (the priority for which making room
        # failed, the slot count then): no demand of that priority or lower tries again until
        # ROOM_RETRY_GRANTS more slots were granted (new victims) or a node was added
        self._room_failed: dict[tuple, tuple[int, int]] = {}
        self._retry: set[str] = set()
        self._room_retry = max(ROOM_RETRY_GRANTS, config.reclaim_victims_max)
        self.demands: dict[str, _Demand] = {}
        self.job_held: dict[str, int] = {}
        self.job_demands: dict[str, set[str]] = {}
        self.excluded_nodes: set[str] = set()  # cluster-level hard exclusion
        self._slot_seq = 0
        self._slots: dict[tuple[str, str], list[int]] = {}  # (demand, node) -> start seqs
        self._live: dict[int, tuple[str, str]] = {}  # start seq -> (demand, node)
        # The preemption order without a heap: priority -> start seqs in the order started
        # (seqs only grow, so appending keeps each list sorted). Least important first is the
        # lowest priority; most recently started first is the list read from its end. A reclaim
        # reads it in place, where a heap had it pop and push back every slot it looked at.
        # Released slots stay until the lists hold twice the live ones (then compacted).
        self._victims: dict[int, list[int]] = {}
        self._victim_prios: list[int] = []  # the keys of _victims, ascending
        self._victim_entries = 0
        self._ageing: list = []  # (due time, demand id, wait stamp)
        # the second most deserving queue top of the last pick (its order key): how far a
        # batched grant may go before someone else deserves the next slot more
        self._runner: tuple | None = None
        # per quota group, what _pick asks of it while its usage stays the same: its
        # borrowing share (key SHARE) and, per shape, whether the next slot is guaranteed.
        # Dropped whenever the group's usage (or the cluster's capacity) changes.
        self._group_facts: dict[str, dict] = {}
        self.decisions = 0  # slots granted, kept slots (``reuse``) included
        self.reused = 0  # of those, slots a demand kept for its next instance
        self.revoked = 0

    # ------------------------------------------------------------ the cluster

    def add_node(self, node_id: str, total: Mapping[str, float], rack: str = DEFAULT_RACK) -> None:
        if node_id in self.index.nodes:
            raise BadInput(f"node {node_id!r} is known already; remove it first to change it")
        self.index.add_node(node_id, check_resources(f"node {node_id!r}", total), rack)
        self._room_failed.clear()
        self._group_facts.clear()  # the capacity changed: every borrowing share did

    def remove_node(self, node_id: str) -> list[Revocation]:
        """Forget a node; every slot on it is void (returned as ``node_gone`` revocations)."""
        if node_id not in self.index.nodes:
            return []
        out = []
        for d in list(self.demands.values()):
            n = d.held.get(node_id, 0)
            if n:
                self.release(d.did, node_id, n)
                out.append(Revocation(d.did, node_id, n, "node_gone"))
        self.index.remove_node(node_id)
        self._group_facts.clear()
        return out

    def exclude_node(self, node_id: str, excluded: bool = True) -> None:
        """Cluster-level hard exclusion (a blacklisted node gets no new slot of anyone)."""
        if excluded:
            self.excluded_nodes.add(node_id)
        else:
            self.excluded_nodes.discard(node_id)
            self._unpark_retry()

    def free(self, node_id: str) -> dict[str, float]:
        return dict(self.index.nodes[node_id].free)

    # ------------------------------------------------------------ demands

    def set_demand(self, spec: DemandSpec, wanted: int | None = None, now: float = 0.0) -> None:
        """Create or update a demand (priority, group and preferences may change; its shape may
        not while it holds slots)."""
        if spec.quota_group not in self.groups:
            raise BadInput(f"demand {spec.demand_id!r}: quota group {spec.quota_group!r} is not "
                           f"configured; expected one of {sorted(self.groups)}")
        d = self.demands.get(spec.demand_id)
        needs = needs_of(spec.shape)
        if d is not None and (d.needs != needs or d.job != spec.job_id) and d.held_total:
            raise BadInput(f"demand {spec.demand_id!r} holds {d.held_total} slots as job "
                           f"{d.job!r} shape {dict(d.needs)!r}; got job {spec.job_id!r} shape "
                           f"{dict(needs)!r}: a changed demand needs a new id")
        if d is not None and (d.needs != needs or d.job != spec.job_id):
            self.remove_demand(spec.demand_id)
            d = None
        if d is None:
            sh = self.index.shape(needs)
            sh.demands.add(spec.demand_id)
            d = self.demands[spec.demand_id] = _Demand(spec, sh, now)
            self.job_demands.setdefault(d.job, set()).add(d.did)
            self.job_held.setdefault(d.job, 0)
        elif d.group != spec.quota_group or d.priority != spec.priority or d.seq != spec.submit_seq:
            if d.held_total:
                take(self.group_used[d.group], d.needs, d.held_total)
                give(self.group_used[spec.quota_group], d.needs, d.held_total)
                self._group_facts.pop(d.group, None)
                self._group_facts.pop(spec.quota_group, None)
            self._unpark(d)
            d.spec, d.group, d.priority, d.seq = spec, spec.quota_group, spec.priority, spec.submit_seq
            d.queue = None  # its group may have changed: another queue
        if wanted is not None:
            self.set_wanted(spec.demand_id, wanted, now)
        else:
            self._push(d)

    def remove_demand(self, demand_id: str) -> dict[str, int]:
        """Forget a demand and release what it holds; returns node -> slots released."""
        d = self.demands.get(demand_id)
        if d is None:
            return {}
        released = dict(d.held)
        for node, n in released.items():
            self.release(demand_id, node, n)
        self._unpark(d)
        d.sh.demands.discard(demand_id)
        del self.demands[demand_id]
        jd = self.job_demands[d.job]
        jd.discard(demand_id)
        if not jd:
            del self.job_demands[d.job]
            del self.job_held[d.job]
        if not d.sh.demands:
            self.index.drop_shape(d.needs)
        return released

    def ask(self, demand_id: str, n: int = 1, now: float = 0.0, node: str | None = None,
            rack: str | None = None) -> None:
        """A delta: ``n`` more slots wanted (negative: fewer), optionally preferred on one node or
        one rack (the locality tree's node and rack levels; without either, anywhere)."""
        d = self._demand(demand_id)
        prefs = place = None
        if n > 0 and (node is not None or rack is not None):
            prefs, place = (d.prefer_nodes, node) if node is not None else (d.prefer_racks, rack)
            if place not in prefs and len(prefs) >= PREFERRED_PLACES_MAX:  # before any change
                raise LimitExceeded(f"demand {demand_id!r} prefers {len(prefs)} places already: "
                                    f"PREFERRED_PLACES_MAX is {PREFERRED_PLACES_MAX}; ask "
                                    f"without a place (nothing was changed)")
        self._set(d, d.wanted + n, now)
        if prefs is not None:
            prefs[place] = prefs.get(place, 0) + n
            d.pref_total += n

    def ask_at(self, demand_id: str, counts: Mapping[str, int], now: float = 0.0,
               anywhere: int = 0) -> None:
        """One delta for many slots: ``counts[node]`` more slots preferred on each node, plus
        ``anywhere`` more without a place (what a JobMaster asks when a task's instances
        start: one message, not one per instance). All or nothing: bad input changes nothing."""
        d = self._demand(demand_id)
        if not isinstance(counts, Mapping):
            raise BadInput(f"ask_at {demand_id!r}: counts={counts!r}: expected a mapping of "
                           f"node id to a slot count")
        if isinstance(anywhere, bool) or not isinstance(anywhere, int) or anywhere < 0:
            raise BadInput(f"ask_at {demand_id!r}: anywhere={anywhere!r}: expected an integer >= 0")
        prefs = d.prefer_nodes
        new = 0
        total = anywhere
        for node, n in counts.items():
            if not isinstance(node, str) or not node:
                raise BadInput(f"ask_at {demand_id!r}: node {node!r}: expected a non-empty string")
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise BadInput(f"ask_at {demand_id!r}: {n!r} slots on {node!r}: expected an "
                               f"integer > 0")
            total += n
            if node not in prefs:
                new += 1
        if len(prefs) + new > PREFERRED_PLACES_MAX:
            raise LimitExceeded(f"demand {demand_id!r} prefers {len(prefs)} places and asks for "
                                f"{new} more: PREFERRED_PLACES_MAX is {PREFERRED_PLACES_MAX}; "
                                f"ask for the rest without a place (nothing was changed)")
        self._set(d, d.wanted + total, now)
        placed = total - anywhere
        if placed:
            for node, n in counts.items():
                prefs[node] = prefs.get(node, 0) + n
            d.pref_total += placed

    def set_wanted(self, demand_id: str, wanted: int, now: float = 0.0) -> None:
        """The absolute form of ``ask``: ``wanted`` slots in all (held ones included)."""
        self._set(self._demand(demand_id), wanted, now)

    def set_avoid(self, demand_id: str, avoid: Collection[str] = (),
                  excluded: Collection[str] = ()) -> None:
        """Nodes this demand uses only when nothing else fits (``avoid``), or never."""
        d = self._demand(demand_id)
        d.avoid, d.excluded = frozenset(avoid), frozenset(excluded)
        if d.parked == PARK_RETRY:
            self._unpark(d)
            self._push(d)

    def _set(self, d: _Demand, wanted: int, now: float) -> None:
        if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 0:
            raise BadInput(f"demand {d.did!r}: wanted={wanted!r}: expected an integer >= 0")
        was = d.pending
        d.wanted = wanted
        if d.pending > 0 and was <= 0:
            d.waiting_since, d.boost = now, 0
            self._age_later(d)
        if d.pending <= 0:
            d.prefer_nodes.clear()
            d.prefer_racks.clear()
            d.pref_total = 0
        if d.parked is None:
            self._push(d)

    def _demand(self, demand_id: str) -> _Demand:
        d = self.demands.get(demand_id)
        if d is None:
            raise BadInput(f"unknown demand {demand_id!r}: set_demand() it first")
        return d

    def held(self, demand_id: str) -> dict[str, int]:
        d = self.demands.get(demand_id)
        return dict(d.held) if d else {}

    # ------------------------------------------------------------ grants held

    def load_grant(self, demand_id: str, node_id: str, n: int) -> None:
        """Record ``n`` slots held on ``node_id`` without a fit check (rebuilding from a ledger;
        a node that shrank below what it holds is overcommitted until slots are released)."""
        d = self._demand(demand_id)
        if node_id not in self.index.nodes:
            raise BadInput(f"load_grant of {demand_id!r} on unknown node {node_id!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise BadInput(f"load_grant of {demand_id!r} on {node_id!r}: n={n!r}: expected an "
                           f"integer >= 0")
        if n:
            self._record(d, node_id, n)

    def _record(self, d: _Demand, node_id: str, n: int = 1) -> None:
        node = self.index.nodes[node_id]
        take(node.free, d.needs, n)
        node.workers += n
        node.fits.clear()
        d.held[node_id] = d.held.get(node_id, 0) + n
        d.held_total += n
        self.job_held[d.job] += n
        give(self.group_used[d.group], d.needs, n)
        self._group_facts.pop(d.group, None)
        self._stamp(d, node_id, n)

    def _stamp(self, d: _Demand, node_id: str, n: int) -> None:
        """``n`` slots of ``d`` on ``node_id`` start now: their places in the preemption order."""
        where = (d.did, node_id)
        lst = self._victims.get(d.priority)
        if lst is None:
            lst = self._victims[d.priority] = []
            bisect.insort(self._victim_prios, d.priority)
        stack = self._slots.get(where)
        if stack is None:
            stack = self._slots[where] = []
        if n == 1:
            self._slot_seq += 1
            seq = self._slot_seq
            stack.append(seq)
            self._live[seq] = where
            lst.append(seq)
        else:
            seqs = range(self._slot_seq + 1, self._slot_seq + n + 1)
            self._slot_seq += n
            stack.extend(seqs)
            self._live.update(dict.fromkeys(seqs, where))
            lst.extend(seqs)
        self._victim_entries += n
        if self._victim_entries > 2 * len(self._live) + VICTIM_SLACK:
            self._compact_victims()

    def _compact_victims(self) -> None:
        live = self._live
        for prio in list(self._victims):
            kept = [seq for seq in self._victims[prio] if seq in live]
            if kept:
                self._victims[prio] = kept
            else:
                del self._victims[prio]
        self._victim_prios = sorted(self._victims)
        self._victim_entries = sum(len(v) for v in self._victims.values())

    def _victim_order(self):
        """The live slots in preemption order: (start seq, (demand id, node id))."""
        live = self._live
        for prio in self._victim_prios:
            lst = self._victims[prio]
            while lst and lst[-1] not in live:  # released at the end: gone for good
                lst.pop()
                self._victim_entries -= 1
            for i in range(len(lst) - 1, -1, -1):
                seq = lst[i]
                where = live.get(seq)
                if where is not None:
                    yield seq, where

    # ------------------------------------------------------------ decisions

    def schedule(self, now: float, decisions_max: int | None = None, slots_max: int = 1) -> Plan:
        """Decide until nothing more fits (or ``decisions_max`` grants): every demand of the
        cluster. ``slots_max``: as in ``decide``."""
        self._unpark_retry()
        grants: list[Grant] = []
        revs: list[Revocation] = []
        while decisions_max is None or len(grants) < decisions_max:
            g, r = self.decide(now, slots_max)
            revs.extend(r)
            if g is None:
                break
            grants.append(g)
        return Plan(tuple(grants), tuple(revs))

    def decide(self, now: float, slots_max: int = 1) -> tuple[Grant | None, list[Revocation]]:
        """The next grant: the most deserving demand (see the module doc), where it fits best,
        of up to ``slots_max`` slots on that one node (``batch_slots``: no more than fit there,
        than the demand waits for, than its place preference names, than its quota allows, and
        no more than keep it the most deserving; 1 is always allowed)."""
        if isinstance(slots_max, bool) or not isinstance(slots_max, int) or slots_max < 1:
            raise BadInput(f"decide slots_max={slots_max!r}: expected an integer >= 1")
        self._advance(now)
        while True:
            d = self._pick()
            if d is None:
                return None, []
            group = self.groups[d.group]
            if not under_max(group, self.group_used[d.group], d.needs):
                self._quota_full.add((d.group, d.needs))
                self._push(d)
                continue
            excluded = self._excluded_for(d)
            got = self.index.choose(d.sh, d.held, d.prefer_nodes, d.prefer_racks, d.avoid,
                                    excluded)
            revs: list[Revocation] = []
            if got is None:
                revs, node_id = self._make_room(d, excluded)
                if node_id is None:
                    if self.index.top_fit(d.sh) == 0:
                        d.sh.full = True  # until a node has room for the shape
                        self._room_failed[(d.group, d.needs)] = (d.priority, self._slot_seq)
                        self._push(d)
                    else:
                        self._park(d, PARK_RETRY)
                    continue
                got = (node_id, LOCALITY_CLUSTER)
            node_id, locality = got
            n = 1
            if slots_max > 1 and not revs:  # the runner-ups: other queues' and its own queue's
                mate = self._top(d.queue or self._queues[(d.group, d.needs)])
                n = batch_slots(self, d, node_id, locality, slots_max, self._runner,
                                mate and self.key(mate))
            self._grant(d, node_id, locality, now, n)
            return Grant(d.did, node_id, n, locality), revs

    def schedule_job(self, job_id: str, now: float, caps: Mapping[str, int]) -> Plan:
        """Grants for one job's demands only, each up to ``caps[demand_id]`` slots held (the
        fair target): what FuxiMaster's sync hands the job that called it."""
        grants: list[Grant] = []
        mine = sorted((self.demands[x] for x in self.job_demands.get(job_id, ())),
                      key=lambda d: (d.held_total, d.seq, d.did))
        for d in mine:
            want = min(caps.get(d.did, 0), d.wanted) - d.held_total
            excluded = self._excluded_for(d)
            while want > 0 and under_max(self.groups[d.group], self.group_used[d.group], d.needs):
                got = self.index.choose(d.sh, d.held, d.prefer_nodes, d.prefer_racks, d.avoid,
                                        excluded)
                if got is None:
                    break
                self._grant(d, got[0], got[1], now)
                grants.append(Grant(d.did, got[0], 1, got[1]))
                want -= 1
        return Plan(tuple(grants), ())

    def waits_within_guarantee(self, demand_id: str) -> bool:
        """The demand wants more than it holds and its next slot is within its group's
        guaranteed minimum (what a reclaim would give it)."""
        d = self.demands[demand_id]
        return d.wanted > d.held_total and guaranteed(
            self.groups[d.group], self.group_used[d.group], d.needs)

    def targets(self) -> dict[str, int]:
        """Each demand's fair share of the cluster as it is (see ``fairshare.targets``)."""
        return fairshare.targets(self)

    def _grant(self, d: _Demand, node_id: str, locality: str, now: float, n: int = 1) -> None:
        self._record(d, node_id, n)
        if locality == LOCALITY_NODE or node_id in d.prefer_nodes:
            d.pref_total -= consume(d.prefer_nodes, node_id, n)
        elif locality == LOCALITY_RACK or d.prefer_racks:
            d.pref_total -= consume(d.prefer_racks, self.index.nodes[node_id].rack, n)
        d.waiting_since, d.boost = now, 0  # served: its age starts again
        self.decisions += n
        if d.pending > 0:
            self._age_later(d)
            self._push(d)

    def _excluded_for(self, d: _Demand) -> Collection[str]:
        if not self.excluded_nodes:
            return d.excluded
        if not d.excluded:
            return self.excluded_nodes
        return self.excluded_nodes | d.excluded

    # ------------------------------------------------------------ the order of demands

    def key(self, d: _Demand) -> tuple:
        return (-(d.priority + d.boost), self.job_held[d.job], d.held_total, d.seq, d.did)

    def _push(self, d: _Demand) -> None:
        if d.pending <= 0 or d.parked is not None:
            return
        d.version = next(self._versions)
        q = d.queue
        if q is None:
            q = self._queues.get((d.group, d.needs))
            if q is None:
                q = self._queues[(d.group, d.needs)] = []
                self._qlist = None
            d.queue = q
        heapq.heappush(q, (self.key(d), d.version))

    def _top(self, heap: list) -> _Demand | None:
        """A queue's most deserving demand (stale heap entries dropped or re-filed)."""
        while heap:
            k, version = heap[0]
            d = self.demands.get(k[-1])
            if d is None or d.version != version or d.parked is not None or d.pending <= 0:
                heapq.heappop(heap)
                continue
            now_key = self.key(d)
            if now_key != k:
                heapq.heappop(heap)
                d.version = next(self._versions)
                heapq.heappush(heap, (now_key, d.version))
                continue
            return d
        return None

    def _queue_list(self) -> list:
        if self._qlist is None or self._qlist_epoch != self.index.shape_epoch:
            shapes = self.index.shapes
            self._qlist = [(q, heap, shapes.get(q[1]), q[0], self.groups[q[0]])
                           for q, heap in self._queues.items()]
            self._qlist_epoch = self.index.shape_epoch
        return self._qlist

    def _pick(self) -> _Demand | None:
        best, best_key, best_heap, runner = None, None, None, None
        group_facts, group_used = self._group_facts, self.group_used
        quota_full, room_failed = self._quota_full, self._room_failed
        demands, job_held = self.demands, self.job_held
        preempting = self.config.preempt_priority_gap is not None
        for q, heap, sh, name, group in self._queue_list():
            if not heap or sh is None or (quota_full and q in quota_full):
                continue
            full = sh.full
            if full and not preempting and not group.min:
                continue  # fits nowhere, and a group without a guarantee may not make room
            k, version = heap[0]  # the common case of _top inlined: the top is current
            d = demands.get(k[-1])
            if (d is None or d.version != version or d.parked is not None
                    or d.wanted <= d.held_total or k[0] != -(d.priority + d.boost)
                    or k[1] != job_held[d.job] or k[2] != d.held_total or k[3] != d.seq):
                d = self._top(heap)
                if d is None:
                    continue
                k = heap[0][0]
            if full and q in room_failed:
                prio, at = room_failed[q]
                if prio >= d.priority and self._slot_seq - at < self._room_retry:
                    continue
            facts = group_facts.get(name)
            if facts is None:
                facts = group_facts[name] = {}
            within = facts.get(sh)
            if within is None:
                within = facts[sh] = bool(group.min) and guaranteed(
                    group, group_used[name], sh.needs)
            if full and not preempting and not within:
                continue  # fits nowhere, and may not make room
            share = facts.get(SHARE)
            if share is None:
                share = facts[SHARE] = borrow_share(group, group_used[name],
                                                    self.index.capacity)
            gk = (0 if within else 1, k[0], share, k)
            if best_key is None or gk < best_key:
                runner = best_key
                best, best_key, best_heap = d, gk, heap
            elif runner is None or gk < runner:
                runner = gk
        self._runner = runner
        if best is not None:
            heapq.heappop(best_heap)  # it is the top (checked by _top)
            best.version = next(self._versions)  # re-filed if it still wants more
        return best

    def _park(self, d: _Demand, why: str) -> None:
        d.parked = why
        self._retry.add(d.did)

    def _unpark(self, d: _Demand) -> None:
        if d.parked is not None:
            self._retry.discard(d.did)
        d.parked = None

    def _unpark_retry(self) -> None:
        for did in list(self._retry):
            d = self.demands[did]
            self._unpark(d)
            self._push(d)

    # ------------------------------------------------------------ ageing

    def _age_later(self, d: _Demand) -> None:
        if d.boost >= self.config.ageing_boost_max:
            return
        d.wait_stamp += 1
        due = d.waiting_since + (d.boost + 1) * self.config.ageing_step_s
        heapq.heappush(self._ageing, (due, d.did, d.wait_stamp))

    def _advance(self, now: float) -> None:
        """Raise the priority of demands that have waited another ageing step by ``now``."""
        heap, step = self._ageing, self.config.ageing_step_s
        while heap and heap[0][0] <= now:
            _, did, stamp = heapq.heappop(heap)
            d = self.demands.get(did)
            if d is None or d.wait_stamp != stamp or d.pending <= 0:
                continue
            boost = int((now - d.waiting_since) // step)
            # (now - since) // step can round one below the step whose due time is ``now``
            # (since + 3 * step == now, yet the division gives 2.99..): the next due time
            # would again be ``now``, and this loop would never end
            while d.waiting_since + (boost + 1) * step <= now:
                boost += 1
            d.boost = min(self.config.ageing_boost_max, boost)
            self._age_later(d)
            if d.parked is None:
                self._push(d)

    def effective_priority(self, demand_id: str) -> int:
        d = self._demand(demand_id)
        return d.priority + d.boost

    # ------------------------------------------------------------ making room

    def _make_room(self, d: _Demand, excluded: Collection[str]) -> tuple[list[Revocation], str | None]:
        """Revoke running slots so that one slot of ``d`` fits on one node: reclaim for a group
        within its guarantee, or preemption by priority when configured. Victims: least
        important first, most recently started first; only borrowed slots (``quota.borrowed``:
        the group is above its guarantee in a resource the slot uses), so a slot within a
        group's guarantee is never taken. Returns the revocations and the node that now has
        room (or [], None)."""
        group = self.groups[d.group]
        reclaim = guaranteed(group, self.group_used[d.group], d.needs)
        gap = self.config.preempt_priority_gap
        if not reclaim and gap is None:
            return [], None
        freed: dict[str, list] = {}  # node -> [(start seq, victim demand)]
        room: dict[str, dict[str, float]] = {}  # node -> its free resources once those go
        used: dict[str, dict[str, float]] = {}  # the victims' groups as if revoked
        nodes, empty_fit, sh = self.index.nodes, self.index.empty_fit_sh, d.sh
        found = None
        looked = 0
        looked_max = self.config.reclaim_victims_max
        for seq, where in self._victim_order():
            if looked >= looked_max:
                break
            looked += 1
            v = self.demands[where[0]]
            if not reclaim and v.priority > d.priority - gap:
                break  # the heap is in priority order: nobody further is less important
            if (reclaim and v.group == d.group) or v.did == d.did or where[1] in excluded:
                continue
            vu = used.get(v.group)
            if vu is None:
                vu = used[v.group] = dict(self.group_used[v.group])
            if not borrowed(self.groups[v.group], vu, v.needs):
                continue  # within its own guarantee (see quota.borrowed)
            take(vu, v.needs)  # counted as revoked even where it makes no room (as before)
            node = nodes[where[1]]
            # free plus what goes never exceeds the total: no room when empty, no room at all
            if not empty_fit(node, sh):
                continue
            on = freed.setdefault(where[1], [])
            on.append((seq, v))
            r = room.get(where[1])
            if r is None:
                r = room[where[1]] = dict(node.free)
            give(r, v.needs)
            if fit_count(r, d.needs, self.index.workers_max - node.workers + len(on)) > 0:
                found = where[1]
                break
        if found is None:
            return [], None
        counts: dict[str, int] = {}
        for _, v in freed[found]:
            counts[v.did] = counts.get(v.did, 0) + 1
        revs = []
        reason = "reclaim" if reclaim else "priority"
        for did, n in counts.items():
            self.release(did, found, n)
            revs.append(Revocation(did, found, n, reason))
        self.revoked += sum(counts.values())
        return revs, found

    # ------------------------------------------------------------ checks

    def validate(self) -> None:
        """Raise AssertionError if the state is inconsistent (tests call it after each step)."""
        per_node: dict[str, dict[str, float]] = {n: {} for n in self.index.nodes}
        workers = {n: 0 for n in self.index.nodes}
        group_used: dict[str, dict[str, float]] = {g: {} for g in self.groups}
        for d in self.demands.values():
            assert d.held_total == sum(d.held.values()) and all(v > 0 for v in d.held.values())
            for node, n in d.held.items():
                give(per_node[node], d.needs, n)
                give(group_used[d.group], d.needs, n)
                workers[node] += n
                assert len(self._slots[(d.did, node)]) == n
        for node_id, node in self.index.nodes.items():
            expect = dict(node.total)
            give(expect, tuple((k, -v) for k, v in per_node[node_id].items()))
            for k in set(expect) | set(node.free):
                assert abs(expect.get(k, 0.0) - node.free.get(k, 0.0)) < 1e-6, (node_id, k)
            assert workers[node_id] == node.workers
        for g, u in group_used.items():
            for k in set(u) | set(self.group_used[g]):
                assert abs(u.get(k, 0.0) - self.group_used[g].get(k, 0.0)) < 1e-6, (g, k)
        for job, ds in self.job_demands.items():
            assert self.job_held[job] == sum(self.demands[x].held_total for x in ds)
        for node in self.index.nodes.values():  # the fit cache says what a fresh count says
            for sh, f in node.fits.items():
                assert f == self.index.fit(node, sh.needs), (node.node_id, sh.needs, f)
            for sh, f in node.empty_fits.items():
                assert f == self.index.empty_fit(node.total, sh.needs), (node.node_id, sh.needs)
        # the preemption order: every live slot once, by priority, then most recent first
        order = [seq for seq, _ in self._victim_order()]
        assert sorted(order) == sorted(self._live), "victim lists lost or repeated a slot"
        prio_of = {seq: p for p, lst in self._victims.items() for seq in lst}
        keys = [(prio_of[seq], -seq) for seq in order]
        assert keys == sorted(keys), "victim order is not (priority, most recent first)"
        assert self._victim_prios == sorted(self._victims)
        for g, facts in self._group_facts.items():  # the cached group facts are current
            group, used = self.groups[g], self.group_used[g]
            for key, v in facts.items():
                if key == SHARE:
                    assert v == borrow_share(group, used, self.index.capacity), (g, v)
                else:  # keyed by the shape's ShapeIndex
                    assert v == (bool(group.min) and guaranteed(group, used, key.needs)), (g, key)

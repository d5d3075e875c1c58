"""FuxiMaster's slot-granting policy: who gets how many slots, and where.

Vocabulary
    resources   a dict like ``{"CPU": 2.0, "memory": 8e9, "gpu_a": 1.0}``; a key
                missing from a dict means 0 of that resource.
    shape       the resources of one task instance, e.g. ``{"CPU": 1.0}``.
    slot        room for one instance of a shape on one node.
    demand      one job asking for up to ``slots_wanted`` slots of one shape; a
                job with several shapes has several demands, keyed by ``demand_id``.

Policy (:func:`fair_targets`)
    Priority classes are served strictly in order: a higher class gets all it
    wants that fits before a lower class gets anything. Inside a class, jobs
    share max-min fairly (water-filling: the next slot goes to the job holding
    the fewest slots so far). A slot counts only if one node has room for the
    whole shape, which is checked by simulating placement on a copy of the
    capacities (:func:`fair_assignment` returns that simulated placement).

Placement (:func:`place`)
    New slots of one demand are spread over nodes, so that losing one machine
    loses few of a job's instances.

Bookkeeping (:class:`Ledger`)
    What has been granted, by (demand_id, node_id); serialisable because it is
    hard state that FuxiMaster persists.

One sync (:func:`grant`, then :func:`apply_grants`)
    Nomad-style: :func:`grant` reads the node totals, the ledger and every
    demand (an immutable view) and returns a :class:`GrantPlan` as plain data —
    the new grants for one job, its fair-share targets (a job above its target
    returns slots: the revocation side) and whether an online replica waits for
    room. :func:`apply_grants` re-checks each grant against the ledger as it is
    then and commits what still fits. FuxiMaster's ``sync`` and the scheduler
    simulator (``tests/sim``) call exactly these two functions.

    Since issue 16, :func:`grant` is a thin adapter over the incremental
    scheduling core (``fuxi.core.sched``): it loads the nodes, the ledger and
    the demands into a :class:`~fuxi.core.sched.Scheduler`, takes its fluid
    fair-share targets and asks it for the job's grants (each decision
    O(log N) in the free index). :func:`fair_targets`, :func:`fair_assignment`
    and :func:`place` are the pre-issue-16 algorithm (one slot at a time,
    every node rescanned per slot), kept as the baseline that
    ``bench/bench_scheduler.py`` measures the core against.

Everything here is pure: no Ray, no I/O, no clocks.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Collection, Mapping, Sequence

from fuxi.core import sched
from fuxi.core.sched import RESOURCE_TOLERANCE, WORKERS_PER_NODE_MAX

__all__ = [
    "RESOURCE_TOLERANCE",
    "WORKERS_PER_NODE_MAX",
    "Demand",
    "Grant",
    "GrantPlan",
    "Ledger",
    "add",
    "apply_grants",
    "fair_assignment",
    "fair_targets",
    "fits",
    "grant",
    "place",
    "subtract",
]

# RESOURCE_TOLERANCE and WORKERS_PER_NODE_MAX live in the core (fuxi.core.sched.*) and are
# re-exported here.

Resources = Mapping[str, float]


# --------------------------------------------------------------------------- resources


def _check_amount(where: str, key: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}[{key!r}]={value!r}: expected a finite number >= 0")


def _needs(shape: Resources) -> dict[str, float]:
    """The parts of a shape that actually need something (values of 0 need nothing)."""
    return {k: float(v) for k, v in shape.items() if v > RESOURCE_TOLERANCE}


def fits(free: Resources, shape: Resources, n: int = 1) -> bool:
    """True if ``n`` slots of ``shape`` fit in ``free`` (one node's free resources)."""
    return all(free.get(k, 0.0) + RESOURCE_TOLERANCE >= v * n for k, v in _needs(shape).items())


def _snap(x: float) -> float:
    # Keep "exactly used up" at 0.0 rather than 1e-17, so equality checks and
    # printed states stay readable.
    return 0.0 if abs(x) <= RESOURCE_TOLERANCE else x


def subtract(free: Resources, shape: Resources, n: int = 1, *, allow_negative: bool = False) -> dict[str, float]:
    """``free - n * shape`` as a new dict.

    Raises ValueError if a resource would go below zero (beyond the tolerance):
    taking what is not there is a caller bug unless ``allow_negative`` says the
    caller is accounting for an over-committed node.
    """
    if n < 0:
        raise ValueError(f"n={n!r}: expected >= 0")
    out = {k: float(v) for k, v in free.items()}
    for k, v in shape.items():
        left = _snap(out.get(k, 0.0) - v * n)
        if left < 0 and not allow_negative:
            raise ValueError(
                f"cannot take {n} x {k}={v!r} from {k}={out.get(k, 0.0)!r}: would leave {left!r}, expected >= 0"
            )
        out[k] = left
    return out


def add(free: Resources, shape: Resources, n: int = 1) -> dict[str, float]:
    """``free + n * shape`` as a new dict."""
    if n < 0:
        raise ValueError(f"n={n!r}: expected >= 0")
    out = {k: float(v) for k, v in free.items()}
    for k, v in shape.items():
        out[k] = _snap(out.get(k, 0.0) + v * n)
    return out


def _scarcest_resource(shape: Resources, node_free: Mapping[str, Resources]) -> str | None:
    """The resource this shape needs the most of relative to what the nodes have.

    Raw values are not comparable across units (8e9 bytes vs 1 CPU), so "the
    shape's largest resource" is measured as a share of the free total.
    None for a shape that needs nothing.
    """
    needs = _needs(shape)
    if not needs:
        return None

    def share(k: str) -> float:
        total = sum(max(0.0, free.get(k, 0.0)) for free in node_free.values())
        return math.inf if total <= RESOURCE_TOLERANCE else needs[k] / total

    return max(sorted(needs), key=share)


# --------------------------------------------------------------------------- demands


@dataclass(frozen=True)
class Demand:
    """One job's request for up to ``slots_wanted`` slots of one shape."""

    demand_id: str  # e.g. "<job_id>/<shape key>"
    job_id: str
    priority: int  # higher is served first
    submit_seq: int  # earlier (smaller) first among equal priority
    shape: Mapping[str, float]
    slots_wanted: int
    quota_group: str = sched.DEFAULT_GROUP

    def __post_init__(self) -> None:
        if self.slots_wanted < 0:
            raise ValueError(f"Demand {self.demand_id!r}: slots_wanted={self.slots_wanted!r}, expected >= 0")
        for k, v in self.shape.items():
            _check_amount(f"Demand {self.demand_id!r} shape", k, v)
        # A private copy: the caller mutating its dict must not change a demand.
        object.__setattr__(self, "shape", dict(self.shape))


def fair_targets(node_totals: Mapping[str, Resources], demands: Sequence[Demand]) -> dict[str, int]:
    """Target slot count per demand_id (every demand_id present, possibly 0).

    ``node_totals`` is each node's *total* capacity: targets say what each
    demand should hold once the cluster is shared fairly, not what can be
    granted this instant.
    """
    plan = fair_assignment(node_totals, demands)
    return {d.demand_id: sum(plan[d.demand_id].values()) for d in demands}


def fair_assignment(node_totals: Mapping[str, Resources], demands: Sequence[Demand]) -> dict[str, dict[str, int]]:
    """The simulated placement behind :func:`fair_targets`: demand_id -> node_id -> slots.

    Shown so that tests (and curious operators) can check the targets really
    fit; FuxiMaster places real grants with :func:`place`, which spreads.
    """
    seen: set[str] = set()
    for d in demands:
        if d.demand_id in seen:
            raise ValueError(f"demand_id {d.demand_id!r} appears twice: expected one demand per (job, shape)")
        seen.add(d.demand_id)

    free = {node: dict(total) for node, total in node_totals.items()}
    plan: dict[str, dict[str, int]] = {d.demand_id: {} for d in demands}
    for priority in sorted({d.priority for d in demands}, reverse=True):
        _water_fill(free, [d for d in demands if d.priority == priority], plan)
    return {demand_id: {n: c for n, c in nodes.items() if c} for demand_id, nodes in plan.items()}


def _water_fill(free: dict[str, dict[str, float]], demands: list[Demand], plan: dict[str, dict[str, int]]) -> None:
    """Share ``free`` max-min fairly by job among one priority class, in place."""
    if not free:
        return
    given: dict[str, int] = {d.demand_id: 0 for d in demands}
    by_job: dict[str, list[Demand]] = {}
    for d in demands:
        if not _needs(d.shape):
            # Needs nothing, so costs nobody anything: grant it all at once and
            # leave it out of the fairness count, spread evenly over the nodes.
            nodes = sorted(free)
            each, extra = divmod(d.slots_wanted, len(nodes))
            for i, node in enumerate(nodes):
                plan[d.demand_id][node] = each + (1 if i < extra else 0)
            continue
        if d.slots_wanted > 0:
            by_job.setdefault(d.job_id, []).append(d)

    # (slots so far, submit_seq, job_id): the job holding the fewest slots goes next.
    heap = [(0, min(d.submit_seq for d in ds), job) for job, ds in by_job.items()]
    heapq.heapify(heap)
    while heap:
        count, seq, job = heapq.heappop(heap)
        # A shape that fails to fit never fits again: capacity only shrinks here.
        open_demands = [d for d in by_job[job] if given[d.demand_id] < d.slots_wanted]
        open_demands.sort(key=lambda d: (given[d.demand_id], d.submit_seq, d.demand_id))
        for d in open_demands:
            node = _best_fit(free, d.shape)
            if node is None:
                by_job[job].remove(d)
                continue
            free[node] = subtract(free[node], d.shape)
            plan[d.demand_id][node] = plan[d.demand_id].get(node, 0) + 1
            given[d.demand_id] += 1
            heapq.heappush(heap, (count + 1, seq, job))
            break


def _best_fit(free: Mapping[str, Resources], shape: Resources) -> str | None:
    """The fitting node that would have the least left of the shape's scarcest resource.

    Best fit keeps big holes open for big shapes that come later in the
    water-filling (plain first fit would let a 2-CPU slot take the only
    4-CPU node while a 2-CPU node sits idle).
    """
    key = _scarcest_resource(shape, free)
    candidates = [node for node in sorted(free) if fits(free[node], shape)]
    if not candidates:
        return None
    if key is None:
        return candidates[0]
    return min(candidates, key=lambda node: (free[node].get(key, 0.0), node))


# --------------------------------------------------------------------------- placement


def place(
    node_free: Mapping[str, Resources],
    shape: Resources,
    count: int,
    held_on_node: Mapping[str, int] = MappingProxyType({}),
    avoid_nodes: Collection[str] = (),
) -> dict[str, int]:
    """Choose nodes for up to ``count`` new slots of one demand: node_id -> slots.

    Each next slot goes to the node where this demand holds the fewest slots
    (``held_on_node`` plus those placed so far), so one lost machine costs the
    job few instances; ties to the node with the most free of the shape's
    scarcest resource, then node id. ``avoid_nodes`` (e.g. where an attempt
    just failed, or where the straggler runs) are used only when no other
    node fits. May return fewer than asked; zeros are omitted.
    """
    if count < 0:
        raise ValueError(f"count={count!r}: expected >= 0")
    free = {node: dict(f) for node, f in node_free.items()}
    key = _scarcest_resource(shape, free)
    avoid = set(avoid_nodes)
    placed: dict[str, int] = {}

    def preference(node: str) -> tuple[int, float, str]:
        room = free[node].get(key, 0.0) if key is not None else 0.0
        return (held_on_node.get(node, 0) + placed.get(node, 0), -room, node)

    for _ in range(count):
        fitting = [node for node in free if fits(free[node], shape)]
        preferred = [node for node in fitting if node not in avoid] or fitting
        if not preferred:
            break
        node = min(preferred, key=preference)
        free[node] = subtract(free[node], shape)
        placed[node] = placed.get(node, 0) + 1
    return placed


# --------------------------------------------------------------------------- ledger


@dataclass
class _Granted:
    job_id: str
    shape: dict[str, float]
    nodes: dict[str, int] = field(default_factory=dict)  # node_id -> slots, never 0


@dataclass
class Ledger:
    """What FuxiMaster has granted: (demand_id, node_id) -> slots, with each demand's shape."""

    _grants: dict[str, _Granted] = field(default_factory=dict)

    def grant(self, demand: Demand, node_id: str, n: int) -> None:
        if n < 0:
            raise ValueError(f"grant n={n!r}: expected >= 0")
        if n == 0:
            return
        entry = self._grants.get(demand.demand_id)
        if entry is None:
            entry = self._grants[demand.demand_id] = _Granted(demand.job_id, dict(demand.shape))
        elif entry.job_id != demand.job_id or entry.shape != dict(demand.shape):
            # One demand_id is one (job, shape); a change would make used_on() lie
            # about slots granted earlier.
            raise ValueError(
                f"demand {demand.demand_id!r} is held as job {entry.job_id!r} shape {entry.shape!r}, "
                f"got job {demand.job_id!r} shape {dict(demand.shape)!r}"
            )
        entry.nodes[node_id] = entry.nodes.get(node_id, 0) + n

    def release(self, demand_id: str, node_id: str, n: int) -> None:
        if n < 0:
            raise ValueError(f"release n={n!r}: expected >= 0")
        entry = self._grants.get(demand_id)
        held = entry.nodes.get(node_id, 0) if entry else 0
        if n > held:
            raise ValueError(f"release {n} slots of {demand_id!r} on {node_id!r}: only {held} held")
        if n == 0:
            return
        assert entry is not None
        entry.nodes[node_id] = held - n
        if entry.nodes[node_id] == 0:
            del entry.nodes[node_id]
        if not entry.nodes:
            del self._grants[demand_id]

    def release_job(self, job_id: str) -> dict[tuple[str, str], int]:
        """Release everything a job holds; returns what was released."""
        released: dict[tuple[str, str], int] = {}
        for demand_id in [d for d, e in self._grants.items() if e.job_id == job_id]:
            for node_id, n in self._grants.pop(demand_id).nodes.items():
                released[(demand_id, node_id)] = n
        return released

    def held(self, demand_id: str) -> dict[str, int]:
        entry = self._grants.get(demand_id)
        return dict(entry.nodes) if entry else {}

    def demands_of(self, job_id: str) -> list[str]:
        return sorted(d for d, e in self._grants.items() if e.job_id == job_id)

    def used_on(self, node_id: str, which: Callable[[str], bool] | None = None) -> dict[str, float]:
        """What the ledger holds on ``node_id`` (of the demand ids ``which`` accepts; all)."""
        used: dict[str, float] = {}
        for did, entry in self._grants.items():
            if which is not None and not which(did):
                continue
            n = entry.nodes.get(node_id, 0)
            if n:
                used = add(used, entry.shape, n)
        return used

    def free(self, node_totals: Mapping[str, Resources]) -> dict[str, dict[str, float]]:
        """Free resources per node in ``node_totals``.

        Values may be negative when a node shrank below what is granted on it;
        :func:`fits` then refuses it, and nodes the ledger knows but
        ``node_totals`` does not (gone) are left out.
        """
        return {
            node: subtract(total, self.used_on(node), allow_negative=True) for node, total in node_totals.items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "grants": {
                demand_id: {"job_id": e.job_id, "shape": dict(e.shape), "nodes": dict(e.nodes)}
                for demand_id, e in sorted(self._grants.items())
            }
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Ledger:
        ledger = cls()
        for demand_id, e in d.get("grants", {}).items():
            shape = {str(k): float(v) for k, v in e["shape"].items()}
            for k, v in shape.items():
                _check_amount(f"ledger {demand_id!r} shape", k, v)
            nodes = {str(node): int(n) for node, n in e["nodes"].items()}
            if any(n <= 0 for n in nodes.values()):
                raise ValueError(f"ledger {demand_id!r} nodes={nodes!r}: expected slot counts >= 1")
            if nodes:
                ledger._grants[str(demand_id)] = _Granted(str(e["job_id"]), shape, nodes)
        return ledger


# --------------------------------------------------------------------------- one sync: plan, then apply


@dataclass(frozen=True)
class Grant:
    """``n`` new slots of demand ``demand_id`` on node ``node_id``."""

    demand_id: str
    node_id: str
    n: int


@dataclass(frozen=True)
class GrantPlan:
    """What one sync of one job should change, as plain data (nothing is applied yet)."""

    grants: tuple[Grant, ...]
    # demand_id -> the fair-share target of each of the asking job's demands: a job holding
    # more gives the difference back (idle workers first).
    targets: Mapping[str, int]
    # An online replica (of ``online_ids``) wants slots its share allows but has none free:
    # jobs over their share should return theirs now rather than when idle.
    preempt: bool
    # Demands (of any job) waiting for slots within their quota group's guarantee that their
    # fair target gives them: the shell forces a reclaim when one waited too long
    # (``fuxi.core.reclaim``).
    reclaim_wait: tuple[str, ...] = ()


def _workers_on(ledger: Ledger, nodes: Collection[str]) -> dict[str, int]:
    workers = {n: 0 for n in nodes}
    for did in ledger.to_dict()["grants"]:
        for node, n in ledger.held(did).items():
            workers[node] = workers.get(node, 0) + n
    return workers


def scheduler_for(
    node_totals: Mapping[str, Resources],
    ledger: Ledger,
    demands: Sequence[Demand],
    workers_per_node_max: int = WORKERS_PER_NODE_MAX,
    quota_groups: Mapping[str, Mapping] | None = None,
) -> sched.Scheduler:
    """A scheduling core loaded with the nodes, what ``ledger`` holds on them and every demand.

    O(nodes x shapes + grants + demands): no per-slot work. Ledger entries of demands that no
    longer ask count as held (wanting nothing more); entries on nodes not in ``node_totals``
    (gone) are left out, as :meth:`Ledger.free` does.
    """
    s = sched.Scheduler(sched.SchedConfig(workers_per_node_max=workers_per_node_max,
                                          quota_groups=quota_groups))
    for node in sorted(node_totals):
        s.add_node(node, node_totals[node])
    seen: set[str] = set()
    for d in demands:
        if d.demand_id in seen:
            raise ValueError(f"demand_id {d.demand_id!r} appears twice: expected one demand per (job, shape)")
        seen.add(d.demand_id)
        s.set_demand(sched.DemandSpec(d.demand_id, d.job_id, d.priority, d.submit_seq, d.shape,
                                      d.quota_group), wanted=d.slots_wanted)
    for did, e in ledger.to_dict()["grants"].items():
        if did not in seen:
            s.set_demand(sched.DemandSpec(did, e["job_id"], 0, 0, e["shape"]), wanted=0)
        for node, n in e["nodes"].items():
            if node in node_totals:
                s.load_grant(did, node, n)
    return s


def grant(
    node_totals: Mapping[str, Resources],
    ledger: Ledger,
    demands: Sequence[Demand],
    job_id: str,
    avoid_nodes: Collection[str] = (),
    online_ids: Collection[str] = (),
    workers_per_node_max: int = WORKERS_PER_NODE_MAX,
    quota_groups: Mapping[str, Mapping] | None = None,
    excluded_nodes: Collection[str] = (),
    draining_nodes: Collection[str] = (),
) -> GrantPlan:
    """Plan one sync of ``job_id``: grant its demands (among ``demands``, every demand of the
    cluster) up to their fair targets, on nodes with free room, spread out.

    Pure: reads ``ledger``, never changes it. ``avoid_nodes`` (where the job's attempts
    failed) are used only when nothing else fits; ``excluded_nodes`` never. ``online_ids``:
    demand ids of online replicas, for :attr:`GrantPlan.preempt`. ``quota_groups``: the
    groups' configuration (``{name: {"min":…, "max":…, "weight":…}}``; see
    ``fuxi.core.sched.QuotaGroup``), each demand naming its ``quota_group``.
    ``draining_nodes`` (``fuxi.core.drain``: an operator is emptying them) get nothing new
    either; what is held there stays counted until it is released.
    """
    s = scheduler_for(node_totals, ledger, demands, workers_per_node_max, quota_groups)
    targets = s.targets() if demands else {}

    def held_total(did: str) -> int:
        return sum(ledger.held(did).values())

    online = set(online_ids)
    preempt = any(d.slots_wanted > held_total(d.demand_id)
                  and targets.get(d.demand_id, 0) > held_total(d.demand_id)
                  for d in demands if d.demand_id in online)
    mine = [d for d in demands if d.job_id == job_id]
    closed = frozenset(excluded_nodes) | frozenset(draining_nodes)
    for d in mine:
        s.set_avoid(d.demand_id, avoid_nodes, closed)
    plan = s.schedule_job(job_id, 0.0, targets)
    reclaim_wait = tuple(sorted(
        d.demand_id for d in demands if d.demand_id not in online
        and targets.get(d.demand_id, 0) > sum(s.held(d.demand_id).values())
        and s.waits_within_guarantee(d.demand_id)))
    merged: dict[tuple[str, str], int] = {}
    for g in plan.grants:
        merged[(g.demand_id, g.node_id)] = merged.get((g.demand_id, g.node_id), 0) + g.n
    return GrantPlan(grants=tuple(Grant(did, node, n) for (did, node), n in merged.items()),
                     targets={d.demand_id: targets.get(d.demand_id, 0) for d in mine},
                     preempt=preempt, reclaim_wait=reclaim_wait)


def apply_grants(
    ledger: Ledger,
    node_totals: Mapping[str, Resources],
    plan: GrantPlan,
    demands: Sequence[Demand],
    workers_per_node_max: int = WORKERS_PER_NODE_MAX,
    excluded_nodes: Collection[str] = (),
    draining_nodes: Collection[str] = (),
) -> list[Grant]:
    """Commit ``plan``'s grants to ``ledger``, each re-checked against the ledger as it is
    now: a node that is gone, full, at ``workers_per_node_max`` workers, or excluded (a
    blacklisted node, ``fuxi.core.blacklist``) gets nothing (the grant is dropped, the next
    sync plans again), and so does a draining one (``fuxi.core.drain``). Returns the grants
    applied, in order."""
    excluded = frozenset(excluded_nodes) | frozenset(draining_nodes)
    by_id = {d.demand_id: d for d in demands}
    workers_on = _workers_on(ledger, node_totals)
    applied: list[Grant] = []
    for g in plan.grants:
        d = by_id.get(g.demand_id)
        if d is None or g.node_id not in node_totals or g.n <= 0 or g.node_id in excluded:
            continue
        free = subtract(node_totals[g.node_id], ledger.used_on(g.node_id), allow_negative=True)
        if not fits(free, d.shape, g.n) or workers_on.get(g.node_id, 0) + g.n > workers_per_node_max:
            continue
        ledger.grant(d, g.node_id, g.n)
        workers_on[g.node_id] = workers_on.get(g.node_id, 0) + g.n
        applied.append(g)
    return applied

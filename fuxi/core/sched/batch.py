"""How many slots one grant may carry: the batched half of the incremental protocol.

A JobMaster asks "n slots of shape S" as one delta, and Fuxi answers "k slots on node N" in
one assignment. ``Scheduler.decide(now, slots_max)`` picks the most deserving demand and a
node exactly as for one slot (same order, same free index), then ``batch_slots`` says how
many of the demand's slots go there at once. Each bound keeps a promise the one-slot core
keeps:

* no more than fit on the node (the free index's fit: resources and worker room) and than
  the demand still waits for (``slots_max`` caps the rest);
* locality does not collapse: on a preferred node no more than that node's preference, on a
  preferred rack no more than the rack's; at cluster level no more than the demand waits
  for *beyond* its place preferences (at least 1), so a batch never takes slots that were
  asked for at a particular place;
* quotas: never above the group's max, and a grant within the guarantee (tier 0, which beats
  every other group and may reclaim) stays within it;
* fairness: when the runner-up of the same pick (the next most deserving queue top) has the
  same tier and effective priority, no more than would lift the demand's job past the
  runner-up's job in slots held (its demand's, when both are of one job), plus one: the
  order max-min fairness would have given them one slot at a time, in steps of at most the
  gap. (Between groups the borrowing share orders before slots held; a batch may move a
  group's share by up to that many slots.)

Pure: reads the scheduler's state, changes nothing.
"""

from __future__ import annotations

from fuxi.core.sched.model import LOCALITY_CLUSTER, LOCALITY_NODE, LOCALITY_RACK
from fuxi.core.sched.quota import guaranteed
from fuxi.core.sched.resources import RESOURCE_TOLERANCE


def slots_within(used, needs, limit, cap: int) -> int:
    """How many more slots of ``needs`` keep ``used`` within ``limit`` in every resource
    ``limit`` names (at most ``cap``)."""
    n = cap
    for k, v in needs:
        lim = limit.get(k)
        if lim is None:
            continue
        m = int((lim - used.get(k, 0.0) + RESOURCE_TOLERANCE) / v)
        if m < n:
            n = m
    return n if n > 0 else 0


def batch_slots(s, d, node_id: str, locality: str, slots_max: int, runner, mate) -> int:
    """The slots of demand ``d`` that one grant on ``node_id`` may carry (>= 1: the one slot
    the decision already found room for). ``s`` is the Scheduler, ``runner`` the pick's
    runner-up among the other queues (``(tier, -priority, share, key)``, or None), ``mate``
    the key of the next demand in ``d``'s own queue (same group and shape: same tier and
    share; or None)."""
    n = min(slots_max, d.wanted - d.held_total)
    if n <= 1:
        return 1
    if locality == LOCALITY_NODE:
        n = min(n, d.prefer_nodes.get(node_id, 1))
    elif locality == LOCALITY_RACK:
        n = min(n, d.prefer_racks.get(s.index.nodes[node_id].rack, 1))
    elif locality == LOCALITY_CLUSTER and d.pref_total:
        n = min(n, max(1, d.wanted - d.held_total - d.pref_total))
    if n <= 1:
        return 1
    n = min(n, s.index.fit_sh(s.index.nodes[node_id], d.sh))
    group = s.groups[d.group]
    used = s.group_used[d.group]
    if group.max is not None:
        n = min(n, slots_within(used, d.needs, group.max, n))
    tier = 1
    if group.min and guaranteed(group, used, d.needs):
        tier = 0
        n = min(n, slots_within(used, d.needs, group.min, n))
    prio = -(d.priority + d.boost)
    if runner is not None and runner[0] == tier and runner[1] == prio:
        n = _fair_cap(s, d, runner[3], n)
    if mate is not None and mate[0] == prio:
        n = _fair_cap(s, d, mate, n)
    return n if n > 1 else 1


def _fair_cap(s, d, key, n: int) -> int:
    """No more than lifts ``d`` one past the demand of order ``key`` (-(priority + boost),
    job slots held, demand slots held, seq, id) in what max-min fairness compares."""
    other = s.demands.get(key[-1])
    if other is not None and other.job == d.job:
        return min(n, key[2] - d.held_total + 1)
    return min(n, key[1] - s.job_held[d.job] + 1)

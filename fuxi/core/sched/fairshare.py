"""Fair-share targets: how many slots each demand should hold once the cluster is shared by
the scheduler's own order (guarantees first, then priority with ageing, then quota groups in
proportion to weight, then max-min by job), whatever it holds now.

A *fluid* model of the cluster: the node totals summed per resource, plus, per shape, the
slots of that shape the nodes hold when empty (so a shape no single node has room for gets
nothing). Slots are handed out one at a time by the same keys the scheduler uses, over
counts only — never over nodes — so a computation costs O(slots handed out x log demands),
independent of the number of nodes. Fragmentation across nodes between different shapes is
not modelled: a target may be a slot or two above what packing allows, and grants are
placed by the free index, which only grants what fits.
"""

from __future__ import annotations

import heapq
from fuxi.core.sched.quota import borrow_share, guaranteed, under_max
from fuxi.core.sched.resources import RESOURCE_TOLERANCE, give

def targets(s) -> dict[str, int]:
    """``s``: a ``scheduler.Scheduler`` (which calls this; not imported, to keep one way)."""
    cap = dict(s.index.capacity)
    workers_left = s.index.workers_max * len(s.index.nodes)
    fit_left = {needs: sh.total_fit for needs, sh in s.index.shapes.items()}
    given = {did: 0 for did in s.demands}
    job_given: dict[str, int] = {}
    used: dict[str, dict[str, float]] = {g: {} for g in s.groups}
    heaps: dict[str, list] = {}

    def key(d) -> tuple:
        return (-(d.priority + d.boost), job_given.get(d.job, 0), given[d.did], d.seq, d.did)

    for d in s.demands.values():
        if d.wanted > 0:
            heaps.setdefault(d.group, []).append(key(d))
    for h in heaps.values():
        heapq.heapify(h)

    def top(h: list):
        while h:
            d = s.demands[h[0][-1]]
            k = key(d)
            if k != h[0]:
                heapq.heapreplace(h, k)
                continue
            return d
        return None

    while heaps:
        best, best_key = None, None
        for name, h in list(heaps.items()):
            d = top(h)
            if d is None:
                del heaps[name]
                continue
            group = s.groups[name]
            gk = (0 if guaranteed(group, used[name], d.needs) else 1, -(d.priority + d.boost),
                  borrow_share(group, used[name], s.index.capacity), key(d))
            if best_key is None or gk < best_key:
                best, best_key = d, gk
        if best is None:
            break
        h = heaps[best.group]
        heapq.heappop(h)
        if (given[best.did] < best.wanted and workers_left > 0 and fit_left.get(best.needs, 0) > 0
                and under_max(s.groups[best.group], used[best.group], best.needs)
                and all(cap.get(k, 0.0) + RESOURCE_TOLERANCE >= v for k, v in best.needs)):
            given[best.did] += 1
            job_given[best.job] = job_given.get(best.job, 0) + 1
            workers_left -= 1
            fit_left[best.needs] -= 1
            give(used[best.group], best.needs)
            for k, v in best.needs:
                cap[k] = cap.get(k, 0.0) - v
            heapq.heappush(h, key(best))
        # else: capacity and quota only shrink here, so this demand is done
    return given

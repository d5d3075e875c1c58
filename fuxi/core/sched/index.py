"""The free-resource index: which node has room for one more slot of a shape, in O(log N).

Per shape in use there is a max-heap of nodes keyed by how many slots of that shape still fit
(``(-fit, node_id)``), one for the whole cluster and one per rack (made when a demand first
prefers that rack): the locality tree's cluster and rack levels (the node level is the node
itself, checked directly). Heaps are kept lazily, which is what makes a decision cheap:

* a node whose room *grows* (a release, a node added or enlarged) gets a fresh entry in every
  shape's heaps at once;
* a node whose room *shrinks* (a grant) is left alone: its entry now claims too much, and
  whoever finds it at the top recomputes the node's real fit and pushes it back lower (or
  drops it when nothing fits);
* an entry that claims *less* than the node has is a leftover of an older state (a fresher,
  larger one was pushed when the room grew) and is dropped.

So an entry at the top whose claim equals the node's real fit is the truth, and a decision
pops only stale entries (each paid for by the change that made it) plus at most
``spread_probes_max`` real candidates. Heaps that fill up with stale entries are rebuilt
(amortised O(1) per push).
"""

from __future__ import annotations

import heapq
from itertools import islice
from typing import Collection, Mapping

from fuxi.core.sched.model import LOCALITY_CLUSTER, LOCALITY_NODE, LOCALITY_RACK
from fuxi.core.sched.resources import RESOURCE_TOLERANCE, Needs, fit_count, give

DEFAULT_RACK = "default"


class Node:
    __slots__ = ("node_id", "rack", "total", "free", "workers", "fits", "claims", "empty_fits")

    def __init__(self, node_id: str, total: Mapping[str, float], rack: str):
        self.node_id = node_id
        self.rack = rack
        self.total = dict(total)
        self.free = dict(total)
        self.workers = 0
        # ShapeIndex -> slots of that shape that fit here now: a cache, emptied by whoever
        # changes ``free`` or ``workers`` (the scheduler's grants and releases). A node changes once per
        # grant or release but is asked its fit many times in between (every preferred-node
        # probe, every heap top, every shape on a release), so most asks are one dict read.
        self.fits: dict = {}
        # ShapeIndex -> a claim the shape's cluster heap holds an entry for this node of, at
        # least (0 or missing: maybe none). A node whose room grows to no more than that
        # needs no new entry: the higher one is corrected to the truth when it reaches the
        # top. Lowered to what is pushed back whenever the highest entry is popped.
        self.claims: dict = {}
        # ShapeIndex -> slots of that shape that fit here when the node is empty: a cache
        # that never goes stale (a node's total never changes; a new total is a new Node).
        # The reclaim scan asks it of every victim's node.
        self.empty_fits: dict = {}


class ShapeIndex:
    """One shape's heaps and the demands that ask for it."""

    __slots__ = ("needs", "heap", "racks", "demands", "full", "total_fit")

    def __init__(self, needs: Needs):
        self.needs = needs
        self.heap: list = []
        self.racks: dict[str, list] = {}
        self.demands: set[str] = set()
        self.full = False  # no node had room when a demand last looked (cleared by growth)
        self.total_fit = 0  # slots of this shape the cluster holds when empty (targets use it)


class FreeIndex:
    def __init__(self, workers_per_node_max: int, spread_probes_max: int):
        self.workers_max = workers_per_node_max
        self.probes_max = spread_probes_max
        self.nodes: dict[str, Node] = {}
        self.racks: dict[str, set[str]] = {}
        self.shapes: dict[Needs, ShapeIndex] = {}
        self.capacity: dict[str, float] = {}  # the totals of every node, summed
        self.visits = 0  # heap entries looked at, all decisions together (tests bound it)
        self.shape_epoch = 0  # bumped whenever ``shapes`` gains or loses one (callers cache)

    # ------------------------------------------------------------ nodes

    def fit(self, node: Node, needs: Needs) -> int:
        return fit_count(node.free, needs, self.workers_max - node.workers)

    def fit_sh(self, node: Node, sh: ShapeIndex) -> int:
        """``fit(node, sh.needs)``, from the node's cache when nothing changed since."""
        f = node.fits.get(sh)
        if f is None:
            f = node.fits[sh] = fit_count(node.free, sh.needs, self.workers_max - node.workers)
        return f

    def empty_fit(self, total: Mapping[str, float], needs: Needs) -> int:
        return fit_count(total, needs, self.workers_max)

    def empty_fit_sh(self, node: Node, sh: ShapeIndex) -> int:
        """``empty_fit(node.total, sh.needs)``, cached on the node."""
        f = node.empty_fits.get(sh)
        if f is None:
            f = node.empty_fits[sh] = fit_count(node.total, sh.needs, self.workers_max)
        return f

    def add_node(self, node_id: str, total: Mapping[str, float], rack: str = DEFAULT_RACK) -> Node:
        node = self.nodes[node_id] = Node(node_id, total, rack)
        self.racks.setdefault(rack, set()).add(node_id)
        give(self.capacity, tuple(node.total.items()))
        for sh in self.shapes.values():
            sh.total_fit += self.empty_fit(node.total, sh.needs)
        self.grew(node)
        return node

    def remove_node(self, node_id: str) -> Node:
        node = self.nodes.pop(node_id)
        members = self.racks[node.rack]
        members.discard(node_id)
        if not members:
            del self.racks[node.rack]
        for k, v in node.total.items():
            self.capacity[k] = self.capacity.get(k, 0.0) - v
        for sh in self.shapes.values():
            sh.total_fit -= self.empty_fit(node.total, sh.needs)
            if node.rack not in self.racks:
                sh.racks.pop(node.rack, None)
        return node  # its heap entries die lazily (the node is no longer in ``nodes``)

    def grew(self, node: Node) -> None:
        """``node`` has more room than before: every shape hears of it at once.

        The hot path of every release (one call per node a delta gives slots back on): the
        fit of each shape is counted inline (``fit_count``'s loop, without a call per shape)
        and stored in the node's fit cache, which the caller has just emptied."""
        fits, claims, nid, rack = node.fits, node.claims, node.node_id, node.rack
        get = node.free.get
        room = self.workers_max - node.workers
        for sh in self.shapes.values():
            f = room
            for k, v in sh.needs:  # fit_count, inlined
                r = get(k, 0.0) + RESOURCE_TOLERANCE
                if r < v:
                    f = 0
                    break
                m = int(r / v)
                if m < f:
                    f = m
            if f <= 0:
                fits[sh] = 0
                continue
            fits[sh] = f
            sh.full = False
            if f > claims.get(sh, 0):
                claims[sh] = f
                self._push(sh, sh.heap, (-f, nid))
            if sh.racks:
                rack_heap = sh.racks.get(rack)
                if rack_heap is not None:  # only racks some demand preferred are kept
                    heapq.heappush(rack_heap, (-f, nid))

    def _push(self, sh: ShapeIndex, heap: list, entry: tuple) -> None:
        heapq.heappush(heap, entry)
        if len(heap) > 4 * len(self.nodes) + 64:
            self._rebuild(sh)

    def _rebuild(self, sh: ShapeIndex) -> None:
        heap = sh.heap = []
        for n in self.nodes.values():
            f = n.claims[sh] = self.fit_sh(n, sh)
            if f > 0:
                heap.append((-f, n.node_id))
        heapq.heapify(heap)
        sh.racks = {rack: self._rack_heap(sh, rack) for rack in sh.racks if rack in self.racks}

    def _rack_heap(self, sh: ShapeIndex, rack: str) -> list:
        """A fresh heap of the rack's nodes with room for ``sh``. Rack heaps are made when a
        demand first prefers the rack, and kept from then on: a cluster where nobody prefers
        racks pays nothing for them on a release."""
        nodes = self.nodes
        heap = [(-f, nid) for nid in self.racks.get(rack, ()) if (f := self.fit_sh(nodes[nid], sh)) > 0]
        heapq.heapify(heap)
        return heap

    # ------------------------------------------------------------ shapes

    def shape(self, needs: Needs) -> ShapeIndex:
        sh = self.shapes.get(needs)
        if sh is None:
            sh = self.shapes[needs] = ShapeIndex(needs)
            self.shape_epoch += 1
            sh.total_fit = sum(self.empty_fit(n.total, needs) for n in self.nodes.values())
            self._rebuild(sh)
        return sh

    def drop_shape(self, needs: Needs) -> None:
        sh = self.shapes.pop(needs, None)
        self.shape_epoch += 1
        if sh is not None:  # no node keeps a claim for a shape nobody asks for any more
            for node in self.nodes.values():
                node.claims.pop(sh, None)
                node.empty_fits.pop(sh, None)

    # ------------------------------------------------------------ one decision

    def top_fit(self, sh: ShapeIndex) -> int:
        """The most slots of the shape any node still has room for (0: it fits nowhere)."""
        heap = sh.heap
        while heap:
            negf, nid = heap[0]
            self.visits += 1
            node = self.nodes.get(nid)
            real = self.fit_sh(node, sh) if node is not None else 0
            if real == -negf:
                return real
            heapq.heappop(heap)
            back = real if 0 < real < -negf else 0
            if back:
                heapq.heappush(heap, (-back, nid))
            if node is not None and node.claims.get(sh, 0) == -negf:
                node.claims[sh] = back  # the highest entry went: what is left claims back
        return 0

    def choose(self, sh: ShapeIndex, held: Mapping[str, int], prefer_nodes: Mapping[str, int],
               prefer_racks: Mapping[str, int], avoid: Collection[str],
               excluded: Collection[str]) -> tuple[str, str] | None:
        """A node for one more slot of ``sh``'s shape: ``(node_id, locality)`` or None.

        Preferred nodes first (the one with most room among at most ``spread_probes_max`` of
        them; those looked at go to the back of ``prefer_nodes``, so a long list is walked
        round over successive decisions), then the roomiest node of a
        preferred rack, then of the cluster. At the rack and cluster levels the node where the
        demand holds fewest slots wins (spread), among the roomiest ``spread_probes_max``;
        ``avoid`` nodes only when nothing else fits; ``excluded`` nodes never.
        """
        best = None
        looked = list(islice(prefer_nodes, self.probes_max)) if prefer_nodes else ()
        if looked:
            nodes, needs, visits = self.nodes, sh.needs, 0
            for nid in looked:
                node = nodes.get(nid)
                if node is None or nid in excluded:
                    continue
                f = node.fits.get(sh)
                if f is None:
                    f = node.fits[sh] = fit_count(node.free, needs,
                                                  self.workers_max - node.workers)
                visits += 1
                if f > 0:
                    cand = (nid not in avoid, f, nid)
                    if best is None or cand > best:
                        best = cand
            self.visits += visits
        if len(prefer_nodes) > len(looked) and isinstance(prefer_nodes, dict):
            for nid in looked:  # to the back: the next decision looks at the others
                if best is None or nid != best[2]:
                    prefer_nodes[nid] = prefer_nodes.pop(nid)
        if best is not None and best[0]:
            return best[2], LOCALITY_NODE
        for rack, want in prefer_racks.items():
            if want <= 0:
                continue
            heap = sh.racks.get(rack)
            if heap is None:
                if rack not in self.racks:
                    continue  # no such rack (yet): nothing kept for a name nobody has
                heap = sh.racks[rack] = self._rack_heap(sh, rack)
            if not heap:
                continue
            got = self._probe(sh, heap, held, avoid, excluded, last_resort=False)
            if got is not None:
                return got, LOCALITY_RACK
        got = self._probe(sh, sh.heap, held, avoid, excluded, last_resort=True)
        if got is not None:
            return got, LOCALITY_CLUSTER
        if best is not None:  # only avoided preferred nodes had room
            return best[2], LOCALITY_NODE
        return None

    def _probe(self, sh: ShapeIndex, heap: list, held: Mapping[str, int], avoid: Collection[str],
               excluded: Collection[str], last_resort: bool) -> str | None:
        needs, nodes = sh.needs, self.nodes
        kept: list = []  # real entries popped on the way, pushed back afterwards
        seen: set[str] = set()
        spread: list = []  # (held here, -fit, node) of nodes where the demand already holds
        avoided: list = []
        chosen = None
        probes = 0
        while heap and probes < self.probes_max:
            negf, nid = heap[0]
            self.visits += 1
            node = nodes.get(nid)
            if node is None:
                real = 0
            else:
                real = node.fits.get(sh)
                if real is None:
                    real = node.fits[sh] = fit_count(node.free, needs,
                                                     self.workers_max - node.workers)
            heapq.heappop(heap)
            if real != -negf:  # stale: push back what is true (if it claimed too much)
                back = real if 0 < real < -negf else 0
                if back:
                    heapq.heappush(heap, (-back, nid))
                if heap is sh.heap and node is not None and node.claims.get(sh, 0) == -negf:
                    node.claims[sh] = back  # the highest entry went: what is left claims back
                continue
            if nid in seen:
                continue  # a duplicate of an entry already looked at
            seen.add(nid)
            kept.append((negf, nid))
            if nid in excluded:
                continue
            if nid in avoid:
                avoided.append((held.get(nid, 0), negf, nid))
                continue
            h = held.get(nid, 0)
            if h == 0:
                chosen = nid
                break
            spread.append((h, negf, nid))
            probes += 1
        for entry in kept:
            heapq.heappush(heap, entry)
        if chosen is not None:
            return chosen
        if spread:
            return min(spread)[2]
        if avoided and last_resort:  # the heap ran out: nothing else has room
            return min(avoided)[2]
        return None

"""Indexes over one job's workers, so that JobCore never scans all of them per event.

``JobCore`` calls ``WorkerIndex.update(w)`` after every change to a worker's ``queue``,
``dead``, ``started`` or ``draining``; the index compares the worker with what it recorded
last time and moves it between its sets and counters. What it keeps, per shape (and per node
where placement needs it):

* workers that take work (started, alive, not draining) in two lazy heaps ordered by
  ``(queue length, worker id)`` -- one per shape, one per (shape, node) -- so the
  least-loaded worker with room is found in O(log W). An entry is stale once its worker's
  version moved on; stale entries are dropped when they reach the top, and a heap that holds
  more than twice its live entries is rebuilt (amortised O(1) per change);
* counts of live workers per shape and per (shape, node) (``held``, blacklisting), live
  workers per node (node blacklisting), live and not draining per (shape, node) (delay
  scheduling: "is a worker on a node with the data coming?"), started and live per shape and
  the idle ones among them (releasing idle workers).

``pick`` returns the same worker as the scan it replaces (``JobCore`` before issue 16): the
one ranked lowest by (on a node the instance failed on, a worker it failed on, not on a node
holding its input, queue length, worker id), among workers with room.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterable

# A rebuilt heap may be this many entries over twice its live ones before it is rebuilt again.
HEAP_SLACK = 64


class _Was:
    """What the index recorded about one worker."""

    __slots__ = ("shape", "node", "live", "started", "draining", "load")

    def __init__(self, shape: str, node: str) -> None:
        self.shape, self.node = shape, node
        self.live = self.started = self.draining = False
        self.load = 0

    def takes_work(self) -> bool:
        return self.live and self.started and not self.draining


class WorkerIndex:
    def __init__(self) -> None:
        self.seq: dict[str, int] = {}  # creation order (the order JobCore's dict of workers has)
        self.was: dict[str, _Was] = {}
        self.version: dict[str, int] = {}
        self.taking: dict[str, set[str]] = {}  # shape -> workers that take work
        self.taking_on: dict[tuple[str, str], set[str]] = {}  # (shape, node) -> the same
        self.heaps: dict[str, list[tuple[int, str, int]]] = {}  # shape -> (load, wid, version)
        self.node_heaps: dict[tuple[str, str], list[tuple[int, str, int]]] = {}
        self.live_total = 0
        self.live_by_shape: dict[str, set[str]] = {}
        self.live_on_node: dict[str, set[str]] = {}  # node -> live workers of any shape
        self.held: dict[str, dict[str, int]] = {}  # shape -> node -> live workers
        self.placed: dict[tuple[str, str], int] = {}  # (shape, node) -> live, not draining
        self.started: dict[str, int] = {}  # shape -> live and started
        self.idle: dict[str, set[str]] = {}  # shape -> live, started, nothing queued

    # ------------------------------------------------------------ upkeep

    def add(self, wid: str, shape: str, node: str) -> None:
        self.seq[wid] = len(self.seq)
        self.was[wid] = _Was(shape, node)
        self.version[wid] = 0

    def update(self, wid: str, live: bool, started: bool, draining: bool, load: int) -> None:
        was = self.was[wid]
        if (was.live, was.started, was.draining, was.load) == (live, started, draining, load):
            return
        sk, node = was.shape, was.node
        took = was.takes_work()
        self._count(wid, was, -1)
        was.live, was.started, was.draining, was.load = live, started, draining, load
        self._count(wid, was, +1)
        if was.takes_work():
            self.version[wid] += 1
            entry = (load, wid, self.version[wid])
            heapq.heappush(self.heaps.setdefault(sk, []), entry)
            heapq.heappush(self.node_heaps.setdefault((sk, node), []), entry)
            self.taking.setdefault(sk, set()).add(wid)
            self.taking_on.setdefault((sk, node), set()).add(wid)
            self._compact(sk, node)
        elif took:
            self.version[wid] += 1  # its heap entries are stale now
            self.taking[sk].discard(wid)
            self.taking_on[(sk, node)].discard(wid)

    def _count(self, wid: str, was: _Was, sign: int) -> None:
        if not was.live:
            return
        sk, node = was.shape, was.node
        self.live_total += sign
        _member(self.live_by_shape, sk, wid, sign)
        _member(self.live_on_node, node, wid, sign)
        _bump(self.held.setdefault(sk, {}), node, sign)
        if not self.held[sk]:
            del self.held[sk]
        if not was.draining:
            _bump(self.placed, (sk, node), sign)
        if was.started:
            _bump(self.started, sk, sign)
            if not was.load:
                _member(self.idle, sk, wid, sign)

    def _compact(self, sk: str, node: str) -> None:
        h = self.heaps[sk]
        if len(h) > 2 * len(self.taking[sk]) + HEAP_SLACK:
            self.heaps[sk] = self._fresh(self.taking[sk])
        h = self.node_heaps[(sk, node)]
        if len(h) > 2 * len(self.taking_on[(sk, node)]) + HEAP_SLACK:
            self.node_heaps[(sk, node)] = self._fresh(self.taking_on[(sk, node)])

    def _fresh(self, wids: Iterable[str]) -> list[tuple[int, str, int]]:
        h = [(self.was[w].load, w, self.version[w]) for w in wids]
        heapq.heapify(h)
        return h

    # ------------------------------------------------------------ queries

    def first(self, heap: list[tuple[int, str, int]] | None, cap: int,
              skip: Callable[[str], bool] | None = None) -> tuple[int, str] | None:
        """(load, wid) of the least-loaded worker in ``heap`` with load < ``cap`` that ``skip``
        does not reject. Entries it passes over are put back; stale ones are dropped."""
        if not heap:
            return None
        passed: list[tuple[int, str, int]] = []
        found = None
        while heap:
            load, wid, ver = heap[0]
            if ver != self.version[wid]:
                heapq.heappop(heap)
                continue
            if load >= cap:
                break
            if skip is not None and skip(wid):
                passed.append(heapq.heappop(heap))
                continue
            found = (load, wid)
            break
        for e in passed:
            heapq.heappush(heap, e)
        return found

    def has_room(self, sk: str, cap: int) -> bool:
        return self.first(self.heaps.get(sk), cap) is not None

    def pick(self, sk: str, cap: int, avoid: set[str], avoid_nodes: set[str],
             local: tuple[str, ...], strict: bool) -> str | None:
        """The worker the old scan ranked first (see the module's docstring); ``strict``:
        never one of ``avoid`` (a backup must not join its original)."""
        taking = self.taking.get(sk)
        if not taking:
            return None
        skip_bad = strict or len(taking) > sum(1 for w in avoid if w in taking)
        # A worker on a node holding the input, neither failed on.
        best = None
        for node in local:
            if node not in avoid_nodes:
                got = self.first(self.node_heaps.get((sk, node)), cap, avoid.__contains__ if avoid else None)
                if got is not None and (best is None or got < best):
                    best = got
        if best is not None:
            return best[1]
        # Any other worker neither failed on.
        if avoid or avoid_nodes:
            def skip(w: str) -> bool:
                return w in avoid or self.was[w].node in avoid_nodes
        else:
            skip = None
        got = self.first(self.heaps.get(sk), cap, skip)
        if got is not None:
            return got[1]
        if not skip_bad:  # workers that failed it, on nodes that did not
            bad = [(int(self.was[w].node not in local), self.was[w].load, w) for w in avoid
                   if w in taking and self.was[w].load < cap and self.was[w].node not in avoid_nodes]
            if bad:
                return min(bad)[2]
        ranked: list[tuple[int, int, int, str]] = []
        for node in avoid_nodes:  # nodes it failed on: workers it did not fail on first
            got = self.first(self.node_heaps.get((sk, node)), cap, avoid.__contains__ if avoid else None)
            if got is not None:
                ranked.append((0, int(node not in local), got[0], got[1]))
            if not skip_bad:
                for w in avoid:
                    x = self.was[w] if w in taking else None
                    if x is not None and x.node == node and x.load < cap:
                        ranked.append((1, int(node not in local), x.load, w))
        return min(ranked)[3] if ranked else None

    def any_placed(self, sk: str, nodes: Iterable[str], except_nodes: set[str]) -> bool:
        """Whether a live, not draining worker of shape ``sk`` (started or starting) is on one
        of ``nodes`` outside ``except_nodes``."""
        return any(self.placed.get((sk, n), 0) > 0 for n in nodes if n not in except_nodes)

    def in_order(self, wids: Iterable[str]) -> list[str]:
        return sorted(wids, key=self.seq.__getitem__)


def _member(d: dict, key, wid: str, sign: int) -> None:
    if sign > 0:
        d.setdefault(key, set()).add(wid)
    else:
        d[key].discard(wid)
        if not d[key]:
            del d[key]


def _bump(d: dict, key, sign: int) -> None:
    n = d.get(key, 0) + sign
    if n:
        d[key] = n
    else:
        d.pop(key, None)

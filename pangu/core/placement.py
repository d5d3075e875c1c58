"""Where chunk replicas go: a pure module (no I/O, no clock; randomness from a seeded
``random.Random``), used by the master for new chunks, repair, rebalancing and drain.

Rules:

* Replicas of one chunk go to distinct nodes (a node is a failure domain); with
  ``allow_same_node`` (a test cluster with fewer nodes than the replication factor) distinct
  servers are the fallback, never the same server twice.
* Only live, non-draining servers with room for the chunk receive replicas. Among those,
  nodes are drawn with probability proportional to their free bytes, so fuller disks fill
  more slowly (capacity-aware) and load spreads.
* Repair restores the replication factor most-endangered-first (fewest live copies), within a
  byte budget per round (the bandwidth cap). Replicas on draining servers are copied away
  and do not count towards the factor. Chunks with no live copy are reported as missing.
* Rebalance moves chunks from servers above the mean utilisation (by ``threshold``) to
  servers below it, never onto a node that already holds the chunk.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Mapping

from pangu.errors import NotEnoughServers


@dataclass(frozen=True)
class Server:
    id: str
    node: str
    capacity_bytes: int
    used_bytes: int = 0
    alive: bool = True
    draining: bool = False

    @property
    def free_bytes(self) -> int:
        return max(0, self.capacity_bytes - self.used_bytes)

    @property
    def utilisation(self) -> float:
        return self.used_bytes / self.capacity_bytes if self.capacity_bytes else 1.0


@dataclass(frozen=True)
class Copy:
    """Copy ``chunk`` from server ``source`` to server ``dest``."""
    chunk: str
    source: str
    dest: str
    size_bytes: int


@dataclass(frozen=True)
class Move:
    """Copy ``chunk`` from ``source`` to ``dest``, then drop the replica on ``source``."""
    chunk: str
    source: str
    dest: str
    size_bytes: int


@dataclass(frozen=True)
class ChunkInfo:
    replicas: frozenset[str]  # server ids holding a current (not stale) replica
    target: int  # the file's replication factor
    size_bytes: int


def choose(servers: Iterable[Server], n: int, size_bytes: int, rng: random.Random, *,
           exclude_nodes: Iterable[str] = (), exclude_servers: Iterable[str] = (),
           allow_same_node: bool = False) -> list[str]:
    """``n`` server ids for a new chunk (or new replicas of one). Raises NotEnoughServers
    saying how many were possible and why."""
    if n < 1:
        return []
    ex_nodes, ex_servers = set(exclude_nodes), set(exclude_servers)
    ok = sorted((s for s in servers if s.alive and not s.draining
                 and s.free_bytes >= size_bytes and s.id not in ex_servers),
                key=lambda s: s.id)
    by_node: dict[str, list[Server]] = {}
    for s in ok:
        if s.node not in ex_nodes:
            by_node.setdefault(s.node, []).append(s)
    chosen: list[Server] = []
    nodes = sorted(by_node)
    while len(chosen) < n and nodes:
        weights = [max(s.free_bytes for s in by_node[nd]) for nd in nodes]
        nd = _weighted(nodes, weights, rng)
        nodes.remove(nd)
        chosen.append(max(by_node[nd], key=lambda s: (s.free_bytes, s.id)))
    if len(chosen) < n and allow_same_node:
        rest = [s for s in ok if s not in chosen]
        while len(chosen) < n and rest:
            s = _weighted(rest, [x.free_bytes for x in rest], rng)
            rest.remove(s)
            chosen.append(s)
    if len(chosen) < n:
        raise NotEnoughServers(
            f"need {n} replica(s) of {size_bytes} bytes on distinct nodes but only "
            f"{len(chosen)} node(s) qualify: {len(ok)} live non-draining server(s) with "
            f"room, {len(ex_nodes)} node(s) excluded because they hold the chunk already")
    return [s.id for s in chosen]


def _weighted(items: list, weights: list[int], rng: random.Random):
    total = sum(weights)
    if total <= 0:
        return items[rng.randrange(len(items))]
    x = rng.randrange(total)
    for item, w in zip(items, weights):
        if x < w:
            return item
        x -= w
    return items[-1]


def repair_plan(chunks: Mapping[str, ChunkInfo], servers: Iterable[Server], rng: random.Random,
                *, budget_bytes: int, allow_same_node: bool = False
                ) -> tuple[list[Copy], list[str]]:
    """Copies that restore replication factors, most endangered chunk first, until
    ``budget_bytes`` is spent; and the chunks with no live copy at all (missing)."""
    servers = list(servers)
    by_id = {s.id: s for s in servers}
    planned_use: dict[str, int] = {}
    need = []
    missing = []
    for cid in sorted(chunks):
        info = chunks[cid]
        live = [r for r in info.replicas if r in by_id and by_id[r].alive]
        counted = [r for r in live if not by_id[r].draining]
        if not live:
            missing.append(cid)
        elif len(counted) < info.target:
            need.append((len(counted), cid, live, counted))
    need.sort(key=lambda t: (t[0], t[1]))
    plan: list[Copy] = []
    spent = 0
    for _, cid, live, counted in need:
        info = chunks[cid]
        if spent + info.size_bytes * (info.target - len(counted)) > budget_bytes and plan:
            break  # over the bandwidth budget (the first chunk always goes: progress)
        view = [Server(s.id, s.node, s.capacity_bytes, s.used_bytes + planned_use.get(s.id, 0),
                       s.alive, s.draining) for s in servers]
        try:
            dests = choose(view, info.target - len(counted), info.size_bytes, rng,
                           exclude_nodes={by_id[r].node for r in live} if not allow_same_node else (),
                           exclude_servers=set(live), allow_same_node=allow_same_node)
        except NotEnoughServers:
            continue  # nowhere to put it now; retried next round
        # Prefer a source that is not draining (it will stay), then the least used.
        src = min(live, key=lambda r: (by_id[r].draining, by_id[r].utilisation, r))
        for d in dests:
            plan.append(Copy(cid, src, d, info.size_bytes))
            planned_use[d] = planned_use.get(d, 0) + info.size_bytes
            spent += info.size_bytes
    return plan, missing


def excess_replicas(chunks: Mapping[str, ChunkInfo], servers: Iterable[Server]) -> list[tuple[str, str]]:
    """(chunk, server) replicas beyond the factor, to delete: from draining servers first,
    then the fullest."""
    by_id = {s.id: s for s in servers}
    out = []
    for cid in sorted(chunks):
        info = chunks[cid]
        live = [r for r in info.replicas if r in by_id and by_id[r].alive]
        counted = [r for r in live if not by_id[r].draining]
        if len(counted) >= info.target:
            extra = sorted(live, key=lambda r: (not by_id[r].draining, -by_id[r].utilisation, r))
            out.extend((cid, r) for r in extra[:len(live) - info.target])
    return out


def rebalance_plan(chunks: Mapping[str, ChunkInfo], servers: Iterable[Server],
                   rng: random.Random, *, threshold: float = 0.10, budget_bytes: int
                   ) -> list[Move]:
    """Moves from the most used server while its utilisation is above the mean by more than
    ``threshold``, each to the least used server below the mean on a node that does not hold
    the chunk, within ``budget_bytes``."""
    everyone = list(servers)
    servers = [s for s in everyone if s.alive and not s.draining and s.capacity_bytes > 0]
    if len(servers) < 2:
        return []
    used = {s.id: s.used_bytes for s in servers}
    by_id = {s.id: s for s in servers}
    mean = sum(used.values()) / sum(s.capacity_bytes for s in servers)
    holders: dict[str, set[str]] = {cid: set(info.replicas) for cid, info in chunks.items()}
    all_by_id = {s.id: s for s in everyone}

    def nodes_of(cid: str) -> set[str]:
        return {all_by_id[r].node for r in holders[cid] if r in all_by_id}
    on_server: dict[str, list[str]] = {}
    for cid in sorted(chunks):
        for r in chunks[cid].replicas:
            on_server.setdefault(r, []).append(cid)
    plan: list[Move] = []
    spent = 0

    def util(sid: str) -> float:
        return used[sid] / by_id[sid].capacity_bytes

    while True:
        src = max(servers, key=lambda s: (util(s.id), s.id))
        if util(src.id) <= mean + threshold:
            return plan
        candidates = [s for s in servers if util(s.id) < mean]
        moved = False
        for cid in list(on_server.get(src.id, [])):
            size = chunks[cid].size_bytes
            if spent + size > budget_bytes:
                return plan
            dests = [d for d in candidates if d.node not in nodes_of(cid)
                     and d.capacity_bytes - used[d.id] >= size]
            if not dests:
                continue
            d = min(dests, key=lambda s: (util(s.id), s.id))
            plan.append(Move(cid, src.id, d.id, size))
            spent += size
            used[src.id] -= size
            used[d.id] += size
            on_server[src.id].remove(cid)
            on_server.setdefault(d.id, []).append(cid)
            holders[cid] = (holders[cid] - {src.id}) | {d.id}
            moved = True
            break
        if not moved:
            return plan

"""Repair and rebalance planning of the Pangu master: a pure module. Plain data in (what the
namespace says each chunk should be, what the chunkservers report holding, the servers'
state), a plan out (copies to make, replicas to drop, moves); the master's shell carries the
plan out and feeds the results back with the next heartbeats. No I/O, no clock; randomness
from the caller's seeded ``random.Random``.

Rules:

* Only *current* replicas count (a replica at the chunk's version or newer); a stale one
  (it missed writes, so it holds an older version) is never a source, never counted, and is
  dropped once a current copy exists elsewhere (``garbage``).
* Repair restores the replication factor most-endangered-first (fewest live copies), within a
  byte budget per round (the bandwidth cap). Replicas on draining servers are copied away
  and do not count towards the factor. Chunks with no live copy are reported as missing.
  New replicas go to nodes holding no live replica of the chunk (``placement.choose``).
* Replicas beyond the factor are dropped (draining servers first, then the fullest), only in
  a round with nothing to repair.
* Rebalance moves chunks from servers above the mean utilisation (by ``threshold``) to
  servers below it, never onto a node that already holds the chunk, only in a round with
  nothing to repair or drop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping

from pangu.core import paths as P
from pangu.core.placement import Rng, Server, choose
from pangu.errors import NotEnoughServers

# What one chunkserver reports holding: chunk id -> (version, length in bytes).
Held = Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class ChunkState:
    """A chunk as the namespace has it."""
    id: str
    version: int
    length: int


@dataclass(frozen=True)
class FileChunks:
    """A file's replication factor and its chunks, in order."""
    path: str
    replication: int
    chunks: tuple[ChunkState, ...]


@dataclass(frozen=True)
class ChunkInfo:
    replicas: frozenset[str]  # server ids holding a current (not stale) replica
    target: int  # the file's replication factor
    size_bytes: int


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
class Plan:
    """One maintenance round: ``copies`` first; then ``excess`` (chunk, server) replicas to
    drop; then ``moves``. ``missing`` chunks have no live copy (reported, nothing to do)."""
    copies: list[Copy] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    excess: list[tuple[str, str]] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)


def chunk_infos(files: Iterable[FileChunks], held: Mapping[str, Held]) -> dict[str, ChunkInfo]:
    """Each chunk's current replicas (servers of ``held``, by id, at its version or newer),
    factor and size."""
    holders: dict[str, set[tuple[str, int]]] = {}
    for sid, chunks in held.items():
        for cid, (v, _) in chunks.items():
            holders.setdefault(cid, set()).add((sid, v))
    out = {}
    for f in files:
        for c in f.chunks:
            reps = frozenset(sid for sid, v in holders.get(c.id, ()) if v >= c.version)
            out[c.id] = ChunkInfo(reps, f.replication, max(c.length, 1))
    return out


def plan(chunks: Mapping[str, ChunkInfo], servers: Iterable[Server], rng: Rng, *,
         budget_bytes: int, allow_same_node: bool = False, rebalance: bool = True,
         threshold: float = 0.10, skip: Collection[str] = ()) -> Plan:
    """One round's plan for ``chunks`` (less those in ``skip``: leased, being changed, or
    changed by a namespace change not yet durable)."""
    quiet = {cid: i for cid, i in chunks.items() if cid not in skip}
    servers = list(servers)
    copies, missing = repair_plan(quiet, servers, rng, budget_bytes=budget_bytes,
                                  allow_same_node=allow_same_node)
    excess = excess_replicas(quiet, servers) if not copies else []
    moves = (rebalance_plan(quiet, servers, rng, budget_bytes=budget_bytes, threshold=threshold)
             if rebalance and not copies and not excess else [])
    return Plan(copies, missing, excess, moves)


def garbage(server: str, held: Held, version_of: Mapping[str, int],
            live_held: Mapping[str, Held], skip: Collection[str] = ()) -> list[tuple[str, int]]:
    """(chunk, version) replicas on ``server`` to delete: of chunks no file references (not
    in ``version_of``, chunk id -> current version), and stale ones of which another live
    server (``live_held``) has a current copy. Chunks in ``skip`` are left alone."""
    out: list[tuple[str, int]] = []
    for cid, (version, _) in held.items():
        if cid in skip:
            continue
        cur = version_of.get(cid)
        if cur is None:
            out.append((cid, version))
        elif version < cur and any(sid != server and h.get(cid, (0, 0))[0] >= cur
                                   for sid, h in live_held.items()):
            out.append((cid, version))  # deleted only if still at this version
    return out


def health(files: Iterable[FileChunks], live_held: Mapping[str, Held], root: str = "/") -> dict:
    """fsck's report on the files under ``root``: counts, and the chunks under-replicated,
    missing (no live replica at all) or stale-only (live replicas, all of an older version).
    A chunk that never held an acknowledged byte and has no replica is not reported."""
    n_files = n_chunks = 0
    report: dict[str, list] = {"under_replicated": [], "missing": [], "stale_only": []}
    for f in sorted(files, key=lambda f: f.path):
        if not P.is_under(f.path, root):
            continue
        n_files += 1
        n_chunks += len(f.chunks)
        for c in f.chunks:
            live = [sid for sid, h in live_held.items() if c.id in h and h[c.id][0] >= c.version]
            if not live and c.length == 0:
                continue  # nothing was ever acknowledged in it: nothing to lose
            if not live:
                stale = [sid for sid, h in live_held.items() if c.id in h]
                report["stale_only" if stale else "missing"].append(
                    {"path": f.path, "chunk": c.id, "version": c.version})
            elif len(live) < f.replication:
                report["under_replicated"].append(
                    {"path": f.path, "chunk": c.id, "live": len(live), "target": f.replication})
    return {"files": n_files, "chunks": n_chunks, **report}


def repair_plan(chunks: Mapping[str, ChunkInfo], servers: Iterable[Server], rng: Rng,
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
                   rng: Rng, *, threshold: float = 0.10, budget_bytes: int
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

"""Where chunk replicas go: a pure module (no I/O, no clock; randomness from the caller's
seeded ``random.Random``), used by the master for new chunks and by ``pangu.core.repair``.

Rules:

* Replicas of one chunk go to distinct nodes (a node is a failure domain); with
  ``allow_same_node`` (a test cluster with fewer nodes than the replication factor) distinct
  servers are the fallback, never the same server twice.
* Only live, non-draining servers with room for the chunk receive replicas. Among those,
  nodes are drawn with probability proportional to their free bytes, so fuller disks fill
  more slowly (capacity-aware) and load spreads.
* Hot servers (``Server.hot``, ``pangu.core.hotservers``) receive replicas only when the
  others cannot hold them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from pangu.errors import NotEnoughServers


class Rng(Protocol):
    """What placement draws from: a seeded ``random.Random`` that the caller made (the
    master seeds it from its settings, tests from a printed seed); never a global one."""

    def randrange(self, stop: int) -> int: ...


@dataclass(frozen=True)
class Server:
    id: str
    node: str
    capacity_bytes: int
    used_bytes: int = 0
    alive: bool = True
    draining: bool = False
    hot: bool = False  # far fuller than its peers (pangu.core.hotservers): used last
    queue: float = 0.0  # reads and writes in flight, averaged (pangu.core.hotservers)

    @property
    def free_bytes(self) -> int:
        return max(0, self.capacity_bytes - self.used_bytes)

    @property
    def utilisation(self) -> float:
        return self.used_bytes / self.capacity_bytes if self.capacity_bytes else 1.0


def choose(servers: Iterable[Server], n: int, size_bytes: int, rng: Rng, *,
           exclude_nodes: Iterable[str] = (), exclude_servers: Iterable[str] = (),
           allow_same_node: bool = False) -> list[str]:
    """``n`` server ids for a new chunk (or new replicas of one). Raises NotEnoughServers
    saying how many were possible and why."""
    if n < 1:
        return []
    servers = list(servers)
    if any(s.hot for s in servers):  # hot servers only when the others are not enough
        try:
            return choose([s for s in servers if not s.hot], n, size_bytes, rng,
                          exclude_nodes=exclude_nodes, exclude_servers=exclude_servers,
                          allow_same_node=allow_same_node)
        except NotEnoughServers:
            servers = [s if not s.hot else Server(s.id, s.node, s.capacity_bytes, s.used_bytes,
                                                  s.alive, s.draining) for s in servers]
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


def _weighted(items: list, weights: list[int], rng: Rng):
    total = sum(weights)
    if total <= 0:
        return items[rng.randrange(len(items))]
    x = rng.randrange(total)
    for item, w in zip(items, weights):
        if x < w:
            return item
        x -= w
    return items[-1]

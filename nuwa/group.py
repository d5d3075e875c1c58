"""Starting a Nuwa replica group on a Ray cluster (FuxiMaster's job in a `fuxi up` cluster).

Replicas go one per node where there are enough nodes, pinned with node affinity so that a
restarted replica finds its own disk again. Replica ``i`` keeps its WAL and snapshots under
``<data_dir>/nuwa/replica-<i>`` on its node.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from nuwa.errors import BadRequest
from nuwa.replica import NuwaReplica
from nuwa.server import ServerConfig

GROUP_SIZES = (1, 3, 5)
START_TIMEOUT_S = 60.0


@dataclass
class Group:
    namespace: str
    data_dir: str
    voters: list[int]
    nodes: dict[int, str]  # replica id -> node id
    handles: dict[int, object] = field(default_factory=dict)
    addresses: dict[int, tuple[str, int]] = field(default_factory=dict)
    config: ServerConfig = ServerConfig()

    def client_addresses(self) -> list[tuple[str, int]]:
        return [self.addresses[i] for i in sorted(self.addresses)]

    def replica_dir(self, rid: int) -> str:
        return os.path.join(self.data_dir, "nuwa", f"replica-{rid}")

    def start_replica(self, rid: int, rejoin: bool = True) -> tuple[str, int]:
        """(Re)start replica ``rid`` on its node; it recovers from its disk if any is left (a
        replica whose disk is gone comes back as a non-voter: see ReplicaServer._membership).
        It asks for its old port, so the addresses clients hold stay valid."""
        old_port = self.addresses.get(rid, (None, 0))[1]
        handle = NuwaReplica.options(
            name=f"nuwa-{rid}", namespace=self.namespace, lifetime="detached",
            scheduling_strategy=NodeAffinitySchedulingStrategy(self.nodes[rid], soft=False),
            max_restarts=0,
        ).remote(rid, self.voters, self.replica_dir(rid), self.config, rejoin)
        addr = tuple(ray.get(handle.start.remote(old_port), timeout=START_TIMEOUT_S))
        self.handles[rid] = handle
        self.addresses[rid] = addr
        return addr

    def publish_peers(self) -> None:
        ray.get([h.set_peers.remote(self.addresses) for h in self.handles.values()],
                timeout=START_TIMEOUT_S)

    def stop_replica(self, rid: int, kill: bool = True) -> None:
        h = self.handles.pop(rid, None)
        if h is not None:
            if not kill:
                ray.get(h.stop.remote(), timeout=START_TIMEOUT_S)
            ray.kill(h, no_restart=True)

    def to_dict(self) -> dict:
        return {"namespace": self.namespace, "data_dir": self.data_dir, "voters": self.voters,
                "nodes": {str(k): v for k, v in self.nodes.items()},
                "addresses": {str(k): list(v) for k, v in self.addresses.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Group":
        return cls(namespace=d["namespace"], data_dir=d["data_dir"], voters=list(d["voters"]),
                   nodes={int(k): v for k, v in d["nodes"].items()},
                   addresses={int(k): tuple(v) for k, v in d["addresses"].items()})

    def supervise_once(self, probe_timeout_s: float = 5.0) -> list[str]:
        """Restart every replica that is gone (its actor died or does not answer): on its own
        node if that node is alive (it recovers from its disk), else on another alive node
        (no disk there: it rejoins as a non-voter). Returns what was done."""
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        done = []
        for rid in self.voters:
            try:
                h = ray.get_actor(f"nuwa-{rid}", namespace=self.namespace)
                ray.get(h.status.remote(), timeout=probe_timeout_s)
                self.handles[rid] = h
                continue
            except Exception:
                pass
            self.handles.pop(rid, None)
            if self.nodes[rid] not in alive:
                if not alive:
                    continue
                used = {self.nodes[r] for r in self.voters if r != rid}
                self.nodes[rid] = sorted(alive - used or alive)[0]
            try:
                self.start_replica(rid, rejoin=True)
                done.append(f"restarted nuwa-{rid} on node {self.nodes[rid][:12]}")
            except Exception as e:
                done.append(f"could not restart nuwa-{rid}: {e!r}")
        if done:
            self.publish_peers()
        return done

    def stop(self) -> None:
        for rid in list(self.handles):
            try:
                self.stop_replica(rid)
            except Exception:
                pass


def start_group(size: int, data_dir: str, namespace: str,
                config: ServerConfig = ServerConfig()) -> Group:
    if size not in GROUP_SIZES:
        raise BadRequest(f"Nuwa group size {size} is not supported; expected one of {GROUP_SIZES}")
    alive = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
    if not alive:
        raise BadRequest("no alive Ray node to place Nuwa replicas on")
    voters = list(range(1, size + 1))
    nodes = {rid: alive[(rid - 1) % len(alive)] for rid in voters}  # spread; share when few
    g = Group(namespace=namespace, data_dir=data_dir, voters=voters, nodes=nodes, config=config)
    # Remember that this group exists: any later start is a *rejoin*, so a replica that finds
    # no disk (a new host, a wiped one) comes back as a non-voter instead of voting with an
    # empty log and overwriting committed entries.
    marker = os.path.join(data_dir, "nuwa", "group.json")
    existed = os.path.exists(marker)
    if existed:
        with open(marker) as f:
            recorded = json.load(f)["voters"]
        if recorded != voters:
            raise BadRequest(f"the Nuwa group in {data_dir} has voters {recorded}; asked for "
                             f"{size} replicas. Changing the group size needs a membership "
                             f"change, which is not supported yet: use --nuwa-replicas "
                             f"{len(recorded)}")
    else:
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker + ".tmp", "w") as f:
            json.dump({"voters": voters}, f)
        os.replace(marker + ".tmp", marker)
    for rid in voters:
        # A node that just died may still be listed alive for a moment: if a replica cannot
        # be placed there, try the other nodes before giving up.
        tried: list[str] = []
        while True:
            try:
                g.start_replica(rid, rejoin=existed)
                break
            except Exception:
                tried.append(g.nodes[rid])
                left = [n for n in alive if n not in tried]
                if not left:
                    raise
                g.nodes[rid] = left[0]
    g.publish_peers()
    return g

"""The Ray shell of a Nuwa replica: an async actor (no CPU reserved) hosting a ``ReplicaServer``.

All Raft and client traffic goes over the server's own TCP socket. Ray is used only to place
the replica on a node, start it, hand it its peers' addresses, ask its status, and stop it.

The cluster's peer secret (``nuwa.core.peer_auth``) arrives as a constructor argument from
``nuwa.group`` -- only platform code creates replicas -- and is never logged or returned.
``host`` is the address to bind for clients and peers: loopback on a local head, or
``NODE_IP`` for each node's own address when the group spans machines.
"""

from __future__ import annotations

import os
import re

import ray

from base import metrics
from nuwa.io.server import TERM, ReplicaServer, ServerConfig


LOOPBACK = "127.0.0.1"
NODE_IP = "node"  # as a host: the address Ray knows the replica's node by
PEERS_SHOWN_MAX = 16  # peers whose lag a leader shows (groups have 1, 3 or 5 members)

_MATCH = re.compile(r"match=(\d+)")
_GAUGES = {key: metrics.gauge(f"nuwa_{name}", help, labels=("replica",), series_max=16)
           for key, name, help in (
               ("is_leader", "is_leader", "1 if this replica is the group's leader."),
               ("commit", "commit_index", "The highest log index known committed."),
               ("applied", "applied_index", "The highest log index applied to the tree."),
               ("last_index", "last_index", "The last index in this replica's log."),
               ("revision", "revision", "The tree's revision (one per change)."),
               ("wal_bytes", "wal_bytes", "Bytes of this replica's write-ahead log."),
               ("sessions", "sessions", "Client sessions open."),
               ("watchers", "watchers", "Watches registered."),
               ("voters", "voters", "Voting members in this replica's configuration."))}
PEER_LAG = metrics.gauge("nuwa_peer_lag_entries",
                         "Entries a follower is behind the leader's log (shown by the leader).",
                         labels=("replica", "peer"), series_max=PEERS_SHOWN_MAX * 4)
PEER_DROPPED = metrics.gauge("nuwa_peer_messages_dropped",
                             "Peer messages this replica dropped since it started, by reason.",
                             labels=("replica", "reason"), series_max=64)


def _set_gauges(st: dict) -> None:
    """This replica's status as the process's gauges (``NuwaReplica.metrics``)."""
    rid = str(st.get("id", ""))
    leader = st.get("role") == "LEADER"
    values = {**st, "is_leader": int(leader), "voters": len(st.get("voters") or ())}
    for key, g in _GAUGES.items():
        v = values.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) or key == "is_leader":
            g.set(float(v), replica=rid)
    if isinstance(st.get("term"), int):
        TERM.set(st["term"], replica=rid)
    lag = {}
    if leader:
        for peer, prog in list((st.get("progress") or {}).items())[:PEERS_SHOWN_MAX]:
            m = _MATCH.search(str(prog))
            if m and str(peer) != rid:
                lag[(rid, str(peer))] = max(0, int(st.get("last_index", 0)) - int(m.group(1)))
    PEER_LAG.replace(lag)
    PEER_DROPPED.replace({(rid, str(k)): v for k, v in (st.get("peer_dropped") or {}).items()
                          if isinstance(v, (int, float))})


@ray.remote(num_cpus=0, max_concurrency=64)
class NuwaReplica:
    def __init__(self, replica_id: int, voters: list[int], data_dir: str,
                 config: ServerConfig | None = None, rejoin: bool = False,
                 auth: dict | None = None, peer_secret: bytes | None = None,
                 host: str = LOOPBACK):
        from zhongkui.files import private_files

        private_files()  # the WAL and snapshots hold password hashes: 0600/0700 (issue 14)
        self.server = ReplicaServer(replica_id, voters, data_dir, config or ServerConfig(),
                                    rejoin=rejoin, auth=auth,
                                    namespace=ray.get_runtime_context().namespace,
                                    peer_secret=peer_secret)
        self.host = ray.util.get_node_ip_address() if host == NODE_IP else host

    def _require(self, cred, what: str) -> None:
        """Control calls: the platform's own actors only, when access control is on."""
        from zhongkui.guard import require_platform

        require_platform(self.server.guard, cred, what)

    async def start(self, port: int = 0, cred: str | None = None) -> tuple[str, int]:
        self._require(cred, "start a Nuwa replica")
        port = await self.server.start(self.host, port)
        addr = (self.host, port)  # what we bound is what clients and peers dial
        self.server.addresses.setdefault(self.server.id, addr)  # known before peers are published
        return addr

    async def set_peers(self, addresses: dict[int, tuple[str, int]],
                        cred: str | None = None) -> None:
        self._require(cred, "set a Nuwa replica's peers")
        self.server.set_peers({int(k): tuple(v) for k, v in addresses.items()})

    async def status(self) -> dict:
        st = self.server.status()
        st["role"] = getattr(st.get("role"), "name", st.get("role"))
        st["pid"] = os.getpid()  # fault tests and the benchmark kill or pause this process
        return st

    async def events_since(self, seq: int = 0, cred: str | None = None) -> dict:
        """This process's events after ``seq`` (FuxiMaster's event log pulls them)."""
        from base import events

        self._require(cred, "read a Nuwa replica's events")
        return events.report(seq)

    async def metrics(self) -> str:
        """This replica's metrics as Prometheus text (numbers only: no cred needed)."""
        st = self.server.status()
        st["role"] = getattr(st.get("role"), "name", st.get("role"))
        _set_gauges(st)
        return metrics.REGISTRY.render()

    async def zk_set_keys(self, proof: str, doc: dict) -> int:
        """Zhongkui's keys after a rotation (from FuxiMaster)."""
        return self.server.guard.accept_keys(proof, doc)

    async def stop(self, cred: str | None = None) -> None:
        self._require(cred, "stop a Nuwa replica")
        await self.server.stop()

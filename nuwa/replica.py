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

import ray

from nuwa.io.server import ReplicaServer, ServerConfig


LOOPBACK = "127.0.0.1"
NODE_IP = "node"  # as a host: the address Ray knows the replica's node by


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

    async def zk_set_keys(self, proof: str, doc: dict) -> int:
        """Zhongkui's keys after a rotation (from FuxiMaster)."""
        return self.server.guard.accept_keys(proof, doc)

    async def stop(self, cred: str | None = None) -> None:
        self._require(cred, "stop a Nuwa replica")
        await self.server.stop()

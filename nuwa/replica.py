"""The Ray shell of a Nuwa replica: an async actor (no CPU reserved) hosting a ``ReplicaServer``.

All Raft and client traffic goes over the server's own TCP socket. Ray is used only to place
the replica on a node, start it, hand it its peers' addresses, ask its status, and stop it.
"""

from __future__ import annotations

import ray

from nuwa.server import ReplicaServer, ServerConfig


@ray.remote(num_cpus=0, max_concurrency=64)
class NuwaReplica:
    def __init__(self, replica_id: int, voters: list[int], data_dir: str,
                 config: ServerConfig | None = None, rejoin: bool = False,
                 auth: dict | None = None):
        self.server = ReplicaServer(replica_id, voters, data_dir, config or ServerConfig(),
                                    rejoin=rejoin, auth=auth,
                                    namespace=ray.get_runtime_context().namespace)

    def _require(self, cred, what: str) -> None:
        """Control calls: the platform's own actors only, when access control is on."""
        from zhongkui.guard import require_platform

        require_platform(self.server.guard, cred, what)

    async def start(self, port: int = 0, cred: str | None = None) -> tuple[str, int]:
        self._require(cred, "start a Nuwa replica")
        port = await self.server.start("0.0.0.0", port)
        addr = (ray.util.get_node_ip_address(), port)
        self.server.addresses.setdefault(self.server.id, addr)  # known before peers are published
        return addr

    async def set_peers(self, addresses: dict[int, tuple[str, int]],
                        cred: str | None = None) -> None:
        self._require(cred, "set a Nuwa replica's peers")
        self.server.set_peers({int(k): tuple(v) for k, v in addresses.items()})

    async def status(self) -> dict:
        st = self.server.status()
        st["role"] = getattr(st.get("role"), "name", st.get("role"))
        return st

    async def zk_set_keys(self, proof: str, doc: dict) -> int:
        """Zhongkui's keys after a rotation (from FuxiMaster)."""
        return self.server.guard.accept_keys(proof, doc)

    async def stop(self, cred: str | None = None) -> None:
        self._require(cred, "stop a Nuwa replica")
        await self.server.stop()

"""A Kuafu proxy with access control on, over a real one-replica Nuwa, in this process (no
Ray): what the ownership and raw-wire tests run against.

``AuthedCluster`` holds the Nuwa replica and proxy on their own event-loop threads, the
cluster's keyring (tokens for any user, group or scope), FuxiMaster's registration records
written the way FuxiMaster writes them (``fuxi.io.store.NuwaStore``), and servers attached with a
given token."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import kuafu
from kuafu.io.loops import LoopThread
from kuafu.io.proxy import ProxyCore
from kuafu.io.server import Server
from tests.kuafu.services import Svc
from zhongkui.guard import Guard, Principal
from zhongkui.keys import Keyring

WAIT_S = 20.0  # any wait in these tests


class AuthedCluster:
    def __init__(self, **proxy_kw):
        from nuwa.io.server import ReplicaServer

        self.dir = tempfile.mkdtemp(prefix="kza-", dir="/tmp")  # socket paths stay short
        self.ring = Keyring.new()
        self.auth = {"enabled": True, "keys": self.ring.to_doc()}
        self.nuwa_loop = LoopThread("test-nuwa")
        self.replica = ReplicaServer(1, [1], os.path.join(self.dir, "nuwa"))
        port = self.nuwa_loop.run(self.replica.start("127.0.0.1"), WAIT_S)
        self.nuwa = [("127.0.0.1", port)]
        self.nuwa_loop.call(self.replica.set_peers, WAIT_S, {1: self.nuwa[0]})
        self._wait_leader()
        self.proxy_kw = proxy_kw
        self.loop = LoopThread("test-proxy")
        self.servers: list[tuple[LoopThread, Server]] = []
        self.core = None
        self.start_proxy()

    def _wait_leader(self) -> None:
        from nuwa.client import connect

        deadline = time.time() + WAIT_S
        while True:
            try:
                with connect(self.nuwa, timeout_s=2) as c:
                    c.exists("/")
                return
            except Exception:  # noqa: BLE001 - not elected yet
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

    def start_proxy(self) -> ProxyCore:
        if self.core is not None:
            self.loop.run(self.core.stop(), WAIT_S)
        self.core = ProxyCore("tp", host="127.0.0.1", port=0,
                              uds=os.path.join(self.dir, "p.sock"), nuwa=self.nuwa,
                              guard=Guard(self.auth, name="kuafu-test"), **self.proxy_kw)
        self.loop.run(self.core.start(), WAIT_S)
        return self.core

    @property
    def uds(self) -> str:
        return f"unix://{self.core.uds}"

    @property
    def tcp(self) -> str:
        return self.core.tcp_address

    def token(self, user: str, groups=(), ttl_s: float = 600.0, scope: dict | None = None,
              now: float | None = None) -> str:
        return self.ring.sign(user, groups, now=time.time() if now is None else now,
                              ttl_s=ttl_s, scope=scope)

    def service_token(self, user: str, service: str) -> str:
        """What FuxiMaster gives a service's replicas."""
        return self.token(user, scope={"kind": "service", "id": service})

    def register_fuxi_service(self, name: str, owner: str) -> None:
        """FuxiMaster's records of a registered service, as `fuxi service register` leaves
        them in Nuwa (the service manager's desired state and the owner record)."""
        from fuxi.io.store import NuwaStore
        from nuwa.client import connect

        with connect(self.nuwa, creator="fuxi-master") as c:
            store = NuwaStore(c)
            store.put(f"/services/{name}", {"name": name, "replicas": 1})
            store.put(f"/service-owners/{name}", Principal(owner).to_doc())

    def remove_fuxi_service(self, name: str) -> None:
        from fuxi.io.store import NuwaStore
        from nuwa.client import connect

        with connect(self.nuwa, creator="fuxi-master") as c:
            NuwaStore(c).delete(f"/services/{name}")

    def attach(self, service: str, token: str, tag: str = "s", address: str | None = None):
        """A server of ``service`` attached with ``token``; raises what the proxy said."""
        lt = LoopThread("test-server")
        srv = Server({service: Svc(tag)})
        srv.credentials = token
        try:
            lt.run(srv.attach(address or self.uds), WAIT_S)
        except BaseException:
            lt.run(srv.stop(0.1), WAIT_S)
            lt.stop()
            raise
        self.servers.append((lt, srv))
        return srv

    def detach(self, srv: Server) -> None:
        for i, (lt, s) in enumerate(self.servers):
            if s is srv:
                lt.run(srv.stop(1.0), WAIT_S)
                lt.stop()
                del self.servers[i]
                return

    def call(self, service: str, token: str, method: str = "who", message=b"",
             address: str | None = None, timeout_s: float = 5.0):
        with kuafu.connect(address or self.uds, service=service, credentials=token) as c:
            return c.call(method, message, timeout_s=timeout_s)

    def endpoints(self, service: str) -> list[dict]:
        return self.loop.call(lambda: [e.describe() for e in self.core.endpoints.all(service)],
                              WAIT_S)

    def close(self) -> None:
        for lt, srv in list(self.servers):
            try:
                lt.run(srv.stop(0.5), WAIT_S)
            finally:
                lt.stop()
        self.servers.clear()
        try:
            self.loop.run(self.core.stop(), WAIT_S)
        finally:
            self.loop.stop()
            try:
                self.nuwa_loop.run(self.replica.stop(), WAIT_S)
            finally:
                self.nuwa_loop.stop()
                shutil.rmtree(self.dir, ignore_errors=True)

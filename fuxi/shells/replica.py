"""A service replica: one Ray actor holding one instance of the service's class, serving its
methods through Kuafu.

The actor constructs the object (``class(**config)``) and a Kuafu ``Server`` on an event-loop
thread of its own, but does not attach to the node's proxy until the service manager has seen
its first health check pass and calls ``register``: only a ready replica becomes an endpoint.
``drain`` unregisters it (the proxy routes no new call to it, and calls that waited at the
proxy for room go to another replica unsent), lets the calls it received finish for the grace
period (``drain_grace_s``), then detaches: a drain never makes the proxy resend a call that
may have run, so non-idempotent methods see no failure and no duplicate.

With access control on, ``register`` and ``drain`` change what callers reach, so they take the
replica's *control key* (issue 14, defect 8): FuxiMaster derives it from a secret of its own
(``control_key``) and gives the replica only its SHA-256 at creation, so neither Ray's record of
the creation arguments nor a caller who reads it learns the key. A restarted FuxiMaster
derives the same key for the replicas it adopts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os

import ray

REGISTER_TIMEOUT_S = 30.0
SERVICE_STATS_TIMEOUT_S = 10.0
REPLICA_PREFIX = "fuxi-svc-"
CONTROL_SECRET_BYTES = 32


def control_key(secret: bytes, rid: str) -> str:
    """The key that lets FuxiMaster (and only it) register and drain replica ``rid``."""
    return hmac.new(secret, b"fuxi-replica-control\0" + rid.encode(), hashlib.sha256).hexdigest()


def control_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def replica_name(rid: str) -> str:
    return REPLICA_PREFIX + rid


@ray.remote(max_restarts=0, max_concurrency=8)
class ServiceReplica:
    def __init__(self, cluster: str, spec: dict, rid: str, control: str = ""):
        import kuafu
        from fuxi.core.spec import resolve_fn
        from kuafu.io.loops import LoopThread

        self.cluster, self.spec, self.rid = cluster, spec, rid
        from fuxi.shells import tasklogs

        # Everything this process prints or logs, from any thread, is the replica's (issue 18).
        self._sink = tasklogs.open_replica(cluster, spec["name"], rid)
        if self._sink is not None:
            tasklogs.begin(self._sink)
        workdir = spec.get("workdir")
        if workdir:  # this process is the replica's own: its cwd and path are ours to set
            import sys

            os.chdir(workdir)
            if workdir not in sys.path:
                sys.path.insert(0, workdir)
        cls = resolve_fn(spec["class"])
        self.obj = cls(**spec.get("config", {}))
        method = spec["health_check"]["method"]
        if method is None and callable(getattr(self.obj, "check_health", None)):
            method = "check_health"
        self.check_fn = getattr(self.obj, method) if method else None
        self.loop = LoopThread(f"svc-{rid}")
        self.server = kuafu.Server(max_concurrency=spec["max_concurrency"],
                                   queue_max=spec["queue_max"])
        # A canary's replicas register their share of the calls (``traffic_share``, percent;
        # fuxi.core.servicecore): the proxies route by it.
        self.server.add(spec["name"], self.obj, version=str(spec["version"]),
                        share=spec.get("traffic_share"))
        self.endpoint = ""
        self._control = control  # SHA-256 of the control key; "" with access control off

    def _require_control(self, key, what: str) -> None:
        from zhongkui.errors import Denied

        if not self._control:
            return
        if not isinstance(key, str) or not hmac.compare_digest(control_digest(key),
                                                                 self._control):
            raise Denied(f"{what} replica {self.rid}: FuxiMaster's control key is required "
                         f"(only the service manager registers and drains replicas)")

    def info(self) -> dict:
        return {"rid": self.rid, "version": self.spec["version"], "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id(), "endpoint": self.endpoint,
                "share": self.spec.get("traffic_share")}

    def check(self) -> bool:
        """Run the health check; raises (or returns False) when unhealthy."""
        if self.check_fn is None:
            return True
        out = self.check_fn()
        if asyncio.iscoroutine(out):
            out = self.loop.run(out, self.spec["health_check"]["timeout_s"])
        if out is False:
            raise RuntimeError(f"{self.spec['health_check']['method'] or 'check_health'} "
                               f"returned False")
        return True

    def register(self, token: str = "", control: str = "") -> str:
        """Attach to the node's proxy as the service's owner (``token``, scoped to this
        service; the replica's own calls to the platform use it too)."""
        self._require_control(control, "register")
        if token:
            from zhongkui import creds

            creds.set_token(token)
            self.server.credentials = token
        if not self.endpoint:
            from kuafu.deploy import local_proxy

            address = local_proxy(self.cluster)
            eps = self.loop.run(self.server.attach(address), REGISTER_TIMEOUT_S)
            self.endpoint = eps[self.spec["name"]]
        return self.endpoint

    def drain(self, grace_s: float, control: str = "") -> None:
        self._require_control(control, "drain")
        self.loop.run(self.server.stop(grace_s), grace_s + REGISTER_TIMEOUT_S)
        self.endpoint = ""

    def stats(self) -> dict:
        return self.loop.call(self.server.stats, SERVICE_STATS_TIMEOUT_S)[self.spec["name"]]

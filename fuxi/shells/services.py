"""The service manager: FuxiMaster's reconcile loop for online services (the Ray shell around
``fuxi.core.servicecore``).

Every ``RECONCILE_S`` it asks each service's core what to do and does it: start replica actors
(``fuxi.shells.replica.ServiceReplica``, on the node the core chose, with the spec's resources),
drain them, kill them. A started replica becomes READY once its constructor has run, its first
health check has passed and it is registered with its node's Kuafu proxy. READY replicas are
health-checked every ``health_check.period_s``; a Ray call that finds the actor dead reports it
died. The desired state of each service is kept in FuxiMaster's store (Nuwa under `fuxi up`)
at ``/services/<name>``, and replicas are named actors, so a restarted FuxiMaster finds both
again. Who registered each service (its owner, ``/service-owners/<name>``) is kept here too.

Nothing here blocks FuxiMaster's event loop: the store is an ``AsyncStore``
(``fuxi.shells.offloop``), and Ray's control-plane look-ups run on threads."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from base import actors, events, metrics
from fuxi.shells.clusterlog import forward_service_events
from fuxi.errors import BadInput
from fuxi.shells.replica import (REPLICA_PREFIX, ServiceReplica, control_digest, control_key,
                          replica_name)
from fuxi.core.autoscale import Autoscaler, replica_load
from fuxi.core.hotnodes import hot_last
from fuxi.core.servicecore import READY, ServiceCore

logger = logging.getLogger(__name__)
REPLICA_DEATHS = metrics.counter("fuxi_service_replica_deaths_total",
                                 "Service replicas found dead (their process or node); each is "
                                 "replaced.", labels=("service",), series_max=1000)

RECONCILE_S = 0.25
STATS_EVERY_S = 2.0
SERVICES_MAX = 1000
DRAIN_CALL_TIMEOUT_S = 30.0     # a drain call to a replica, beyond its own grace
NODES_REFRESH_S = 1.0     # how stale the node view used for placement (jobs and services) may be
REPLICA_STATS_TIMEOUT_S = 5.0     # one replica's stats
ADOPT_TIMEOUT_S = 10.0    # asking a replica found after a restart who it is
KEY = "/services/"
OWNERS_KEY = "/service-owners/"  # who registered each service: {"user", ...} (Principal.to_doc)
KUAFU_CLAIMS_PATH = "/kuafu/claims/"  # names claimed at Kuafu by their first attacher (kuafu.io.proxy)
# Scale to zero (fuxi.core.autoscale, kuafu.core.coldhold): while a service with min_replicas
# 0 has no ready replica, every Kuafu proxy is told so each COLD_POLL_S (it holds the
# service's calls for ASLEEP_TTL_S after the last word) and answers with the calls it holds.
COLD_POLL_S = 0.2
ASLEEP_TTL_S = 5.0
COLD_CALL_TIMEOUT_S = 5.0      # one proxy's answer
PROXIES_REFRESH_S = 5.0        # how stale the list of Kuafu proxies may be


def replica_control_secret(data_dir: str | None) -> bytes:
    """The secret the replicas' control keys derive from (``fuxi.shells.replica.control_key``;
    used with access control on): a 0600 file beside the cluster's keys, so a restarted
    FuxiMaster can still register and drain the replicas it adopts."""
    from fuxi.shells.replica import CONTROL_SECRET_BYTES

    if not data_dir:
        return secrets.token_bytes(CONTROL_SECRET_BYTES)  # no restart to survive
    from zhongkui.files import load_or_create_secret

    return load_or_create_secret(os.path.join(data_dir, "zhongkui", "replica-control.secret"),
                                 CONTROL_SECRET_BYTES, "replica control secret")


class ServiceManager:
    def __init__(self, cluster: str, namespace: str, store, detached: bool, token_for=None,
                 control_secret: bytes | None = None, platform_cred=None):
        """``store``: an ``AsyncStore``; read here through its blocking side (before the
        actor serves)."""
        self.cluster, self.namespace, self.store, self.detached = cluster, namespace, store, detached
        # With access control on: the secret replicas' control keys derive from (register and
        # drain need the key; fuxi.shells.replica). None: replicas take control calls from anyone.
        self.control_secret = control_secret
        self.token_for = token_for or (lambda name: "")  # a replica's token, by service
        self.platform_cred = platform_cred or (lambda: None)  # for the proxies' `cold`
        # Scale to zero: decisions to 0 waiting for the proxies to hear "asleep" first, the
        # proxies (refreshed every PROXIES_REFRESH_S) and one poll of them at a time.
        self._zeroing: dict[str, object] = {}
        self._proxies: dict = {}
        self._proxies_at = 0.0
        self._cold_at = 0.0
        self._cold_running = False
        self.cores: dict[str, ServiceCore] = {}
        self._forwarded: dict[str, int] = {}  # service -> core event lines sent to the log
        self.handles: dict[str, object] = {}
        self.busy: set[str] = set()          # replicas with a start/check/drain in progress
        self.checked: dict[str, float] = {}  # replica -> last health check
        self.stats: dict[str, dict] = {}     # replica -> last Kuafu stats
        self.rates: dict[str, float] = {}    # service -> calls/s over the last stats period
        self._served: dict[str, tuple[float, int]] = {}
        # Replicas following the load (fuxi.core.autoscale): one autoscaler per autoscaled
        # service, fed each stats sweep; the previous sample of each replica and its time.
        self.autoscalers: dict[str, Autoscaler] = {}
        self._stats_at_of: dict[str, float] = {}
        self.saved: dict[str, str] = {}
        self._task = None
        self._stats_at = 0.0
        self._stats_running = False  # one stats sweep at a time
        self._node_cpu: dict[str, float] = {}
        self._nodes_at = 0.0
        self.leaving: frozenset[str] = frozenset()  # draining nodes (fuxi.shells.drains sets it)
        self.hot_nodes: frozenset[str] = frozenset()  # loaded well above peers (shells.hotnodes)
        self.adopted: set[str] = set()  # replicas found running, to check before they count
        self._saving: dict[str, asyncio.Future] = {}  # service -> its reconcile write in flight
        self._save_lock = asyncio.Lock()  # the API's writes of desired state, in call order
        for key in store.sync.list(KEY):
            doc = store.sync.get(key)
            if doc:
                core = ServiceCore.from_desired(doc)
                self.cores[core.name] = core
                self.saved[core.name] = json.dumps(doc, sort_keys=True)
        # service -> its owner's document; FuxiMaster is the only writer, so this is the truth
        self.owners: dict[str, dict] = {}
        for key in store.sync.list(OWNERS_KEY):
            doc = store.sync.get(key)
            if doc:
                self.owners[key[len(OWNERS_KEY):]] = doc

    async def _adopt(self) -> None:
        """Replica actors still running from before a FuxiMaster restart (awaited before the
        first reconcile step: the loop must not start replicas it already has)."""
        from ray.util import list_named_actors

        def found() -> list:  # GCS look-ups block: run on a thread
            out = []
            for a in list_named_actors(True):
                if a.get("namespace") == self.namespace and a["name"].startswith(REPLICA_PREFIX):
                    try:
                        out.append((a["name"], ray.get_actor(a["name"], namespace=self.namespace)))
                    except Exception:  # noqa: BLE001 - gone meanwhile
                        continue
            return out

        now = time.time()
        for actor_name, h in await asyncio.to_thread(found):
            rid = actor_name[len(REPLICA_PREFIX):]
            name = rid.rsplit("-", 1)[0]
            core = self.cores.get(name)
            try:
                info = await asyncio.wait_for(h.info.remote(), ADOPT_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - gone meanwhile
                continue
            if core is None:
                ray.kill(h)  # a replica of a service nobody wants any more
                continue
            core.adopt(rid, info["version"], info["node"], now, info.get("share"))
            self.handles[rid] = h
            self.adopted.add(rid)

    def _control(self, rid: str) -> str:
        return control_key(self.control_secret, rid) if self.control_secret else ""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_event_loop().create_task(self._run())

    @property
    def started(self) -> bool:
        return self._task is not None

    # ------------------------------------------------------------ the API FuxiMaster exposes
    def owner(self, name) -> str | None:
        """The user who registered service ``name`` (None: nobody, or not a name)."""
        doc = self.owners.get(name) if isinstance(name, str) else None
        return doc.get("user") if doc else None

    async def register(self, spec: dict, owner: dict | None = None) -> dict:
        """A new service, owned by ``owner`` (a ``Principal.to_doc()``; FuxiMaster checked
        that the caller may register it)."""
        out = await self._register(spec)
        if owner is not None:
            await self.store.put(OWNERS_KEY + spec["name"], owner)
            self.owners[spec["name"]] = owner
        return out

    async def _register(self, spec: dict) -> dict:
        if spec["name"] in self.cores:
            raise BadInput(f"service {spec['name']!r} is already registered; use `fuxi service "
                           f"upgrade` to change it or `fuxi service remove` first")
        if len(self.cores) >= SERVICES_MAX:
            raise BadInput(f"{SERVICES_MAX} services are registered (SERVICES_MAX)")
        core = ServiceCore(spec)
        core._event(time.time(), f"registered version {core.version} with "
                                 f"{spec['replicas']} replicas")
        self.cores[core.name] = core
        await self._save(core)
        return self.status(core.name)

    async def claimed_by(self, name: str) -> str | None:
        """Who claimed ``name`` at Kuafu by attaching it before any registration (None: no
        one, or no Nuwa): registering it over their claim needs `manage` on it."""
        client = getattr(self.store.sync, "client", None)
        if client is None or not isinstance(name, str):
            return None
        from nuwa.errors import NoNode

        try:
            value, _ = await self.store.call(client.get, KUAFU_CLAIMS_PATH + name)
        except NoNode:
            return None
        try:
            user = json.loads(value).get("user")
        except (ValueError, AttributeError):
            user = None
        return user if isinstance(user, str) else "?"

    def _core(self, name: str) -> ServiceCore:
        core = self.cores.get(name)
        if core is None or core.removing:
            raise BadInput(f"no service {name!r}; registered: {sorted(self.cores) or 'none'}")
        return core

    async def upgrade(self, spec, traffic: dict | None = None) -> dict:
        """A new spec (a rolling upgrade), or with ``traffic`` a canary: {"canary": percent}
        runs ``spec`` beside the current version with that share of the calls;
        {"promote": True} or {"rollback": True} (``spec``: the service's name) ends it."""
        if traffic is None:
            core = self._core(spec["name"])
            if core.canary is not None:
                raise BadInput(f"service {core.name!r} runs a canary of version "
                               f"{core.canary['spec']['version']}; `fuxi service promote` or "
                               f"`fuxi service rollback` it before an upgrade")
            auto = spec.get("autoscaling")
            if auto and core.spec.get("autoscaling"):  # the autoscaler's count goes on
                spec = dict(spec, replicas=min(max(int(core.spec["replicas"]),
                                                   auto["min_replicas"]), auto["max_replicas"]))
            core.upgrade(spec, time.time())
        else:
            core = self._traffic(spec, traffic)
        await self._save(core)
        return self.status(core.name)

    def _traffic(self, spec, traffic) -> ServiceCore:
        """Start, promote or roll back a canary (``upgrade`` with ``traffic``)."""
        keys = sorted(traffic) if isinstance(traffic, dict) else None
        if keys not in (["canary"], ["promote"], ["rollback"]):
            raise BadInput(f"traffic {traffic!r:.80}: expected {{'canary': percent}}, "
                           f"{{'promote': True}} or {{'rollback': True}}")
        name = spec["name"] if isinstance(spec, dict) else spec
        core = self._core(name)
        try:
            if keys == ["canary"]:
                if not isinstance(spec, dict):
                    raise ValueError("a canary needs the new version's spec")
                core.start_canary(spec, traffic["canary"], time.time())
            elif keys == ["promote"]:
                core.promote_canary(time.time())
            else:
                core.rollback_canary(time.time())
        except ValueError as e:
            raise BadInput(str(e)) from None
        return core

    async def scale(self, name: str, replicas: int) -> dict:
        from fuxi.core.service_spec import REPLICAS_MAX

        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= REPLICAS_MAX:
            raise BadInput(f"replicas={replicas!r}: expected 0..{REPLICAS_MAX}")
        core = self._core(name)
        auto = core.spec.get("autoscaling")
        if auto:
            raise BadInput(f"service {name!r} is autoscaled ({auto['min_replicas']}.."
                           f"{auto['max_replicas']} replicas): its autoscaler sets the count; "
                           f"change min_replicas/max_replicas with `fuxi service upgrade`")
        core.scale(replicas, time.time())
        await self._save(core)
        return self.status(name)

    async def remove(self, name: str) -> dict:
        core = self._core(name)
        core.remove(time.time())
        await self._save(core)
        return self.status(name)

    def slot_demands(self) -> list[tuple[str, dict, int, dict]]:
        """What online replicas need from FuxiMaster's ledger, per (service, version):
        (demand id, shape, slots wanted, {node: slots held by live replicas})."""
        from fuxi.core.spec import ResourceSpec
        from fuxi.core.servicecore import LIVE

        out = []
        for core in self.cores.values():
            versions = {r.version for r in core.replicas.values()} | {core.version}
            for v in sorted(versions):
                spec = core._spec_of(v)
                shape = ResourceSpec.model_validate(spec["resources"]).ray_shape()
                if not shape:
                    continue  # needs nothing: no slot
                live = [r for r in core.replicas.values() if r.version == v and r.state in LIVE]
                held: dict[str, int] = {}
                for r in live:
                    if r.placed and r.node is not None:  # not yet: it waits for room
                        held[r.node] = held.get(r.node, 0) + 1
                wanted = len(live)
                if v == core.version and not core.removing:
                    surge = core.spec["rollout"]["max_surge"] if core.rollout.get(
                        "state") == "rolling" else 0
                    wanted = max(wanted, int(core.spec["replicas"]) + int(surge))
                out.append((f"svc:{core.name}@{v}", shape, wanted, held))
        return out

    def list(self) -> list[dict]:
        return [self._summary(c) for c in self.cores.values()]

    def _summary(self, core: ServiceCore) -> dict:
        c = core.counts()
        return {"name": core.name, "version": core.version, "desired": core.spec["replicas"],
                "ready": c[READY], "starting": c["starting"], "draining": c["draining"],
                "failed": c["failed"], "removing": core.removing,
                "rollout": core.rollout.get("state", ""),
                "canary": None if core.canary is None else {
                    "version": core.canary["spec"]["version"],
                    "percent": core.canary["percent"],
                    "replicas": core.canary_replicas_wanted()},
                "requests_per_s": round(self.rates.get(core.name, 0.0), 1)}

    def status(self, name: str) -> dict:
        core = self.cores.get(name)
        if core is None:
            raise BadInput(f"no service {name!r}; registered: {sorted(self.cores) or 'none'}")
        replicas = []
        served = failed = 0
        for r in sorted(core.replicas.values(), key=lambda r: r.created_at):
            st = self.stats.get(r.rid, {})
            served += st.get("served", 0)
            failed += st.get("failed", 0)
            replicas.append({"replica": r.rid, "version": r.version, "state": r.state,
                             "share": r.share,
                             "health": "ok" if r.state == READY and not r.failures else
                             (f"{r.failures} failed checks" if r.state == READY else r.state),
                             "node": r.node, "reason": r.reason,
                             "served": st.get("served", 0), "errors": st.get("failed", 0),
                             "p50_ms": st.get("p50_ms"), "p99_ms": st.get("p99_ms")})
        p99s = [x["p99_ms"] for x in replicas if x["p99_ms"] is not None]
        auto = core.spec.get("autoscaling")
        scaler = self.autoscalers.get(name)
        autoscaling = None
        if auto:
            autoscaling = (scaler or Autoscaler()).view(auto, int(core.spec["replicas"]))
        return dict(self._summary(core), spec=core.spec, replicas=replicas,
                    autoscaling=autoscaling,
                    requests=served, errors=failed,
                    p99_ms_max=max(p99s) if p99s else None,
                    rollout_detail=core.rollout, events=core.events[-30:])

    # ------------------------------------------------------------ the loop
    async def _run(self) -> None:
        try:
            await self._adopt()
        except Exception:  # noqa: BLE001 - adopt what we can; the rest is started anew
            logger.exception("adopting running replicas failed")
        while True:
            try:
                # Ray's node table is a blocking GCS call: asked off the event loop.
                if self.cores and time.time() - self._nodes_at >= NODES_REFRESH_S:
                    await asyncio.to_thread(self._nodes, time.time())
                await self._tick()
            except Exception:  # noqa: BLE001 - one bad step must not stop the manager
                logger.exception("service reconcile step failed")
            await asyncio.sleep(RECONCILE_S)

    def _nodes(self, now: float) -> dict[str, float]:
        """Free CPU per alive node, asked of Ray at most every NODES_REFRESH_S (not every
        reconcile step)."""
        if now - self._nodes_at < NODES_REFRESH_S:
            return self._node_cpu
        try:
            free = actors.available_resources_per_node()
        except Exception:  # noqa: BLE001 - fall back to totals
            free = {}
        out = {}
        for n in ray.nodes():
            if n.get("Alive"):
                out[n["NodeID"]] = float(free.get(n["NodeID"], n.get("Resources", {})).get("CPU", 0.0))
        self._node_cpu, self._nodes_at = out, now
        return out

    async def _tick(self) -> None:
        now = time.time()
        # refreshed off the loop by _run; hot nodes' room hidden while others have some
        nodes = hot_last(self._node_cpu, self.hot_nodes) if self.cores else {}
        for name, core in list(self.cores.items()):
            forward_service_events(name, core, self._forwarded)  # the cluster's event log
            for act in core.plan(now, nodes, self.leaving, self.hot_nodes):
                if act.kind == "start":
                    events.emit("fuxi.services", "replica_placed", f"service {name}: {act.rid} "
                                f"placed on node {(act.node or 'any')[:12]}", service=name,
                                replica=act.rid, node=act.node)
                    cpu = float(act.spec["resources"].get("cpu") or 0.0)
                    # Pinned where there is room now (Ray's soft affinity does not always
                    # honour the node); left to Ray where the replica must wait for room.
                    hard = act.node is not None and nodes.get(act.node, 0.0) + 1e-9 >= cpu
                    self._spawn(core, act.rid, self._start(core, act.rid, act.node, act.spec,
                                                           hard))
                    self._nodes_at = 0.0  # the room it takes shows in the next view
                elif act.kind == "drain":
                    self._spawn(core, act.rid, self._drain(core, act.rid, act.grace_s))
                elif act.kind == "kill":
                    h = self.handles.pop(act.rid, None)
                    if h is not None:
                        ray.kill(h)
                    core.stopped(act.rid, now)
            for rid in [r.rid for r in core.replicas.values() if r.rid in self.adopted]:
                if rid not in self.busy:
                    self.adopted.discard(rid)
                    self._spawn(core, rid, self._readopt(core, rid))
            for r in list(core.replicas.values()):
                period = core._spec_of(r.version)["health_check"]["period_s"]
                if (r.state == READY and r.rid not in self.busy
                        and now - self.checked.get(r.rid, 0.0) >= period):
                    self._spawn(core, r.rid, self._check(core, r.rid))
            if core.gone:
                # Deleted before the core goes (rare): a register of the name meanwhile is
                # refused as a duplicate, so its write cannot race this delete.
                await self.store.delete(KEY + name)
                del self.cores[name]
                self.saved.pop(name, None)
                self.autoscalers.pop(name, None)
                continue
            doc = core.desired_doc()
            if self.saved.get(name) != json.dumps(doc, sort_keys=True):
                self._write_later(name, doc)
        if now - self._cold_at >= COLD_POLL_S and not self._cold_running and self._sleepy():
            self._cold_at = now
            self._cold_running = True
            asyncio.get_event_loop().create_task(self._cold_poll())
        if now - self._stats_at >= STATS_EVERY_S and not self._stats_running:
            self._stats_at = now
            self._stats_running = True
            asyncio.get_event_loop().create_task(self._refresh_stats(now))

    def _spawn(self, core: ServiceCore, rid: str, coro) -> None:
        self.busy.add(rid)

        async def run():
            try:
                await coro
            except Exception:  # noqa: BLE001 - each helper reports to the core itself
                logger.exception("service %s replica %s: step failed", core.name, rid)
            finally:
                self.busy.discard(rid)
        asyncio.get_event_loop().create_task(run())

    def _write_later(self, name: str, doc: dict) -> None:
        """The reconcile loop's writes of desired state go to the store on a thread (Nuwa may
        be electing a leader: the loop must not wait for it), one per service at a time, the
        newest state winning."""
        if name in self._saving:
            return  # the write in flight is followed by the newest state when it ends
        text = json.dumps(doc, sort_keys=True)
        fut = asyncio.ensure_future(self.store.put(KEY + name, doc))
        self._saving[name] = fut

        def done(f):
            self._saving.pop(name, None)
            if f.cancelled() or f.exception() is not None:
                logger.warning("saving service %s failed: %r; trying again", name,
                               None if f.cancelled() else f.exception())
                return  # the next reconcile step sees it unsaved and writes again
            if name in self.cores:
                self.saved[name] = text
                now = json.dumps(self.cores[name].desired_doc(), sort_keys=True)
                if now != text:
                    self._write_later(name, self.cores[name].desired_doc())
        fut.add_done_callback(done)

    async def _save(self, core: ServiceCore) -> None:
        doc = core.desired_doc()
        text = json.dumps(doc, sort_keys=True)
        async with self._save_lock:  # one at a time: the newest call's state lands last
            if self.saved.get(core.name) != text:
                await self.store.put(KEY + core.name, doc)
                self.saved[core.name] = text

    async def _start(self, core: ServiceCore, rid: str, node: str | None, spec: dict,
                     hard: bool = False) -> None:
        res = spec["resources"]
        opts = {"name": replica_name(rid), "namespace": self.namespace,
                "num_cpus": float(res.get("cpu") or 0.0)}
        if res.get("memory_mb"):
            opts["memory"] = float(res["memory_mb"]) * 1024 * 1024
        if res.get("custom"):
            opts["resources"] = dict(res["custom"])
        if node is not None:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=not hard)
        if self.detached:
            opts["lifetime"] = "detached"
        if spec.get("runtime_env"):  # shipped code (gcs:// URIs uploaded at register), pip, env
            opts["runtime_env"] = {k: v for k, v in spec["runtime_env"].items() if v}
        h = None
        try:
            h = ServiceReplica.options(**opts).remote(self.cluster, spec, rid,
                                                      control_digest(self._control(rid))
                                                      if self.control_secret else "")
            self.handles[rid] = h
            info = await asyncio.wait_for(h.info.remote(), spec["start_timeout_s"])
            r = core.replicas.get(rid)
            if r is not None:
                r.placed = True
            if r is not None and r.node != info["node"]:
                core._event(time.time(), f"{rid} asked for node {(node or '?')[:12]}, Ray placed "
                                         f"it on {info['node'][:12]}")
                r.node = info["node"]
            await asyncio.wait_for(h.check.remote(), spec["health_check"]["timeout_s"])
            await asyncio.wait_for(h.register.remote(self.token_for(core.name),
                                                     self._control(rid)),
                                   spec["start_timeout_s"])
        except Exception as e:  # noqa: BLE001 - constructor, check or registration failed
            core.start_failed(rid, _short(e), time.time())
            return
        self.checked[rid] = time.time()
        core.ready(rid, time.time())

    async def _readopt(self, core: ServiceCore, rid: str) -> None:
        """A replica that outlived a FuxiMaster restart: healthy and registered (again, if its
        registration was lost) before it counts as READY."""
        h = self.handles.get(rid)
        r = core.replicas.get(rid)
        if h is None or r is None:
            return
        spec = core._spec_of(r.version)
        try:
            await asyncio.wait_for(h.check.remote(), spec["health_check"]["timeout_s"])
            await asyncio.wait_for(h.register.remote(self.token_for(core.name),
                                                     self._control(rid)),
                                   spec["start_timeout_s"])
        except Exception as e:  # noqa: BLE001 - not usable: replaced
            self.handles.pop(rid, None)
            ray.kill(h)
            core.died(rid, f"found after a restart but unusable: {_short(e)}", time.time())
            return
        self.checked[rid] = time.time()
        core.ready(rid, time.time())
        core._event(time.time(), f"{rid} adopted after a FuxiMaster restart")

    async def _check(self, core: ServiceCore, rid: str) -> None:
        h = self.handles.get(rid)
        r = core.replicas.get(rid)
        if h is None or r is None:
            return
        self.checked[rid] = time.time()
        timeout = core._spec_of(r.version)["health_check"]["timeout_s"]
        try:
            await asyncio.wait_for(h.check.remote(), timeout)
        except RayActorError as e:
            self.handles.pop(rid, None)
            REPLICA_DEATHS.inc(service=core.name)
            core.died(rid, _short(e), time.time())
            return
        except asyncio.TimeoutError:
            core.health(rid, False, f"no answer within {timeout:g}s", time.time())
            return
        except Exception as e:  # noqa: BLE001 - the check raised
            core.health(rid, False, _short(e), time.time())
            return
        core.health(rid, True, "", time.time())

    async def _drain(self, core: ServiceCore, rid: str, grace_s: float) -> None:
        h = self.handles.pop(rid, None)
        try:
            if h is not None:
                await asyncio.wait_for(h.drain.remote(grace_s, self._control(rid)),
                                       grace_s + DRAIN_CALL_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - it goes either way
            logger.warning("service %s: draining %s: %s", core.name, rid, _short(e))
        finally:
            if h is not None:
                ray.kill(h)
            self.stats.pop(rid, None)
            self._stats_at_of.pop(rid, None)
            self.checked.pop(rid, None)
            core.stopped(rid, time.time())

    async def _refresh_stats(self, now: float) -> None:
        try:
            await self._refresh_stats_once(now)
        finally:
            self._stats_running = False

    async def _refresh_stats_once(self, now: float) -> None:
        for name, core in list(self.cores.items()):
            total = 0
            loads = []
            for rid in [r.rid for r in core.replicas.values() if r.state == READY]:
                h = self.handles.get(rid)
                if h is None:
                    continue
                try:
                    got = await asyncio.wait_for(h.stats.remote(), REPLICA_STATS_TIMEOUT_S)
                except Exception:  # noqa: BLE001 - a dying replica has no stats
                    continue
                at, prev_at = time.time(), self._stats_at_of.get(rid)
                loads.append(replica_load(self.stats.get(rid) if prev_at else None, got,
                                          at - prev_at if prev_at else 0.0))
                self.stats[rid], self._stats_at_of[rid] = got, at
                total += self.stats[rid]["served"] + self.stats[rid]["failed"]
            prev = self._served.get(name)
            if prev is not None and now > prev[0]:
                self.rates[name] = max(0.0, (total - prev[1]) / (now - prev[0]))
            self._served[name] = (now, total)
            self._autoscale(core, loads, time.time())

    def _autoscale(self, core: ServiceCore, loads: list, now: float) -> None:
        """Feed the service's autoscaler the sweep's numbers; its decision is the new desired
        count (saved by the next reconcile step), with its reason as the core's event."""
        auto = core.spec.get("autoscaling")
        if not auto or core.removing:
            self.autoscalers.pop(core.name, None)
            return
        scaler = self.autoscalers.setdefault(core.name, Autoscaler())
        if core.name in self._zeroing:
            return  # the proxies hear "asleep" before the last replica goes (_cold_poll)
        decision = scaler.step(auto, int(core.spec["replicas"]), loads, now)
        if decision is not None and decision.after == 0 and decision.before > 0:
            self._zeroing[core.name] = decision
        elif decision is not None:
            core.scale(decision.after, now, decision.reason)

    # ------------------------------------------------------------ scale to zero
    def _sleepy(self) -> list[str]:
        """Services whose calls the proxies should hold: autoscaled with min_replicas 0 and
        no ready replica (at zero, or waking), or about to go to zero."""
        out = []
        for name, core in self.cores.items():
            auto = core.spec.get("autoscaling")
            if not auto or core.removing or int(auto["min_replicas"]) != 0:
                continue
            if name in self._zeroing or not any(r.state == READY for r in core.replicas.values()):
                out.append(name)
        return out

    async def _cold_poll(self) -> None:
        try:
            await self._cold_poll_once(time.time())
        except Exception:  # noqa: BLE001 - the next poll tries again
            logger.exception("asking the Kuafu proxies for held calls failed")
        finally:
            self._cold_running = False

    async def _cold_poll_once(self, now: float) -> None:
        from kuafu import deploy

        if now - self._proxies_at >= PROXIES_REFRESH_S or not self._proxies:
            self._proxies = await asyncio.to_thread(deploy.proxies, self.namespace)
            self._proxies_at = time.time()
        sleepy = self._sleepy()
        asleep = {name: ASLEEP_TTL_S for name in sleepy}
        cred = self.platform_cred()
        calls = [asyncio.wait_for(h.cold.remote(asleep, cred), COLD_CALL_TIMEOUT_S)
                 for h in self._proxies.values()]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        told = sum(1 for a in answers if isinstance(a, dict))
        held: dict[str, list[int]] = {}
        for a in answers:
            if isinstance(a, dict):
                for svc, n in a.items():
                    held.setdefault(svc, []).append(int(n))
        # Every proxy that answered now holds new calls: the last replicas may go.
        for name, decision in list(self._zeroing.items()):
            core = self.cores.get(name)
            del self._zeroing[name]
            if core is None or core.removing or name in held:
                continue  # calls arrived meanwhile: it stays up
            if told or not self._proxies:
                core.scale(0, time.time(), decision.reason)
                events.emit("fuxi.services", "service_scaled_to_zero",
                            f"service {name}: scaled to zero ({decision.reason})",
                            service=name)
        for name, ns in held.items():
            core = self.cores.get(name)
            auto = core.spec.get("autoscaling") if core is not None else None
            if not auto or core.removing:
                continue
            scaler = self.autoscalers.setdefault(name, Autoscaler())
            d = scaler.wake(auto, int(core.spec["replicas"]), time.time(),
                            f"{sum(ns)} calls held at {len(ns)} Kuafu proxies")
            if d is not None:
                core.scale(d.after, d.at, d.reason)
                events.emit("fuxi.services", "service_woken",
                            f"service {name}: woken from zero ({d.reason})", service=name)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:500]

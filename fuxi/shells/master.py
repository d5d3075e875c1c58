"""FuxiMaster: the cluster's resource view, slot grants to jobs, and the job registry.

One detached, named actor per cluster (``FuxiMaster`` in namespace ``fuxi-<cluster>``), no CPU.
Policy is pure (``fuxi.core.slots``); this shell keeps the ledger of what it granted, refreshes the
node view from Ray, starts a JobMaster per job, and keeps job records (spec and final status)
in a ``StateStore`` so they outlive the JobMaster.

JobMasters call ``sync`` every heartbeat with their demand and the slots they gave back; the
reply carries new grants (placed on nodes with free room, spread out) and the fair-share
target per shape, which a job over its share meets by returning idle workers.

Composed of the online services (``fuxi.shells.services.ServiceManager``) and the supervisor of
the Nuwa and Kuafu groups (``fuxi.shells.supervisor``). Its event loop never blocks (issue 14,
defect 11): store and Ray control-plane calls are awaited on bounded pools (``.offloop``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from base import events, metrics
from base.cluster import MASTER_NAME
from fuxi.core import blacklist, slots, submits
from fuxi.errors import BadInput, JobNotFound
from fuxi.core.plan import JobPlan
from fuxi.core.states import TERMINAL_JOB, JobState
from fuxi.io.store import FileStore, MemoryStore, read_job_logs
from fuxi.shells import logreads, mastermetrics
from fuxi.shells.admission import DEFAULT_QUEUE
from fuxi.shells.adoption import jobmaster_name, leader_state
from fuxi.shells.agents import Agents
from fuxi.shells.drains import MasterDrains
from fuxi.shells.alerting import Alerting
from fuxi.shells.clusterlog import ClusterEvents, visible_to
from fuxi.shells.jobstory import attempts_of
from fuxi.shells.leadership import Leadership, MasterLink, leader_only
from fuxi.shells.nodetable import refresh_nodes
from fuxi.shells.jobrecords import LOOPS_KEY, drop_old_records, new_job_id, statuses
from fuxi.shells.offloop import GCS_THREADS_MAX, STORE_THREADS_MAX, AsyncStore, OffLoop
from fuxi.shells.quotas import SERVICES_GROUP
from fuxi.shells.recovery import MasterRecovery
from fuxi.shells.supervisor import Supervisor

logger = logging.getLogger(__name__)

JOB_RECORDS_MAX = 10_000  # finished job records kept (oldest dropped first)
JOBMASTER_CALL_TIMEOUT_S = 10.0
SUBMITS_REMEMBERED_MAX = 10_000
JOB_TOKEN_TTL_S = 7 * 24 * 3600.0      # a job's instances act as its submitter this long
SERVICE_TOKEN_TTL_S = 30 * 24 * 3600.0  # a replica's token (renewed at every (re)start)
AUTHORITY_FETCH_TIMEOUT_S = 30.0  # the entries and identities, from the authority, at start
SERVICE_PRIORITY = 1000  # online replicas come before every batch job (priorities 0..100)
LOG_READS_MAX = 2  # `fuxi job logs` file reads in flight at once (off the event loop)
OWNER_LOOKUPS_MAX = 2  # owner lookups for the authority (a Nuwa stat, a Pangu stat) at once

JOBS_ADMITTED = metrics.counter("fuxi_jobs_admitted_total", "Jobs FuxiMaster admitted.")
TERMINAL_STATES = frozenset(s.value for s in TERMINAL_JOB)
JOBS_ENDED = metrics.counter("fuxi_jobs_ended_total", "Jobs that ended, by final state.",
                             labels=("state",))


@ray.remote(num_cpus=0, max_concurrency=256)
@leader_only  # a standby answers NotLeader (fuxi.shells.leadership)
class FuxiMaster:
    def __init__(self, cluster: str, data_dir: str | None, detached: bool = False,
                 nuwa: list | None = None, nuwa_group: dict | None = None, auth: bool = False,
                 name: str = MASTER_NAME, candidates: list | None = None):
        from zhongkui.files import private_files
        from zhongkui.guard import auth_doc
        from zhongkui.keys import Keyring, load_or_create_keys
        from zhongkui.shell import Delegate, fetch_acl_now, make_guard

        private_files()  # logs, state, job logs: 0600/0700 from creation (issue 14)
        self.cluster = cluster
        self.auth_enabled = bool(auth)
        # The cluster's keys (made by `fuxi up` before anything started): they sign this
        # actor's own platform token, which its Nuwa client presents, and its jobs' and
        # services' tokens. One guard holds them; the authority actor (zhongkui.actor)
        # pushes it rotated keys and every change of ACL entries and identities.
        self.keys_path = os.path.join(data_dir, "zhongkui", "keys.json") if data_dir else None
        self.namespace = ns = ray.get_runtime_context().namespace
        self.platform_guard = make_guard(
            auth_doc(self.auth_enabled, None), "master", ns,
            keyring=load_or_create_keys(self.keys_path) if self.keys_path else Keyring.new())
        if self.auth_enabled:  # decide nothing on identities never learned
            fetch_acl_now(self.platform_guard, ns, AUTHORITY_FETCH_TIMEOUT_S)
        self._authority = Delegate(self.platform_guard)  # decisions, trail, scoped tokens
        self.detached = detached  # JobMasters share the master's lifetime
        self._watchers: set = set()
        self.data_dir = data_dir
        if nuwa:  # a `fuxi up` cluster: hard state is replicated in Nuwa
            from nuwa.client import connect as nuwa_connect

            from fuxi.io.store import NuwaStore

            self.store = NuwaStore(nuwa_connect([tuple(a) for a in nuwa], creator="fuxi-master",
                                                token=self.platform_guard.platform_token))
        elif data_dir:
            self.store = FileStore(os.path.join(data_dir, "state"))
        else:
            self.store = MemoryStore()
        # The blocking store (``self.store``) is used before the loop serves and by the
        # identity service; this actor's own calls await it on its own threads.
        self.astore = AsyncStore(self.store, OffLoop("fuxi-store", STORE_THREADS_MAX))
        self.gcs = OffLoop("fuxi-gcs", GCS_THREADS_MAX)  # ray.nodes()
        self._log_reads = OffLoop("fuxi-logs", LOG_READS_MAX)
        self._owner_lookups = OffLoop("fuxi-owners", OWNER_LOOKUPS_MAX)  # Nuwa, Pangu stats
        # Fuxi coordinates the actor groups: the supervisor replaces Nuwa replicas that die.
        self.supervisor = Supervisor(cluster, ns, nuwa, nuwa_group,
                                     lambda: auth_doc(self.auth_enabled, self.platform_guard.keyring))
        self.log_dir = os.path.join(data_dir or tempfile.mkdtemp(prefix="fuxi-master-"), "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.events = ClusterEvents(os.path.join(data_dir, "events") if data_dir else None)
        self.blacklists = blacklist.ClusterBlacklist()  # soft: rebuilt from JobMasters' reports
        self.alerting = Alerting(self.events, ns, data_dir, bool(nuwa), self.store, self.blacklists)
        self.ledger = slots.Ledger()
        self.agents = Agents(self)  # a FuxiAgent per node; its heartbeats feed the blacklist
        self.drains = MasterDrains(self)  # nodes being drained (fuxi.shells.drains)
        self.recovery = MasterRecovery(self)  # checkpoints of jobs, restarts of JobMasters
        self.demands: dict[str, dict[str, dict]] = {}  # job -> shape_key -> {shape, wanted}
        self.priorities: dict[str, int] = {}
        self.submit_seq: dict[str, int] = {}
        self.seq = 0
        self.jobmasters: dict[str, Any] = {}
        self._job_tokens: dict[str, str] = {}  # job -> its scoped token (JobMaster's calls)
        self.runs: dict[str, Any] = {}
        self.requests: dict[str, tuple[str, str]] = {}
        self._submitting: dict[str, asyncio.Future] = {}  # request id -> its submit in flight
        # job -> the user who submitted it, for every stored job (this actor is the only
        # writer of job records: kept here, a permission check never waits for the store)
        self.job_owners: dict[str, str | None] = {}
        self.nodes: dict[str, dict[str, float]] = {}
        self.node_info: dict[str, dict] = {}
        self.nodes_at = 0.0
        self.started_at = time.time()
        # With Nuwa, one of several candidates: the election's winner builds the leader's
        # state and takes over; without, the only one, serving at once (as before).
        self.leadership = Leadership(self, name, candidates or [name], nuwa, self.platform_guard.platform_token,
                                     (FuxiMaster, (cluster, data_dir, detached, nuwa, nuwa_group, auth)))
        me = ray.get_runtime_context().current_actor
        if self.leadership.elected:
            me.campaign.remote()
            return
        leader_state(self, ray.get_runtime_context().was_current_actor_reconstructed)
        if self.adoption.restarted or self.adoption.expected or self.adoption.orphans \
                or self.adoption.queued:  # adopt (or resume, re-queue) the jobs
            me.resume.remote()

    async def campaign(self) -> dict:
        """Enter the election (sent to itself at start; idempotent)."""
        self.leadership.start()
        return self.leadership.info()

    def leader_info(self) -> dict:
        """This candidate's role (answered by standbys too): leading?, term, the leader."""
        return {**self.leadership.info(), "node_id": self.node_id,
                "restarted": ray.get_runtime_context().was_current_actor_reconstructed}

    async def resume(self) -> list[str]:
        """After a restart (or a start on a cluster with jobs running): adopt the running jobs
        and, after a restart, start again the loops the first start was asked to run.
        Idempotent; it changes nothing on a FuxiMaster that neither restarted nor found jobs."""
        return await self._resume()

    async def _resume(self) -> list[str]:
        adopted = await self.adoption.resume(self)
        await self.adoption.requeue(self)
        loops = self.adoption.loops
        if self.adoption.restarted and (loops is None or loops):
            self._pull_events()
            self.alerting.start(self._watchers)
            self.supervisor.start()
            self.services.start()
            if loops is None or loops.get("agents", True):
                self.agents.start()
        return adopted

    # ------------------------------------------------------------ cluster view

    async def _refresh_nodes(self, force: bool = False) -> None:
        await refresh_nodes(self, force)  # fuxi.shells.nodetable
    # ------------------------------------------------------------ identities (Zhongkui)

    def _auth(self):
        """Zhongkui's delegate here: decisions on jobs and services, the trail, scoped tokens
        (the authority itself is its own actor, zhongkui.actor)."""
        return self._authority

    def _require(self, cred, what: str, admin_ok: bool = False):
        """A control method of this actor: the platform's own actors (or administrators,
        with ``admin_ok``) only, when access control is on (issue 14, defect 8). A refusal
        reaches the trail through the guard."""
        if not self.auth_enabled:
            return None
        from zhongkui.guard import require_platform

        return require_platform(self.platform_guard, cred, what, admin_ok=admin_ok)

    def _who(self, cred):
        """The verified caller of a job or service operation (a bad token reaches the
        trail through the guard)."""
        return self._auth().principal(cred)

    def zk_set_keys(self, proof: str, doc: dict) -> int:
        """Zhongkui's keys after a rotation (from the authority)."""
        return self.platform_guard.accept_keys(proof, doc)

    async def zk_set_acl(self, proof: str, doc: dict) -> int:
        """The ACL entries and identities after a change (from the authority, before it
        answers the change); a standby hands them on to the leader too (it is told by
        FuxiMaster's first name)."""
        version = self.platform_guard.accept_acl(proof, doc)
        await self.leadership.pass_on("zk_set_acl", proof, doc)
        return version

    async def owner_of(self, proof: str, kind: str, resource: str) -> str | None:
        """Who owns a resource, for the authority deciding who may grant access to it (the
        platform's own actors only). A Nuwa or Pangu lookup blocks: it runs off the loop."""
        self._require(proof, "look up a resource's owner")
        return await self._owner_lookups.run(self._owner_of, kind, resource)

    def _job_owner(self, job_id: str) -> str | None:
        return self.job_owners.get(job_id)  # every stored job is here (loaded at start)

    def _may(self, who, job_id: str, perm: str) -> bool:
        a = self._auth()
        return (a.guard.decision(who, "job", job_id, perm, self._job_owner(job_id)).allowed
                or a.guard.decision(who, "queue",
                                    self.admissions.job_queues.get(job_id, DEFAULT_QUEUE),
                                    perm).allowed)

    def _check_job(self, cred, job_id: str, perm: str):
        who = self._who(cred)
        if not self._may(who, job_id, perm):
            if job_id not in self.job_owners and job_id not in self.jobmasters:
                raise JobNotFound(f"no job with id {job_id!r}; `fuxi job list` shows the known "
                                  f"jobs")
            self._auth().check(who, "job", job_id, perm, self._job_owner(job_id))
        return who

    def _service_owner(self, name: str) -> str | None:
        return self.services.owner(name)

    def _check_service(self, cred, name: str, perm: str):
        who = self._who(cred)
        a = self._auth()
        owner = self._service_owner(name)
        if perm == "view":  # callers and managers may both look at a service
            if a.guard.decision(who, "service", name, "call", owner).allowed:
                return who
            perm = "manage"
        a.check(who, "service", name, perm, owner)
        return who

    # ------------------------------------------------------------ supervision (the actor groups)

    async def supervise(self, cred: str | None = None, agents: bool = True) -> None:
        """Start the Nuwa supervision loop, the service manager and (``agents``) the FuxiAgents
        (idempotent; called when the master is created, by the platform or an administrator).
        The embedded default starts none: its one node is the machine of the command itself,
        and an agent's process cost its cold start ~1.5 s (docs/benchmarks.md)."""
        if self.supervisor.running or (not self.supervisor.nuwa_group and self.services.started):
            return  # running already: nothing changes, nothing to check
        self._require(cred, "start FuxiMaster's loops", admin_ok=True)
        await self.astore.put(LOOPS_KEY, {"agents": bool(agents)})  # a successor starts them
        self._pull_events()
        self.alerting.start(self._watchers)
        self.supervisor.start()
        self.services.start()
        if agents:
            self.agents.start()

    def _pull_events(self) -> None:  # Pangu masters' and Nuwa replicas' (fuxi.shells.clusterlog)
        ns = {ray.get_runtime_context().namespace,
              (self.supervisor.nuwa_group or {}).get("namespace")}  # Nuwa's may differ (tests)
        self.events.start_pulling(sorted(n for n in ns if n),
                                  lambda: self.platform_guard.platform_token())

    async def kuafu_start_node(self, node: str, cfg: dict | None = None,
                               cred: str | None = None) -> dict:
        """A Kuafu proxy for a node that has none (one that joined after `fuxi up`), with the
        keys only this actor and the platform's hold. Any signed-in caller may ask (code on
        a new node needs its proxy), but nothing it sends is used beyond the node id: the
        namespace and Nuwa are this cluster's, and host, settings and lifetime are copied
        from a running proxy (a caller-chosen Nuwa address would receive a platform
        token). ``cfg`` is ignored; it stays for older callers."""
        self._who(cred)
        if isinstance(node, str):
            await self._refresh_nodes(force=True)
        return await self.supervisor.kuafu_start_node(node, self.nodes)

    def _owner_of(self, kind: str, resource: str) -> str | None:
        """Who owns a resource (they may grant access to it); None for none, for ``*``, and
        for a resource name that cannot exist (the grant then says what is wrong with it)."""
        if not isinstance(resource, str) or resource == "*":
            return None
        from pangu.errors import PanguError

        try:
            return self._find_owner(kind, resource)
        except (BadInput, PanguError):
            return None

    def _find_owner(self, kind: str, resource: str) -> str | None:
        if kind == "job":
            return self._job_owner(resource)
        if kind == "service":
            return self._service_owner(resource)
        if kind == "nuwa" and self.supervisor.nuwa:
            from nuwa.errors import NuwaError

            other = resource.rstrip("/") if resource.endswith("/") else resource + "/"
            for path in (resource, other):  # a directory, with or without its '/'
                try:
                    return self.store.client.stat(path)["creator"]
                except NuwaError:
                    continue
            return None
        if kind == "pangu":
            from pangu.client import Client
            from pangu.errors import NotFound

            try:
                return Client(self.cluster, token=self.platform_guard.platform_token()).stat(
                    resource).get("owner")
            except NotFound:
                return None
        return None

    # ------------------------------------------------------------ online services

    def _service_manager(self):
        """The service manager, its reconcile loop started (on first use)."""
        self.services.start()
        return self.services

    def _service_slots(self) -> list:
        """Bring the ledger in line with the online replicas that run, and return their
        demands (priority SERVICE_PRIORITY, above every batch job)."""
        out, seen = [], set()
        for did, shape, wanted, held in self.services.slot_demands():
            seen.add(did)
            demand = slots.Demand(did, did, SERVICE_PRIORITY, 0, shape, wanted,
                                  SERVICES_GROUP)
            have = self.ledger.held(did)
            for node in set(have) | set(held):
                diff = held.get(node, 0) - have.get(node, 0)
                if diff > 0 and node in self.nodes:
                    self.ledger.grant(demand, node, diff)
                elif diff < 0:
                    self.ledger.release(did, node, -diff)
            out.append(demand)
        for did in [d for d in self.ledger.to_dict()["grants"] if d.startswith("svc:")]:
            if did not in seen:
                self.ledger.release_job(did)
        return out

    async def service_register(self, spec: dict, cred: str | None = None) -> dict:
        """Register a new service: any signed-in user may (and owns it); a name in use needs
        `manage` on it (and `fuxi service upgrade`)."""
        who = self._who(cred)
        svc = self._service_manager()
        name = spec.get("name") if isinstance(spec, dict) else None
        owner = self._service_owner(name) if isinstance(name, str) else None
        if owner is not None and name in svc.cores:
            self._auth().check(who, "service", name, "manage", owner)
        elif who.scope is not None:
            self._auth().check(who, "service", str(name), "manage", owner)
        claim = await svc.claimed_by(name)  # Kuafu: attached before, by another
        if claim is not None and claim != who.user:
            self._auth().check(who, "service", str(name), "manage", claim)
        return await svc.register(spec, owner=who.to_doc())

    async def service_upgrade(self, spec, traffic=None, cred: str | None = None) -> dict:
        self._check_service(cred, str(spec.get("name") if isinstance(spec, dict) else spec),
                            "manage")  # traffic: a canary's start, promotion or rollback
        return await self._service_manager().upgrade(spec, traffic)

    async def service_scale(self, name: str, replicas: int, cred: str | None = None) -> dict:
        self._check_service(cred, name, "manage")
        return await self._service_manager().scale(name, replicas)

    async def service_remove(self, name: str, cred: str | None = None) -> dict:
        self._check_service(cred, name, "manage")
        return await self._service_manager().remove(name)

    def service_list(self, cred: str | None = None) -> list[dict]:
        """The services the caller may call or manage."""
        who = self._who(cred)
        g = self._auth().guard
        return [s for s in self._service_manager().list()
                if g.decision(who, "service", s["name"], "call",
                              self._service_owner(s["name"])).allowed
                or g.decision(who, "service", s["name"], "manage",
                              self._service_owner(s["name"])).allowed]

    async def service_status(self, name: str, cred: str | None = None, output=None) -> dict:
        self._check_service(cred, name, "view")
        if output is not None:  # its replicas' captured output (fuxi.shells.logreads)
            return await logreads.gather(self.cluster, self.agents, "service", name, output)
        return self._service_manager().status(name)

    def _service_token(self, name: str) -> str:
        """A replica's token: it registers with Kuafu and reaches the platform as the
        service's owner (scoped to the service). Signed from the directory as it is now --
        never from the groups stored at registration; Denied once the owner is gone."""
        user = self.services.owner(name)
        if user is None:
            return self.platform_guard.platform_token()
        return self._auth().scoped_token(user, "service", name, ttl_s=SERVICE_TOKEN_TTL_S)

    async def cluster_info(self) -> dict:
        await self._refresh_nodes(force=True)
        free = self.ledger.free(self.nodes)
        self.blacklists.expire(time.time(), self.nodes)
        bl, ag = self.blacklists.node_view(time.time()), self.agents.node_view(time.time())
        holds = self.drains.holdings()  # replicas and batch slots per node (node drain)
        return {
            "cluster": self.cluster,
            "nodes": [{**self.node_info[n], "free": free.get(n, {}), "blacklisted": bl.get(n),
                       "agent": ag.get(n), "holds": holds.get(n, {"replicas": [], "slots": 0})}
                      for n in sorted(self.node_info)],
            "blacklist": list(bl.values()),  # cluster level: excluded for every job
            "jobs_running": list(self.jobmasters), "master_node_id": self.node_id,
            "master": self.adoption.info(),  # restarted?, jobs adopted
            "nuwa": self.supervisor.nuwa,  # the group's client addresses, as last found
            "nuwa_events": self.supervisor.events,
            "agent_events": self.agents.events,
            "store": type(self.store).__name__,
            "started_at": self.started_at, "alerts": self.alerting.view(),
        }

    def metrics(self) -> str:
        """This process's metrics as Prometheus text (aggregates only: no cred needed)."""
        return mastermetrics.snapshot(self)

    def agent_heartbeat(self, node: str, token: str, doc: dict) -> dict:
        """A FuxiAgent's heartbeat, signed with its node's token (fuxi.shells.agents)."""
        self.events.pull_local()  # the agents' heartbeats are this master's clock for it
        return self.agents.heartbeat(node, token, doc)

    # ------------------------------------------------------------ slot grants

    async def sync(self, job_id: str, priority: int, demands: dict, releases: list,
                   avoid_nodes: list, cred: str | None = None, node_failures: dict | None = None,
                   held: dict | None = None, ckpt: dict | None = None,
                   events: dict | None = None) -> dict:
        """A JobMaster's heartbeat: only that job's own token (or the platform's) may give
        back or ask for its slots."""
        if self.auth_enabled:
            who = self._who(cred)
            if not (who.platform or who.scope == {"kind": "job", "id": job_id}):
                from zhongkui.errors import Denied

                self._auth().audit.record(who.user, "sync", f"job:{job_id}", "denied",
                                          "not the job's own token")
                raise Denied(f"user {who.user!r} may not sync job {job_id!r}: only its own "
                             f"JobMaster (the job's token) may")
        acked = 0 if events is None else self.events.report(f"jobmaster-{job_id}", events)
        await self._refresh_nodes()
        if self.adoption.expected:
            await self.adoption.resume(self)
        # An adopted job's first sync rebuilds its slots; its releases are already out of it.
        fresh = self.adoption.first_sync(self, job_id, priority, held, cred,
                                         who.user if self.auth_enabled else None)
        for shape_key, node in ([] if fresh else releases):
            did = f"{job_id}/{shape_key}"
            if self.ledger.held(did).get(node, 0) > 0:
                self.ledger.release(did, node, 1)
        if job_id not in self.jobmasters:
            return {"grants": [], "targets": {}, "term": self.leadership.term}
        # Its blacklist and failures per node: hard exclusions, capped (fuxi.core.blacklist).
        excluded, avoided = self.blacklists.sync(job_id, avoid_nodes, node_failures, self.nodes,
                                                 time.time())
        if ckpt:  # finished instances the JobMaster made durable (fuxi.shells.recovery)
            await self.recovery.store_batch(job_id, ckpt)
        self.demands[job_id] = demands
        self.priorities[job_id] = priority
        # Each job's demands in its queue's quota group (fuxi.shells.quotas).
        all_demands = self.admissions.demands(self.demands, self.priorities, self.submit_seq)
        services = self._service_slots()
        all_demands += services
        # The policy proposes (pure, as the simulator drives it); the ledger re-checks, commits.
        plan = slots.grant(self.nodes, self.ledger, all_demands, job_id, excluded_nodes=excluded,
                           online_ids={d.demand_id for d in services}, avoid_nodes=avoided
                           | self.agents.hot.hot,  # and hot nodes (fuxi.shells.hotnodes)
                           quota_groups=self.admissions.quota_groups(self.nodes),
                           draining_nodes=self.drains.draining)
        applied = slots.apply_grants(self.ledger, self.nodes, plan, all_demands,
                                     excluded_nodes=excluded, draining_nodes=self.drains.draining)
        if applied:  # a queue's use (and its peak) rises only with a grant
            self.admissions.observe(self.ledger)
        sk_of = {f"{job_id}/{sk}": sk for sk in demands}
        grants = [{"shape_key": sk_of[g.demand_id], "shape": demands[sk_of[g.demand_id]]["shape"],
                   "node_id": g.node_id, "n": g.n} for g in applied]
        return {"grants": grants, "targets": {sk_of[did]: t for did, t in plan.targets.items()},
                "preempt": self.admissions.preempt(plan, time.monotonic()),
                "excluded": sorted(excluded), "events_acked": acked, **self.drains.reply(),
                "term": self.leadership.term}  # a JobMaster refuses an older one

    # ------------------------------------------------------------ jobs

    async def submit(self, plan: JobPlan, request_id: str, sys_path: list[str] | None = None,
                     cred: str | None = None) -> str:
        who = self._who(cred)
        queue = plan.queue
        self.admissions.check_queue(queue, self.cluster)
        self._auth().check(who, "queue", queue, "submit")
        submits.check_request_id(request_id)
        if request_id in self.requests:  # a retried submit: same job, no duplicate (same spec)
            return submits.same_request(self.requests, request_id, plan)
        pending = self._submitting.get(request_id)
        if pending is not None:  # retried while the first try still runs: its answer
            return await asyncio.shield(pending)
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
        self._submitting[request_id] = fut
        try:
            job_id = await self._admit(plan, who, sys_path)
            JOBS_ADMITTED.inc()
        except Exception as e:
            fut.set_exception(e)  # a retry waiting on this try fails the same way
            raise
        except BaseException:
            fut.cancel()
            raise
        finally:
            self._submitting.pop(request_id, None)
        fut.set_result(job_id)
        submits.remember(self.requests, request_id, plan, job_id, SUBMITS_REMEMBERED_MAX)
        return job_id

    async def _admit(self, plan: JobPlan, who, sys_path: list[str] | None) -> str:
        """Record a job and start its JobMaster, or queue it when there is no room; its id."""
        await self._check_fits(plan)
        job_id = new_job_id(plan.name)
        self.seq += 1
        self.submit_seq[job_id] = self.seq
        self.priorities[job_id] = plan.priority
        await self.astore.put(f"/jobs/{job_id}/spec", plan.spec)
        await self.recovery.persist(job_id, plan, who, sys_path)  # a new master may restart it
        now = time.time()
        # Room is reserved (or the job queued) with nothing awaited in between.
        now_room = self.admissions.reserve(job_id, plan.queue, plan, who, sys_path, self.seq, now)
        self.job_owners[job_id] = who.user
        try:
            await self.astore.put(f"/jobs/{job_id}/status", {
                "job_id": job_id, "name": plan.name,
                "state": (JobState.PENDING if now_room else JobState.QUEUED).value,
                "submitted_at": now, "started_at": None, "finished_at": None,
                "output": plan.output, "tasks": {}, "owner": who.user, "queue": plan.queue,
            })
        except BaseException:
            self.admissions.unreserve(job_id)
            raise
        events.emit("fuxi", "job_submitted", f"job {job_id} submitted by {who.user or '-'} to "
                    f"queue {plan.queue}", job=job_id, queue=plan.queue, queued=not now_room)
        if now_room:
            self._start(job_id, plan, who, sys_path)
        return job_id

    def _start(self, job_id: str, plan: JobPlan, who, sys_path: list[str] | None,
               resume: dict | None = None) -> None:
        """Create the job's JobMaster and start it (no await: the room reserved stays taken);
        ``resume``: a dead JobMaster's checkpoint records to carry on from."""
        from fuxi.io.codeship import code_holder
        from fuxi.shells.jobmaster import JobMaster

        self.admissions.started(job_id)
        # The job's instances act as their submitter, with no more rights (a scoped token).
        token = self._auth().scoped_token(who, "job", job_id, ttl_s=JOB_TOKEN_TTL_S)
        # JobMasters live next to FuxiMaster (control plane: a worker node going away must not
        # take a job's master with it). Detached: the JobMaster outlives a FuxiMaster that dies,
        # and its successor adopts it (fuxi.shells.adoption); one nobody collects ends itself.
        jm = JobMaster.options(
            name=jobmaster_name(job_id), lifetime="detached", **code_holder(plan.runtime_env),
            scheduling_strategy=NodeAffinitySchedulingStrategy(self.node_id, soft=False),
        ).remote(job_id, plan, MasterLink(ray.get_runtime_context().current_actor,
                                          self.leadership.me, self.leadership.candidates,
                                          self.leadership.term), os.path.join(self.log_dir, f"{job_id}.jsonl"), sys_path, token,
                 ckpt_root=self.recovery.root, resume=resume)
        self.recovery.launched(job_id, plan, who, sys_path)
        self.jobmasters[job_id] = jm
        self._job_tokens[job_id] = token  # what its JobMaster takes calls with
        # It starts itself (a run call sent from here would die with this process if it had
        # not been delivered yet); its verdict is read with ``final``, as an adopter does.
        self.runs[job_id] = jm.final.remote()
        watcher = asyncio.get_running_loop().create_task(self._watch(job_id))
        self._watchers.add(watcher)  # asyncio keeps only weak references to tasks
        watcher.add_done_callback(self._watchers.discard)

    async def _check_fits(self, plan: JobPlan) -> None:
        """Refuse a job with a task whose resources no node has: it would wait forever."""
        await self._refresh_nodes(force=True)
        totals = [i["resources"] for i in self.node_info.values()]  # foreign work ends
        for t in plan.tasks:
            if not any(slots.fits(total, t.shape) for total in totals):
                biggest = max(totals, key=lambda r: r.get("CPU", 0), default={})
                raise BadInput(
                    f"task {t.name!r} asks for {t.shape} per instance, which no node of cluster "
                    f"{self.cluster!r} has (largest node: {biggest}); lower `resources` or add "
                    f"a bigger node")

    async def _watch(self, job_id: str) -> None:
        """Wait for a JobMaster to finish; record its final status and free its slots."""
        ref = self.runs[job_id]
        restarted = False
        try:
            try:
                status = await ref
                self.events.report_last(f"jobmaster-{job_id}", status.pop("events", None))
            except Exception as e:
                why_not = await self.recovery.restart(job_id, e)  # resumes from its checkpoint
                if why_not is None:
                    restarted = True  # the new JobMaster has its own watcher
                    return
                status = await self.astore.get(f"/jobs/{job_id}/status") or {"job_id": job_id}
                if status.get("state") in {s.value for s in TERMINAL_JOB}:
                    return  # already recorded (e.g. cancelled by `fuxi down`)
                status.update(state=JobState.FAILED.value, finished_at=time.time(),
                              report=f"job master died: {type(e).__name__}: {e} {why_not}")
            if self.job_owners.get(job_id):
                status["owner"] = self.job_owners[job_id]
            await self.astore.put(f"/jobs/{job_id}/status", status)
            state = str(status.get("state"))
            JOBS_ENDED.inc(state=state if state in TERMINAL_STATES else "other")
            mastermetrics.job_ended(status)
            events.emit("fuxi", f"job_{state}", f"job {job_id} {state}", job=job_id, state=state,
                        severity="info" if state == JobState.SUCCEEDED.value else "warning")
        except Exception:
            logger.exception("recording the end of job %s failed", job_id)
        finally:
            if not restarted:
                await self._forget(job_id)

    async def _forget(self, job_id: str) -> None:
        jm = self.jobmasters.pop(job_id, None)
        self._job_tokens.pop(job_id, None)
        self.runs.pop(job_id, None)
        self.demands.pop(job_id, None)
        self.priorities.pop(job_id, None)
        self.ledger.release_job(job_id)
        self.admissions.start_waiting()  # its place goes to the next waiting job
        await self.recovery.forget(job_id)
        if jm is not None:
            try:
                ray.kill(jm, no_restart=True)
            except Exception:
                pass
        if len(self.job_owners) > JOB_RECORDS_MAX:
            for jid in await self.astore.call(drop_old_records, self.store, JOB_RECORDS_MAX):
                self.job_owners.pop(jid, None)
                self.admissions.job_queues.pop(jid, None)

    async def status(self, job_id: str, cred: str | None = None) -> dict:
        if self.adoption.expected:  # just restarted: the running jobs first
            await self.adoption.resume(self)
        self._check_job(cred, job_id, "view")
        return await self._status(job_id)

    async def _status(self, job_id: str) -> dict:
        jm = self.jobmasters.get(job_id)
        if jm is not None:
            try:
                st = await asyncio.wait_for(jm.status.remote(), JOBMASTER_CALL_TIMEOUT_S)
                st.setdefault("owner", self.job_owners.get(job_id))
                st["recovery"] = self.recovery.view(job_id)  # can a dead JobMaster come back?
                st["blacklisted_nodes"] = [*st.get("blacklisted_nodes", ()),
                                           *self.blacklists.view(time.time())]
                return st
            except Exception:
                pass  # finishing right now: fall through to the stored record
        st = await self.astore.get(f"/jobs/{job_id}/status")
        if st is None:
            raise JobNotFound(f"no job with id {job_id!r}; `fuxi job list` shows the known jobs")
        return self.admissions.with_position(job_id, st)

    async def list_jobs(self, cred: str | None = None) -> list[dict]:
        """The jobs the caller may view."""
        who = self._who(cred)
        out = []
        for jid, st in await self.astore.call(statuses, self.store):
            if st.get("owner") and jid not in self.job_owners:
                self.job_owners[jid] = st["owner"]
                self.admissions.job_queues[jid] = st.get("queue") or DEFAULT_QUEUE
            if not self._may(who, jid, "view"):
                continue
            if jid in self.jobmasters:
                try:
                    out.append(await self._status(jid))
                    continue
                except Exception:
                    pass
            out.append(self.admissions.with_position(jid, st))
        return sorted(out, key=lambda s: s.get("submitted_at") or 0)

    async def cancel(self, job_id: str, cred: str | None = None) -> dict:
        self._check_job(cred, job_id, "cancel")
        st = await self.admissions.cancel(job_id)
        if st is not None:  # it waited in its queue: never started, nothing to stop
            JOBS_ENDED.inc(state=JobState.CANCELLED.value)
            events.emit("fuxi", "job_cancelled", f"job {job_id} cancelled in its queue", job=job_id,
                        state=JobState.CANCELLED.value, severity="warning")
            return {"job_id": job_id, "state": JobState.CANCELLED.value, "cancelling": False}
        jm = self.jobmasters.get(job_id)
        if jm is None:
            st = await self._status(job_id)  # raises JobNotFound for unknown ids
            return {"job_id": job_id, "state": st.get("state"), "cancelling": False}
        self.recovery.cancelled.add(job_id)  # a JobMaster dying now is not restarted
        await asyncio.wait_for(jm.cancel.remote(cred=self._job_tokens.get(job_id, ""),
                                                term=self.leadership.term),
                               JOBMASTER_CALL_TIMEOUT_S)
        return {"job_id": job_id, "cancelling": True}

    async def wait(self, job_id: str, timeout_s: float, cred: str | None = None) -> dict:
        """Wait up to ``timeout_s`` for a job to end; returns its status either way."""
        if self.adoption.expected:  # just restarted: the running jobs first
            await self.adoption.resume(self)
        self._check_job(cred, job_id, "view")
        left = await self.admissions.wait_started(job_id, timeout_s)  # queued: its start first
        if left is None:
            return await self._status(job_id)
        timeout_s = left
        ref = self.runs.get(job_id)
        if ref is not None:
            try:
                await asyncio.wait_for(asyncio.shield(ref), timeout_s)
            except asyncio.TimeoutError:
                return await self._status(job_id)
            except Exception:
                pass  # the JobMaster died; _watch records that
            for _ in range(50):  # the job ended: give _watch a moment to store the record
                if job_id not in self.jobmasters:
                    break
                await asyncio.sleep(0.01)
        return await self._status(job_id)

    async def logs(self, job_id: str, task: str | None = None, instance: int | None = None,
                   cred: str | None = None, output: dict | None = None) -> list[dict] | dict:
        self._check_job(cred, job_id, "view")
        if job_id not in self.job_owners:
            raise JobNotFound(f"no job with id {job_id!r}; `fuxi job list` shows the known jobs")
        if output is not None:  # captured stdout, stderr, logging instead (fuxi.shells.logreads)
            return await logreads.gather(self.cluster, self.agents, "job", job_id, output)
        return await self._log_reads.run(read_job_logs, self.log_dir, job_id, task, instance)

    async def job_attempts(self, job_id: str, cred: str | None = None) -> dict:
        """Every attempt of a job (``fuxi job timeline``, ``fuxi explain``): from its JobMaster
        while it runs, from the record it left (``<job>.attempts.json``) once it ended."""
        self._check_job(cred, job_id, "view")
        return await attempts_of(self.jobmasters, self._log_reads, self.log_dir, job_id,
                                 JOBMASTER_CALL_TIMEOUT_S)

    async def events_since(self, since_id: int = 0, since_at: float | None = None,
                           kinds: list | None = None, limit: int = 1000, wait_s: float = 0.0,
                           match: dict | None = None, cred: str | None = None) -> dict:
        """The cluster's event log (``fuxi events``; fuxi.shells.clusterlog): a long poll."""
        who = self._who(cred)
        got = await self.events.query(since_id, since_at, kinds, limit, wait_s, match)
        return visible_to(got, who, self.auth_enabled, lambda j: self._may(who, j, "view"))

    async def queues(self, cred: str | None = None) -> dict:
        """The queues (quota groups): limits, quotas, what their jobs hold, running and
        waiting jobs; jobs_running_max."""
        self._who(cred)
        self.admissions.observe(self.ledger)
        return self.admissions.view()

    async def configure_queues(self, queues: dict | None = None, jobs_running_max: int | None = None,
                               cred: str | None = None) -> dict:
        """Set the queues (name -> {"jobs_running_max": int or None, "min", "max", "weight":
        its quota}; "default" always exists) and the cluster's jobs_running_max: the platform
        or an administrator."""
        self._require(cred, "configure the job queues", admin_ok=True)
        return await self.admissions.configure(queues, jobs_running_max)

    async def shutdown_jobs(self, cred: str | None = None) -> int:
        """Stop every running job (used by ``fuxi down``): the platform or an administrator."""
        self._require(cred, "stop every job", admin_ok=True)
        n = 0
        for q in self.admissions.queue.order(time.time()):  # waiting ones never start
            if await self.admissions.cancel(q.job_id) is not None:
                n += 1
        for jid in list(self.jobmasters):
            st = await self.astore.get(f"/jobs/{jid}/status") or {"job_id": jid}
            st.update(state=JobState.CANCELLED.value, finished_at=time.time(),
                      report="cluster shut down")
            await self.astore.put(f"/jobs/{jid}/status", st)
            await self._forget(jid)
            n += 1
        return n

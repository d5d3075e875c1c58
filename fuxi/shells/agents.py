"""FuxiMaster's side of the FuxiAgents (issue 16 part 5), composed by FuxiMaster like its
supervisor: it deploys one agent per alive Ray node and retires the agents of nodes that
left, takes their heartbeats (``fuxi.core.agentview.AgentView``), and feeds the cluster
blacklist: a node whose agent is missing (``AGENT_MISSED_HEARTBEATS_MAX`` heartbeats) or
reports bad health (``MEM_AVAILABLE_BYTES_MIN``, ``DISK_FREE_BYTES_MIN``) is excluded for every
job (``ClusterBlacklist.unhealthy``: capped, with expiry), and given back once its agent sent
``AGENT_HEALTHY_HEARTBEATS_MIN`` good heartbeats in a row (``ClusterBlacklist.recovered``).

It runs on FuxiMaster's event loop and never blocks it: creating, adopting and killing agents
are GCS calls, done on a thread pool of its own (``.offloop``), one reconcile at a time.
Agents share the master's lifetime: detached for a detached (``fuxi up``) master, else owned
by it (they die with it)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from base.cluster import namespace
from fuxi.core.agentview import AGENT_HEARTBEAT_S, AgentState, AgentView
from fuxi.shells.agent import AGENT_PREFIX, agent_class
from fuxi.shells.drains import equip_later
from fuxi.shells.hotnodes import HotNodeWatch
from fuxi.shells.offloop import OffLoop

logger = logging.getLogger(__name__)

AGENTS_RECONCILE_S = 2.0  # how often agents are deployed on new nodes and retired from gone ones
AGENT_READOPT_S = 10.0  # an agent missing this long is given its token again (it restarted)
AGENT_THREADS_MAX = 1  # agent deploys and kills in flight at once (GCS calls)
AGENT_DEPLOYS_PER_ROUND_MAX = 16  # agents started in one reconcile round (the rest: next round)
AGENT_EVENTS_MAX = 100  # lines of what was done kept for `fuxi cluster status`


def agent_name(node: str) -> str:
    return AGENT_PREFIX + node


class Agents:
    """The agents of one FuxiMaster: where they run, their view, and the blacklist feed."""

    def __init__(self, master):
        self.m = master  # the FuxiMaster instance (its nodes, blacklist, handle)
        # The cluster's namespace, named explicitly: an actor's children are otherwise named
        # in its Ray job's namespace, where two clusters' masters would share agents.
        self.namespace = namespace(master.cluster)
        self.view = AgentView()
        self.hot = HotNodeWatch()  # nodes well above their peers' load (issue 20 part 2)
        self.handles: dict[str, Any] = {}
        self.offloop = OffLoop("fuxi-agents", AGENT_THREADS_MAX)
        self._round: asyncio.Task | None = None
        self._loop: asyncio.Task | None = None
        self._adopted_at: dict[str, float] = {}
        self.events: list[str] = []

    def start(self) -> None:
        """Deploy and watch agents from now on (idempotent)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._reconcile_loop())
            self.m.drains.start()  # the node keeper (node drain), with the agents

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.m._refresh_nodes(force=True)
            except Exception:  # noqa: BLE001 - logged, tried again next round
                logger.exception("refreshing the node view for the agents failed")
            await asyncio.sleep(AGENTS_RECONCILE_S)

    # ------------------------------------------------------------ from the node refresh

    def refresh(self, nodes: dict, now: float) -> None:
        """After every node refresh (no await): judge the agents (missing ones), feed the
        cluster blacklist, and start a reconcile round if agents are to be deployed or retired."""
        verdicts = self.view.tick(now)
        for node, reason in verdicts.bad.items():
            if node in nodes and self.m.blacklists.unhealthy(node, reason, nodes, now):
                self._note(f"node {node[:12]} excluded: {reason}")
        for node in verdicts.recovered:
            if self.m.blacklists.recovered(node):
                self._note(f"node {node[:12]} back: its agent is healthy again")
        if self._loop is None or (self._round is not None and not self._round.done()):
            return
        new = [n for n in nodes if n not in self.handles][:AGENT_DEPLOYS_PER_ROUND_MAX]
        gone = [n for n in self.handles if n not in nodes]
        readopt = [n for n, a in self.view.agents.items() if n in self.handles
                   and a.state is AgentState.MISSING
                   and now - self._adopted_at.get(n, 0.0) > AGENT_READOPT_S]
        if new or gone or readopt:
            self._round = asyncio.get_running_loop().create_task(self._reconcile(new, gone, readopt))

    async def _reconcile(self, new: list[str], gone: list[str], readopt: list[str]) -> None:
        me = ray.get_runtime_context().current_actor
        for node in gone:
            h = self.handles.pop(node)
            self.view.retired(node)
            self._adopted_at.pop(node, None)
            try:
                await self.offloop.run(ray.kill, h, no_restart=True)
            except Exception:  # noqa: BLE001 - its node is gone: so is it
                pass
            self._note(f"agent of node {node[:12]} retired: the node left")
        for node in new + readopt:
            # A restarted agent came back with its first token: it is given the current one
            # again (the same one, so adopt calls arriving out of order agree).
            token = self.view.token_of(node) or secrets.token_urlsafe(24)
            try:
                # Asked by name every time: a dead agent's name is free, and a new one starts.
                h = await self.offloop.run(self._create, node, token, me)
                self.view.deployed(node, token, time.time())  # before it can heartbeat with it
                # an agent found running gets this master's token (refused from an older term)
                h.adopt.remote(token, me, term=self.m.leadership.term)
                self.handles[node] = h
                self._adopted_at[node] = time.time()
            except Exception as e:  # noqa: BLE001 - tried again next round
                self.view.retired(node)
                self._note(f"deploying the agent of node {node[:12]} failed: {e!r}")
                continue
            if node in new:
                self._note(f"agent deployed on node {node[:12]}")
                equip_later(self.m, node, self._note)  # its proxy and chunkserver

    def _create(self, node: str, token: str, me):
        opts: dict[str, Any] = {
            "name": agent_name(node), "namespace": self.namespace, "get_if_exists": True,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
        if self.m.detached:
            opts["lifetime"] = "detached"
        return agent_class().options(**opts).remote(node, token, me, AGENT_HEARTBEAT_S,
                                                    self.namespace)

    def _note(self, line: str) -> None:
        logger.info("%s", line)
        self.events = (self.events + [f"{time.strftime('%H:%M:%S')} {line}"])[-AGENT_EVENTS_MAX:]

    # ------------------------------------------------------------ calls

    def heartbeat(self, node: Any, token: Any, doc: Any) -> dict:
        """One agent's heartbeat (BadInput for garbage, or for a node it is not the agent of)."""
        took = self.view.heartbeat(node, token, doc, time.time())
        if took:  # the alive nodes' totals: the master's (none yet: nothing judged)
            self.hot.judge(lambda: self.view.view(time.time()),
                           getattr(self.m, "nodes", None) or {}, time.time(), self.m)
        return {"taken": took, "heartbeat_s": self.view.heartbeat_s}

    def node_view(self, now: float) -> dict[str, dict]:
        """The agents' view, each with ``hot``: its node is flagged (new work avoids it)."""
        hot = self.hot.hot
        return {n: dict(v, hot=n in hot) for n, v in self.view.view(now).items()}


def stop_agents(namespace: str) -> int:
    """Kill every agent of a cluster, and the node keeper started with them (``fuxi down``:
    detached ones would outlive FuxiMaster)."""
    from ray.util import list_named_actors

    from fuxi.shells.nodekeeper import KEEPER_NAME

    n = 0
    for a in list_named_actors(all_namespaces=True):
        if a.get("namespace") == namespace and (a["name"].startswith(AGENT_PREFIX)
                                                or a["name"] == KEEPER_NAME):
            try:
                ray.kill(ray.get_actor(a["name"], namespace=namespace), no_restart=True)
                n += 1
            except Exception:  # noqa: BLE001 - gone already
                pass
    return n

"""The supervisor of the platform's actor groups, composed by FuxiMaster: it replaces Nuwa
replicas that die, and starts a Kuafu proxy for a node that joined after `fuxi up`.

It is a part of FuxiMaster, not an actor of its own: it signs with the master's keyring (as
rotated: ``auth`` is asked each round), its view of the Nuwa addresses is what FuxiMaster's
``cluster_info`` reports, and a second detached actor would itself need supervising. Every
blocking call here (the Nuwa group's round, Kuafu's deploy, the GCS look-ups) runs off the
master's event loop, on threads of its own (``fuxi.shells.offloop``): a replica restart that
takes seconds holds up neither the store's calls nor the master's node view."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from base import actors, events
from fuxi.errors import BadInput
from fuxi.shells.offloop import OffLoop

logger = logging.getLogger(__name__)

NUWA_SUPERVISE_S = 2.0  # how often FuxiMaster checks its Nuwa replicas and restarts dead ones
NUWA_EVENTS_MAX = 100  # supervision lines kept for `fuxi cluster status`
KUAFU_CALL_TIMEOUT_S = 10.0  # asking a running Kuafu proxy for its info or configuration
SUPERVISE_THREADS_MAX = 2  # blocking supervision steps in flight (a Nuwa round, a Kuafu deploy)


class Supervisor:
    """The Nuwa group (replaced members, current client addresses, what was done) and the
    Kuafu proxies of one cluster."""

    def __init__(self, cluster: str, namespace: str, nuwa: list | None, nuwa_group: dict | None,
                 auth: Callable[[], dict], offloop: OffLoop | None = None):
        self.cluster = cluster
        self.namespace = namespace
        self.nuwa = nuwa  # client addresses [[host, port], ...], updated after a replacement
        self.nuwa_group = nuwa_group
        self.events: list[str] = []
        self.leader: tuple[int, int] | None = None  # Nuwa's (term, leading replica), last seen
        self.auth = auth  # the auth document for actors started now (keys as rotated)
        self.offloop = offloop or OffLoop("fuxi-supervise", SUPERVISE_THREADS_MAX)
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Start the Nuwa supervision loop (once; nothing to do without a Nuwa group)."""
        if self.nuwa_group and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._supervise_nuwa())

    async def _supervise_nuwa(self) -> None:
        from nuwa.group import Group

        group = Group.from_dict(self.nuwa_group, self.auth())
        while True:
            await asyncio.sleep(NUWA_SUPERVISE_S)
            group.auth = self.auth()  # keys as rotated
            try:
                done = await self.offloop.run(group.supervise_once)
            except Exception as e:  # noqa: BLE001 - reported, and tried again next round
                done = [f"supervising Nuwa failed: {e!r}"]
            leader = getattr(group, "leader", None)
            if leader is not None and leader != self.leader:  # (term, replica)
                events.emit("nuwa", "leader_changed", f"nuwa-{leader[1]} leads term {leader[0]}"
                            + (f" (was nuwa-{self.leader[1]})" if self.leader else ""),
                            term=leader[0], leader=leader[1])
                self.leader = leader
            elif leader is None and self.leader is not None and not done:
                events.emit("nuwa", "no_leader", "no Nuwa replica says it leads",
                            severity="warning", term=self.leader[0])
                self.leader = None
            if done:  # a replacement changes the members and their addresses
                self.nuwa_group = group.to_dict()
                self.nuwa = [list(a) for a in group.client_addresses()]
            for line in done:
                logger.warning("%s", line)
                events.emit("fuxi.supervisor", "nuwa_supervision", line, severity="warning")
                self.events = (self.events + [f"{time.strftime('%H:%M:%S')} {line}"]
                               )[-NUWA_EVENTS_MAX:]

    async def kuafu_start_node(self, node, live_nodes) -> dict:
        """The Kuafu proxy of ``node`` (one of ``live_nodes``), started if it has none, with
        host, settings and lifetime copied from a running proxy and this cluster's Nuwa."""
        from kuafu import deploy

        if not isinstance(node, str):
            raise BadInput(f"node {node!r:.40}: expected a Ray node id")
        if node not in live_nodes:
            raise BadInput(f"node {node[:16]!r} is not a live node of cluster {self.cluster!r}")
        found = await self.offloop.run(deploy.proxies, self.namespace)
        if node in found:
            return await actors.acall(found[node].info, timeout_s=KUAFU_CALL_TIMEOUT_S)
        if not found:
            raise BadInput(f"Kuafu is not running in cluster {self.cluster!r}: no proxy to copy "
                           f"the configuration from")
        mine = await actors.acall(next(iter(found.values())).get_config,
                                  timeout_s=KUAFU_CALL_TIMEOUT_S)
        started = await self.offloop.run(
            deploy.start, self.namespace, self.nuwa or mine["nuwa"], host=mine["host"],
            port=mine.get("port", 0), nodes=[node], settings=mine["settings"], detached=mine["detached"],
            auth=self.auth())
        return started[0]

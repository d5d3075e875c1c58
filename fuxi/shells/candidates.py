"""The leader keeps the FuxiMaster candidates at their number (issue 16 part 3).

Each candidate is pinned to its node (hard affinity: Ray's soft affinity was measured to
ignore the node). When that node dies, Ray marks the pinned actor dead at once and frees its
name: from then on the cluster would have one candidate fewer, and the next failure of the
leader's node would leave no standby. So the serving leader looks, every
``CANDIDATE_CHECK_S`` (from the node refresh its agents loop makes), for candidates without a
live actor and creates each again, with the arguments every candidate was started with, on an
alive node that holds no candidate (``fuxi.core.leadership.respawn_places``). The new one
campaigns and stands by like the others.

Only on clusters whose candidates are detached (`fuxi up`): a driver's own candidates
(``fuxi.runtime`` without ``detached``) are owned by that driver, and one made here would
outlive it. A candidate whose process died on a live node is Ray's to restart (its name stays
taken while it restarts) and is left alone."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from base import actors, events
from fuxi.core.leadership import respawn_places

logger = logging.getLogger(__name__)

CANDIDATE_CHECK_S = 5.0  # how often the leader looks for candidates gone for good
CANDIDATE_RESPAWN_S = 30.0  # one candidate is created again at most this often
MASTER_RESTARTS_MAX = 100  # times Ray brings a dead FuxiMaster back before it stays dead


def candidate_options(name: str, namespace: str, node: str | None, detached: bool) -> dict:
    """Ray options of a FuxiMaster candidate (``fuxi.runtime`` starts them with these too)."""
    opts: dict[str, Any] = {"name": name, "namespace": namespace, "get_if_exists": True,
                            "max_restarts": MASTER_RESTARTS_MAX}
    if node is not None:
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
    if detached:
        opts["lifetime"] = "detached"
    return opts


class CandidateKeeper:
    """On the leader: the other candidates' liveness, and their creation again."""

    def __init__(self, leadership, spawn: tuple | None):
        self.lead = leadership  # fuxi.shells.leadership.Leadership of this candidate
        self.spawn = spawn  # (FuxiMaster actor class, its constructor's first arguments)
        self.checked_at = 0.0
        self.tried_at: dict[str, float] = {}  # candidate -> when it was last created here
        self.respawned: list[str] = []  # "<name> on <node>" (for tests and status)
        self._round: asyncio.Task | None = None

    def refresh(self, nodes: dict, now: float) -> None:
        """After a node refresh (no await): start a round if one is due."""
        lead, m = self.lead, self.lead.master
        if (self.spawn is None or not m.detached or not lead.elected or not lead.serving
                or len(lead.candidates) < 2 or now - self.checked_at < CANDIDATE_CHECK_S
                or (self._round is not None and not self._round.done())):
            return
        self.checked_at = now
        self._round = asyncio.get_running_loop().create_task(self._check(sorted(nodes)))

    async def _check(self, alive: list[str]) -> None:
        try:
            live = await self.lead.master.gcs.run(self._live)
            places = respawn_places(self.lead.candidates, self.lead.me, live, alive)
            now = time.time()
            for name, node in places.items():
                if now - self.tried_at.get(name, 0.0) < CANDIDATE_RESPAWN_S:
                    continue
                self.tried_at[name] = now
                await self.lead.master.gcs.run(self._create, name, node)
                self.respawned.append(f"{name} on {node}")
                logger.warning("FuxiMaster candidate %s was gone; created again on node %s",
                               name, node)
                events.emit("fuxi", "master_candidate_respawned",
                            f"FuxiMaster candidate {name} was gone (its node died?); created "
                            f"again on node {node[:12]}", severity="warning", node=node)
        except Exception:  # noqa: BLE001 - logged, tried again next round
            logger.exception("keeping the FuxiMaster candidates failed")

    def _live(self) -> dict[str, str | None]:
        """Each candidate's node, None where no live actor has its name (blocking: GCS)."""
        ns = self.lead.master.namespace
        live: dict[str, str | None] = {}
        for name in self.lead.candidates:
            h = actors.named_actor(name, ns)
            if h is None:
                live[name] = None
                continue
            row = actors.actor_table(actors.actor_id(h))
            live[name] = (row.get("Address") or {}).get("NodeID") or "unknown"
        live[self.lead.me] = self.lead.master.node_id
        return live

    def _create(self, name: str, node: str) -> None:
        cls, args = self.spawn
        m = self.lead.master
        cls.options(**candidate_options(name, m.namespace, node, m.detached)).remote(
            *args, name, list(self.lead.candidates))

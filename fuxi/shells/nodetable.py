"""FuxiMaster's view of Ray's node table: capacity per node (minus foreign work), refreshed
at most every NODES_REFRESH_S (or at once with ``force``); grants on vanished nodes are void,
and nodes that joined or left become events (``node_joined`` / ``node_lost``)."""

from __future__ import annotations

import logging
import time

import ray

from base import actors
from fuxi.core import nodeview
from fuxi.shells.clusterlog import note_nodes
from fuxi.shells.services import NODES_REFRESH_S

logger = logging.getLogger("fuxi.shells.master")


async def refresh_nodes(m, force: bool = False) -> None:
    """Refresh FuxiMaster ``m``'s ``nodes``, ``node_info`` and ``nodes_at``."""
    now = time.time()
    if not force and now - m.nodes_at < NODES_REFRESH_S:
        return
    nodes, info = {}, {}
    raw = await m.gcs.run(ray.nodes)  # GCS calls: never on this loop
    try:
        available = await m.gcs.run(actors.available_resources_per_node)
    except Exception:  # noqa: BLE001 - without Ray's counters, assume no foreign work
        logger.warning("Ray's available resources could not be read; foreign work on the "
                       "cluster is not subtracted this time", exc_info=True)
        available = {}
    for n in raw:
        if not n.get("Alive"):
            continue
        res = {k: float(v) for k, v in n.get("Resources", {}).items()
               if not k.startswith("node:") and k != "object_store_memory"}
        # Work that is not Fuxi's (other Ray users of the cluster) is not granted again.
        # Batch workers ask Ray only for GPUs/custom resources; service replicas for all.
        svc = m.ledger.used_on(n["NodeID"], lambda did: did.startswith("svc:"))
        batch = m.ledger.used_on(n["NodeID"], lambda did: not did.startswith("svc:"))
        foreign = nodeview.foreign_use(res, available.get(n["NodeID"]), batch, svc)
        nodes[n["NodeID"]] = nodeview.capacity(res, foreign)
        info[n["NodeID"]] = {"node_id": n["NodeID"], "address": n.get("NodeManagerAddress"),
                             "resources": res, "foreign": foreign}
    # Grants on nodes that vanished are void: their workers are dead too.
    for did in list(m.ledger.to_dict()["grants"]):
        for node, n in m.ledger.held(did).items():
            if node not in nodes:
                m.ledger.release(did, node, n)
    note_nodes(m.nodes, nodes, info)  # node_joined / node_lost events
    m.nodes, m.node_info, m.nodes_at = nodes, info, now
    m.agents.refresh(nodes, now)  # missing or unhealthy agents: excluded (cluster level)
    m.leadership.keeper.refresh(nodes, now)  # candidates gone with their node: created again
    await m.drains.poll(now)  # which nodes are being drained (fuxi.shells.drains)

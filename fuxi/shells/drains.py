"""Node drain and expansion, FuxiMaster's side (issue 18 part 5).

``MasterDrains`` is composed by FuxiMaster like its agents. It starts the cluster's node
keeper (``fuxi.shells.nodekeeper``: the actor that holds the operators' drain intents and
every node's state) with the FuxiAgents, asks it on every node refresh which nodes are leaving,
and makes FuxiMaster act on the answer:

* the scheduler grants nothing on a draining node (``slots.grant(draining_nodes=...)``);
* the service manager places nothing there and replaces the replicas there, surge first
  (``ServiceCore.plan(leaving=...)``);
* each JobMaster hears the draining and overdue nodes in its sync reply
  (``JobCore.nodes_leaving``: no new work there; after the timeout its attempts move).

If the keeper cannot be reached, the last answer stands (a node being drained is never given
work again by a failed call). ``holdings`` is what FuxiMaster knows each node holds, shown by
``cluster_info`` and read by the keeper.

``equip_node`` is expansion: a node that joined gets its Kuafu proxy and, unless it is marked
compute-only (the Ray resource ``COMPUTE_ONLY_RESOURCE``), a Pangu chunkserver (Pangu's
rebalance then moves data onto it)."""

from __future__ import annotations

import logging

import ray

from base import actors
from base.cluster import namespace
from fuxi.core.servicecore import DRAINING, LIVE
from fuxi.shells.offloop import OffLoop

logger = logging.getLogger(__name__)

DRAIN_POLL_S = 1.0  # how often FuxiMaster asks the keeper which nodes are leaving
DRAIN_POLL_TIMEOUT_S = 5.0  # one such call
KEEPER_LOOKUP_S = 5.0  # a missing keeper is looked up by name at most this often
COMPUTE_ONLY_RESOURCE = "fuxi_compute_only"  # a node with this Ray resource holds no data
EQUIP_TIMEOUT_S = 60.0  # starting a new node's chunkserver
DRAIN_THREADS_MAX = 1  # keeper starts and new nodes' equipment in flight at once


class MasterDrains:
    def __init__(self, master):
        self.m = master
        self.draining: frozenset[str] = frozenset()
        self.overdue: frozenset[str] = frozenset()
        self._keeper = None
        self._polled_at = 0.0
        self._looked_at = 0.0
        self.offloop = OffLoop("fuxi-drains", DRAIN_THREADS_MAX)  # keeper start, new nodes

    def start(self) -> None:
        """Start the cluster's node keeper (idempotent; off the event loop)."""
        from fuxi.shells import nodekeeper

        m = self.m
        sup = m.supervisor
        auth = sup.auth() if callable(getattr(sup, "auth", None)) else None

        def make():
            return nodekeeper.start_keeper(m.cluster, namespace(m.cluster), m.data_dir, sup.nuwa,
                                           auth, m.detached)
        fut = self.offloop.run(make)

        def done(f):
            try:
                self._keeper = f.result()
            except Exception:  # noqa: BLE001 - looked up again at the next poll
                logger.exception("starting the node keeper failed")
        import asyncio

        asyncio.ensure_future(fut).add_done_callback(done)

    async def poll(self, now: float) -> None:
        """Ask the keeper which nodes are leaving (at most every DRAIN_POLL_S)."""
        if now - self._polled_at < DRAIN_POLL_S:
            return
        self._polled_at = now
        if self._keeper is None:
            if now - self._looked_at < KEEPER_LOOKUP_S:
                return
            self._looked_at = now
            from fuxi.shells.nodekeeper import find_keeper

            self._keeper = await self.m.gcs.run(find_keeper, namespace(self.m.cluster))
            if self._keeper is None:
                return
        try:
            reply = await actors.acall(self._keeper.leaving, timeout_s=DRAIN_POLL_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - the last answer stands
            logger.warning("the node keeper did not answer: %r", e)
            self._keeper = None
            return
        self.draining = frozenset(reply.get("draining", ()))
        self.overdue = frozenset(reply.get("overdue", ()))
        self.m.services.leaving = self.draining

    def holdings(self) -> dict[str, dict]:
        """Node -> what FuxiMaster knows it holds: service replicas (ids) and batch slots."""
        out: dict[str, dict] = {}
        for core in self.m.services.cores.values():
            for r in core.replicas.values():
                if r.node is not None and (r.state in LIVE or r.state == DRAINING):
                    out.setdefault(r.node, {"replicas": [], "slots": 0})["replicas"].append(r.rid)
        for did in self.m.ledger.to_dict()["grants"]:
            if did.startswith("svc:"):
                continue  # a replica's slot: counted as the replica
            for node, n in self.m.ledger.held(did).items():
                out.setdefault(node, {"replicas": [], "slots": 0})["slots"] += int(n)
        return out

    def reply(self) -> dict:
        """What a JobMaster's sync reply carries."""
        return {"draining": sorted(self.draining), "overdue": sorted(self.overdue)}


# ------------------------------------------------------------ expansion

def equip_node(m, node: str, resources: dict) -> list[str]:
    """A node that joined: its Kuafu proxy (when Kuafu runs in the cluster) and its Pangu
    chunkserver (when Pangu runs and the node is not compute-only). Blocking (GCS calls): run
    off the event loop. Returns what was started."""
    done = []
    ns = namespace(m.cluster)  # named explicitly: the actor's own is its Ray job's
    from kuafu import deploy as kuafu_deploy

    found = kuafu_deploy.proxies(ns)
    if found and node not in found:
        cfg = actors.call(next(iter(found.values())).get_config, timeout_s=EQUIP_TIMEOUT_S)
        kuafu_deploy.start(ns, m.supervisor.nuwa or cfg["nuwa"], host=cfg["host"], nodes=[node],
                           settings=cfg["settings"], detached=cfg["detached"],
                           auth=m.supervisor.auth())
        done.append("kuafu proxy")
    if resources.get(COMPUTE_ONLY_RESOURCE) or not m.data_dir:
        return done
    from pangu import deploy as pangu_deploy
    from pangu.client import MASTERS_MAX, master_name

    masters = 0
    for i in range(1, MASTERS_MAX + 1):
        try:
            ray.get_actor(master_name(i), namespace=ns)
            masters = i
        except ValueError:
            break
    if masters == 0:
        return done
    try:
        ray.get_actor(pangu_deploy.server_name(node, 0), namespace=ns)
        return done  # it has one already
    except ValueError:
        pass
    pangu_deploy.start(m.cluster, m.data_dir, masters=masters, nuwa=m.supervisor.nuwa,
                       nodes=[node], per_node=1, detached=m.detached, wait=False,
                       timeout_s=EQUIP_TIMEOUT_S, auth=m.supervisor.auth())
    done.append("pangu chunkserver")
    return done


def equip_later(m, node: str, note) -> None:
    """Start ``equip_node`` for a joined node on FuxiMaster's GCS threads; ``note`` tells what
    happened (a line for the agents' event list)."""
    import asyncio

    info = m.node_info.get(node, {})
    fut = asyncio.ensure_future(m.drains.offloop.run(equip_node, m, node, dict(info.get("resources", {}))))

    def done(f):
        try:
            started = f.result()
            if started:
                note(f"node {node[:12]} equipped: {', '.join(started)}")
        except Exception as e:  # noqa: BLE001 - reported; the node still works for compute
            note(f"equipping node {node[:12]} failed: {e!r:.200}")
    fut.add_done_callback(done)


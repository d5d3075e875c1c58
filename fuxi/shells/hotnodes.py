"""FuxiMaster's hot-node watch (issue 20 part 2): the agents' heartbeats judged by
``fuxi.core.hotnodes`` at most every ``HOT_NODES_CHECK_S``; each flag change an event
(``node_hot`` / ``node_hot_cleared``) and the ``fuxi_hot_nodes`` gauge. ``hot`` is what
placement reads: each job's grants avoid these nodes while others fit (FuxiMaster's
``sync``), and the service manager places replicas elsewhere while another node has room."""

from __future__ import annotations

from base import events, metrics
from fuxi.core.hotnodes import HotNodes

HOT_NODES_CHECK_S = 2.0  # how often the nodes' loads are judged again (heartbeats come faster)

HOT_NODES = metrics.gauge("fuxi_hot_nodes", "Alive nodes whose load stands well above their "
                          "peers'; new work avoids them while other nodes have room.")
HOT_NODE_CHANGES = metrics.counter("fuxi_hot_node_changes_total",
                                   "Nodes flagged hot or cleared.", labels=("change",))


class HotNodeWatch:
    def __init__(self):
        self.nodes = HotNodes()
        self.judged_at = float("-inf")
        self.hot: frozenset = frozenset()

    def judge(self, agents, totals: dict, now: float, master=None) -> frozenset:
        """Judge again if ``HOT_NODES_CHECK_S`` passed; tell the service manager. ``agents``:
        the agents' view (node -> state, load), or a callable making it (asked only then:
        every heartbeat comes here, and the view walks every node)."""
        if now - self.judged_at < HOT_NODES_CHECK_S:
            return self.hot
        self.judged_at = now
        change = self.nodes.update(agents() if callable(agents) else agents, totals)
        for node, load, med in change.flagged:
            HOT_NODE_CHANGES.inc(change="flagged")
            events.emit("fuxi", "node_hot", f"node {str(node)[:12]} runs {load:.2f} load per "
                        f"CPU, its peers {med:.2f}: new work goes elsewhere while it fits",
                        severity="warning", node=node, load_per_cpu=load, peers_median=med)
        for node, load, _ in change.cleared:
            HOT_NODE_CHANGES.inc(change="cleared")
            events.emit("fuxi", "node_hot_cleared", f"node {str(node)[:12]} is back in line"
                        + ("" if load is None else f" ({load:.2f} load per CPU)"), node=node)
        self.hot = change.hot
        HOT_NODES.set(len(self.hot))
        svc = getattr(master, "services", None)
        if svc is not None:
            svc.hot_nodes = self.hot
        return self.hot

"""Hot nodes (issue 20 part 2; pure): which alive nodes run well above their peers, judged from
the FuxiAgents' heartbeats (``fuxi.core.agentview``) by the one detector (``base.hotspots``).

A node's load is its heartbeat's ``load`` per CPU it has (a run queue of 6 on 2 CPUs is
3.0): the machine's load average, or, where Ray nodes share a machine, the runnable threads
of the node's own processes (``fuxi.shells.nodeload``, measured by its agent). Under
``NODE_LOAD`` a node is hot above 2x its peers' median and above ``HOT_NODE_LOAD_FLOOR`` per
CPU; the flag clears at 1.3x or at the floor. FuxiMaster gives hot nodes new work only when
nothing else fits: they join each job's avoided nodes in a grant (``fuxi.core.slots.grant``),
and a service replica is placed elsewhere while another node has room (``hot_last``) or,
needing no CPU, fits anywhere (``ServiceCore.plan(..., hot=)``). A node whose agent is not
heard from (no heartbeat, missing) is not judged.
"""

from __future__ import annotations

from typing import Any, Mapping

from base.hotspots import Change, HotRule, HotSpots

HOT_NODE_LOAD_FLOOR = 1.0  # load average per CPU below which a node is never hot
NODE_LOAD = HotRule("node load", factor=2.0, floor=HOT_NODE_LOAD_FLOOR, clear_factor=1.3)


def node_loads(agents: Mapping[str, Mapping[str, Any]],
               totals: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """node -> load per CPU, for alive nodes whose agent reported a load."""
    out = {}
    for node, a in agents.items():
        load = a.get("load")
        if node not in totals or load is None or a.get("state") != "healthy":
            continue  # not heard from, or already unhealthy (the blacklist's business)
        cpus = totals[node].get("CPU") or 0.0
        out[node] = load / max(float(cpus), 1.0)
    return out


class HotNodes:
    def __init__(self, rule: HotRule = NODE_LOAD):
        self.detector = HotSpots(rule)

    def update(self, agents: Mapping[str, Mapping[str, Any]],
               totals: Mapping[str, Mapping[str, float]]) -> Change:
        return self.detector.update(node_loads(agents, totals))

    @property
    def hot(self) -> frozenset:
        return frozenset(self.detector.hot)


def hot_last(nodes: dict[str, float], hot) -> dict[str, float]:
    """``nodes`` (node -> free CPU) with the hot ones' room hidden while another node has room
    for anything: placement that picks the roomiest then leaves them for last."""
    if not hot or all(n in hot for n in nodes):
        return nodes
    return {n: (0.0 if n in hot else v) for n, v in nodes.items()}

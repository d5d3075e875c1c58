"""A job's side of node drain (issue 18 part 5, ``fuxi.core.drain``): JobCore's reaction to
the nodes FuxiMaster's sync says are leaving. Pure; a mixin of ``fuxi.core.jobcore.JobCore``
(kept here: that module is near its size limit).

* A worker on a *draining* node takes no new work; it is released once its queue is empty, so
  the attempts it runs finish where they are.
* A worker on an *overdue* node (its drain timeout passed) stops now: its running attempts are
  killed and their instances go back to the ready queue, not counted as failures (as for a
  preemption)."""

from __future__ import annotations

from typing import Any, Collection


class NodeDrainMixin:
    leaving: frozenset = frozenset()  # nodes whose workers take no new work

    def nodes_leaving(self, draining: Collection[str], overdue: Collection[str],
                      now: float) -> list[Any]:
        """FuxiMaster's draining and overdue nodes, as its last sync said."""
        overdue = frozenset(overdue)
        self.leaving = frozenset(draining) | overdue
        acts: list[Any] = []
        for node in sorted(self.leaving):
            wids = self.index.in_order(self.index.live_on_node.get(node, ()))
            for w in [self.workers[x] for x in wids]:
                if w.dead:
                    continue
                if node in overdue:
                    self.preempted += len(w.queue)  # moved, not failed
                    acts += self._retire(w, f"moved: node {node[:12]} is drained "
                                            f"(its drain timeout passed)", now)
                    continue
                if not w.draining:
                    w.draining = True
                    self._touch(w)
                if w.started and not w.queue:
                    acts += self._retire(w, f"node {node[:12]} draining: slot returned", now)
        return acts

"""Node drain (issue 18 part 5): which nodes may take new work, and when a drained one can be
removed with no loss. Pure: plain values in and out, time is an argument.

Every node FuxiMaster sees has a state::

              drain                       emptied (no replica, no slot, no chunk left)
    ACTIVE ----------> DRAINING --------------------------------------> DRAINED (removable)
      ^   <----------    |   ^  <------------------------------------------   |
      |     undrain      |   |               refilled (something landed)      |
      |                  |   +-------------------- undrain ------------------>+-> ACTIVE
      |                  |
      +---- back --------+---- lost ----> DEAD ----back (drain still wanted)----> DRAINING
                                            |
                                            +----back (not wanted)----------> ACTIVE

* ``drain`` records the operator's intent (when, and how long batch instances may take to
  finish: ``timeout_s``); the intent survives a FuxiMaster take-over (the shell stores
  :meth:`DrainBook.to_doc`). A DRAINING or DRAINED node is *leaving*: the scheduler grants
  nothing there, service replicas are started elsewhere before the ones there are drained,
  and Pangu copies its chunks away.
* A DRAINING node whose timeout passed is *overdue*: the batch attempts still running there
  are moved (re-queued, not counted as failures).
* DRAINED means nothing is left there (:class:`Holdings` all zero): the node can be removed.
* Illegal moves raise :class:`IllegalTransition` (a bug, not bad input); bad input (an
  unknown node, a bad timeout, a damaged stored document) raises :class:`fuxi.errors.BadInput`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from fuxi.core.agentview import NODE_ID_CHARS_MAX  # a Ray node id's bound
from fuxi.errors import BadInput

DRAIN_TIMEOUT_DEFAULT_S = 600.0  # batch instances on a draining node may run this long
DRAIN_TIMEOUT_MAX_S = 7 * 86400.0  # the longest drain timeout accepted
DRAINS_MAX = 4096  # nodes with a drain wanted at once (the stored document's bound)
DEAD_KEPT_MAX = 256  # dead nodes remembered (oldest forgotten first)


class NodeState(str, enum.Enum):
    ACTIVE = "active"
    DRAINING = "draining"
    DRAINED = "drained"
    DEAD = "dead"


class IllegalTransition(Exception):
    """A move the table does not allow: a programming error."""


S = NodeState
# (from, event) -> to: every move of a node's state, in one place.
TRANSITIONS: dict[tuple[NodeState, str], NodeState] = {
    (S.ACTIVE, "drain"): S.DRAINING,
    (S.DRAINING, "emptied"): S.DRAINED,
    (S.DRAINED, "refilled"): S.DRAINING,
    (S.DRAINING, "undrain"): S.ACTIVE,
    (S.DRAINED, "undrain"): S.ACTIVE,
    (S.ACTIVE, "lost"): S.DEAD,
    (S.DRAINING, "lost"): S.DEAD,
    (S.DRAINED, "lost"): S.DEAD,
    (S.DEAD, "back"): S.ACTIVE,
    (S.DEAD, "back_draining"): S.DRAINING,
}


@dataclass(frozen=True)
class Holdings:
    """What a node still holds: live service replicas, slots granted to batch workers, Pangu
    chunk replicas."""
    replicas: int = 0
    slots: int = 0
    chunks: int = 0

    def empty(self) -> bool:
        return self.replicas == 0 and self.slots == 0 and self.chunks == 0

    def view(self) -> dict:
        return {"replicas": self.replicas, "slots": self.slots, "chunks": self.chunks}


@dataclass
class NodeRecord:
    node: str
    state: NodeState = S.ACTIVE
    wanted: bool = False  # a drain was asked and not undone
    requested_at: float | None = None
    timeout_s: float = DRAIN_TIMEOUT_DEFAULT_S
    changed_at: float = 0.0
    holds: Holdings = field(default_factory=Holdings)

    def move(self, event: str, now: float) -> tuple[NodeState, NodeState]:
        to = TRANSITIONS.get((self.state, event))
        if to is None:
            raise IllegalTransition(f"node {self.node[:12]}: {event!r} from {self.state.value}")
        was, self.state, self.changed_at = self.state, to, now
        return was, to


def check_node_id(node: Any) -> str:
    if not isinstance(node, str) or not node or len(node) > NODE_ID_CHARS_MAX \
            or not node.isalnum():
        raise BadInput(f"node {str(node)[:40]!r}: expected a Ray node id (hex, up to "
                       f"{NODE_ID_CHARS_MAX} characters)")
    return node


def check_timeout(timeout_s: Any) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
            or not math.isfinite(timeout_s) or not 0 <= timeout_s <= DRAIN_TIMEOUT_MAX_S:
        raise BadInput(f"drain timeout {timeout_s!r:.40}: expected seconds from 0 to "
                       f"{DRAIN_TIMEOUT_MAX_S:g} (DRAIN_TIMEOUT_MAX_S)")
    return float(timeout_s)


class DrainBook:
    """Every node's state and the operators' drain intents."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeRecord] = {}

    # ------------------------------------------------------------ operators
    def resolve(self, given: Any) -> str:
        """The node an operator named: its whole id or a unique prefix (``fuxi node list``
        shows 12 characters)."""
        prefix = check_node_id(given)
        found = [n for n in self.nodes if n.startswith(prefix)]
        if len(found) != 1:
            why = "no node" if not found else f"{len(found)} nodes"
            raise BadInput(f"node {prefix[:40]!r}: {why} with that id (prefix); expected one "
                           f"of {sorted(n[:12] for n in self.nodes)[:20]}")
        return found[0]

    def drain(self, node: str, now: float, timeout_s: float = DRAIN_TIMEOUT_DEFAULT_S) -> dict:
        """Ask that ``node`` take no new work and be emptied (idempotent: asking again keeps
        the first request's time and takes the new timeout)."""
        rec = self.nodes[self.resolve(node)]
        timeout_s = check_timeout(timeout_s)
        if not rec.wanted and sum(r.wanted for r in self.nodes.values()) >= DRAINS_MAX:
            raise BadInput(f"{DRAINS_MAX} nodes are draining already (DRAINS_MAX)")
        if not rec.wanted:
            rec.wanted, rec.requested_at = True, now
        rec.timeout_s = timeout_s
        if rec.state is S.ACTIVE:
            rec.move("drain", now)
        return self.view_of(rec.node, now)

    def undrain(self, node: str, now: float) -> dict:
        """Put ``node`` back to work (idempotent)."""
        rec = self.nodes[self.resolve(node)]
        rec.wanted, rec.requested_at = False, None
        if rec.state in (S.DRAINING, S.DRAINED):
            rec.move("undrain", now)
        return self.view_of(rec.node, now)

    # ------------------------------------------------------------ what the cluster shows
    def observe(self, alive: Mapping[str, Holdings], now: float) -> list[tuple[str, str, str]]:
        """The alive nodes and what each holds, as read now. Returns the moves made
        ``(node, from, to)``."""
        moves = []
        for node, holds in alive.items():
            rec = self.nodes.get(node)
            if rec is None:
                rec = self.nodes[check_node_id(node)] = NodeRecord(node, changed_at=now)
            rec.holds = holds
            if rec.state is S.DEAD:
                moves.append((node, *rec.move("back_draining" if rec.wanted else "back", now)))
            if rec.state is S.DRAINING and holds.empty():
                moves.append((node, *rec.move("emptied", now)))
            elif rec.state is S.DRAINED and not holds.empty():
                moves.append((node, *rec.move("refilled", now)))
        for node, rec in self.nodes.items():
            if node not in alive and rec.state is not S.DEAD:
                moves.append((node, *rec.move("lost", now)))
        dead = sorted((r for r in self.nodes.values() if r.state is S.DEAD and not r.wanted),
                      key=lambda r: (r.changed_at, r.node))
        for r in dead[:max(0, len(dead) - DEAD_KEPT_MAX)]:
            del self.nodes[r.node]
        return [(n, a.value, b.value) for n, a, b in moves]

    def leaving(self) -> frozenset[str]:
        """Nodes that take no new work (draining or drained)."""
        return frozenset(n for n, r in self.nodes.items() if r.state in (S.DRAINING, S.DRAINED))

    def overdue(self, now: float) -> frozenset[str]:
        """Draining nodes whose batch work is past its timeout: to be moved."""
        return frozenset(n for n, r in self.nodes.items() if r.state is S.DRAINING
                         and r.requested_at is not None and now - r.requested_at >= r.timeout_s)

    def view_of(self, node: str, now: float) -> dict:
        r = self.nodes[node]
        left = None
        if r.state is S.DRAINING and r.requested_at is not None:
            left = max(0.0, r.timeout_s - (now - r.requested_at))
        return {"node_id": node, "state": r.state.value, "drain_wanted": r.wanted,
                "removable": r.state is S.DRAINED, "holds": r.holds.view(),
                "since_s": round(now - r.changed_at, 1), "move_in_s": left}

    def view(self, now: float) -> dict[str, dict]:
        return {n: self.view_of(n, now) for n in sorted(self.nodes)}

    # ------------------------------------------------------------ hard state
    def to_doc(self) -> dict:
        """The drain intents (what must survive a take-over); states are rebuilt by the next
        :meth:`observe`."""
        return {"v": 1, "drains": {n: {"requested_at": r.requested_at, "timeout_s": r.timeout_s}
                                   for n, r in sorted(self.nodes.items()) if r.wanted}}

    @classmethod
    def from_doc(cls, doc: Any, now: float) -> "DrainBook":
        """A stored document back (BadInput, naming what is wrong, for a damaged one). The
        nodes start DEAD and draining ones come back DRAINING at the first observe."""
        book = cls()
        if not isinstance(doc, dict) or doc.get("v") != 1 or not isinstance(doc.get("drains"), dict):
            raise BadInput(f"stored drain record {str(doc)[:60]!r}: expected {{'v': 1, "
                           f"'drains': {{node: {{requested_at, timeout_s}}}}}}")
        if len(doc["drains"]) > DRAINS_MAX:
            raise BadInput(f"stored drain record names {len(doc['drains'])} nodes; at most "
                           f"{DRAINS_MAX} (DRAINS_MAX)")
        for node, d in doc["drains"].items():
            if not isinstance(d, dict):
                raise BadInput(f"stored drain of node {str(node)[:20]!r}: expected a mapping")
            at = d.get("requested_at")
            if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
                raise BadInput(f"stored drain of node {str(node)[:20]!r}: requested_at "
                               f"{at!r:.30}; expected a time in seconds")
            book.nodes[check_node_id(node)] = NodeRecord(
                node, S.DEAD, True, float(at), check_timeout(d.get("timeout_s")), now)
        return book

"""The watches a replica serves: subscriptions to changes under a path, each fed from the
tree's event history (``nuwa.core.tree.Tree.events_since``) in (revision, index) order.

Watches are served by the leader (it applies first, while a follower learns of a commit only
with the next append or heartbeat). When it loses leadership it closes their connections, so
each client resubscribes at the new leader from its last position. A watcher sees only what
its user may read (Zhongkui), and a backlog is split into frames of at most
``watch_events_per_frame_max`` events.
"""

from __future__ import annotations

from typing import Callable

from nuwa import errors as E
from nuwa.core.tree import Tree
from nuwa.io.conn import ClientConn


class Watches:
    """Watch id -> (connection, path, recursive). ``tree`` returns the replica's current tree."""

    def __init__(self, replica_id: int, config, guard, tree: Callable[[], Tree]) -> None:
        self.id = replica_id
        self.config = config
        self.guard = guard
        self.tree = tree
        self.watchers: dict[int, tuple[ClientConn, str, bool]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self.watchers)

    def held_by(self, conn: ClientConn) -> bool:
        return any(c is conn for c, _, _ in self.watchers.values())

    def count_of(self, user: str) -> int:
        """Watches held on connections of ``user`` (watches_per_user_max counts these)."""
        return sum(c.user == user for c, _, _ in self.watchers.values())

    def watch(self, conn: ClientConn, req: dict) -> dict:
        """Subscribe; the backlog is every event after the position (``from_revision``, and
        ``from_index`` within it when given: a watcher cut off in the middle of a revision's
        events resumes at the next one), sent before the answer, in (revision, index)
        order. Each event carries its ``revision`` and ``index``."""
        if len(self.watchers) >= self.config.watchers_max:
            raise E.Unavailable(f"watchers_max={self.config.watchers_max} watches on replica {self.id}")
        path, recursive = req.get("path"), bool(req.get("recursive", False))
        if not isinstance(path, str):
            raise E.BadPath(f"watch: path must be a string, got {path!r}")
        tree = self.tree()
        from_rev = req.get("from_revision", tree.revision)
        if from_rev is None:
            from_rev = tree.revision
        # events_since refuses a revision or index that is not an int >= 0 (BadRequest).
        backlog = self._visible(conn, tree.events_since(from_rev, path, recursive,
                                                        index=req.get("from_index")))
        self._seq += 1
        wid = self._seq
        self.watchers[wid] = (conn, path, recursive)
        self._send_events(conn, wid, backlog)
        return {"watch": wid, "revision": tree.revision}

    def unwatch(self, conn: ClientConn, wid) -> None:
        w = self.watchers.get(wid)
        if w is not None and w[0] is conn:  # only the caller's own watches
            del self.watchers[wid]

    def drop_connection(self, conn: ClientConn) -> None:
        """``conn`` closed: its watches end."""
        for wid in [w for w, (c, *_) in self.watchers.items() if c is conn]:
            del self.watchers[wid]

    def close_all(self) -> None:
        """Leadership lost: close every watcher's connection (each client resubscribes at
        the new leader from its last revision, rather than going quiet)."""
        for conn in {c for c, _, _ in self.watchers.values()}:
            conn.writer.close()
        self.watchers.clear()

    def notify(self, rev_before: int) -> None:
        """The tree moved past ``rev_before``: send each watcher what it has not seen."""
        tree = self.tree()
        for wid, (conn, path, recursive) in list(self.watchers.items()):
            try:
                evs = tree.events_since(rev_before, path, recursive)
            except E.Compacted as c:
                conn.send({"watch": wid, "error": c.to_dict()})
                del self.watchers[wid]
                continue
            self._send_events(conn, wid, self._visible(conn, evs))

    def _send_events(self, conn: ClientConn, wid: int, events: list) -> None:
        """Every event, in order, at most ``watch_events_per_frame_max`` per message (a
        recursive delete of a big subtree must not make one huge frame)."""
        step = max(1, self.config.watch_events_per_frame_max)
        for i in range(0, len(events), step):
            conn.send({"watch": wid, "events": [_event(e) for e in events[i:i + step]]})

    def _visible(self, conn: ClientConn, events: list) -> list:
        """The events this watcher may read: a recursive watch on an open prefix must not
        carry changes under a protected or restricted one (Zhongkui)."""
        if not self.guard.enabled or not events or conn.who is None:
            return events
        who = conn.who[1]
        if who.admin:
            return events
        out = []
        for e in events:
            path, stat = (e["path"], e["stat"]) if isinstance(e, dict) else (e.path, e.stat)
            creator = stat["creator"] if isinstance(stat, dict) else stat.creator
            if self.guard.decision(who, "nuwa", path, "read", creator).allowed:
                out.append(e)
        return out


def _event(e) -> dict:
    return e if isinstance(e, dict) else e.to_dict()

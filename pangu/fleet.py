"""The chunkservers as the Pangu master sees them: who reported, from which node, with how
much room and which replicas (chunk id -> version, length), who is draining and who went
silent; and the master's calls to them.

Replica locations are *not* journaled: chunkservers report their chunks in every heartbeat
(to every master, so a standby's view is warm), as in GFS and HDFS.
"""

from __future__ import annotations

from base import actors, metrics
from pangu.core import placement
from base.hotspots import good_load
from pangu.core.hotservers import QUEUE_REPORTED_MAX, HotServers
from pangu.errors import IsADir, NotFound
from pangu.eventlog import EventLog
from pangu.handles import Handles

CONTROL_CALL_TIMEOUT_S = 10.0  # master -> chunkserver control call
HOT_SERVERS_CHECK_S = 2.0  # how often chunkservers' disk use and queues are judged again
HOT_SERVERS = metrics.gauge("pangu_hot_chunkservers", "Chunkservers far fuller, or with far "
                            "longer queues, than their peers; new replicas avoid them while "
                            "others have room.")


class ServerView:
    __slots__ = ("id", "name", "node", "capacity", "used", "last", "chunks", "draining", "dead",
                 "dir", "queue")

    def __init__(self, rep: dict, now: float):
        self.id = rep["id"]
        self.draining = False
        self.dead = False
        self.update(rep, now)

    def update(self, rep: dict, now: float) -> None:
        self.name, self.node, self.dir = rep["name"], rep["node"], rep.get("dir")
        self.capacity, self.used = int(rep["capacity_bytes"]), int(rep["used_bytes"])
        q = rep.get("queue", 0.0)  # its mean reads and writes in flight (hotservers.QueueMeter)
        self.queue = float(q) if good_load(q) else 0.0
        # A replica's version only grows while it exists; a report built before a version
        # change the master made (and saw succeed) must not roll its view back.
        known = getattr(self, "chunks", {})
        self.chunks = {c: (max(int(v), known.get(c, (0, 0))[0]), int(n))
                       for c, (v, n) in rep["chunks"].items()}
        self.last = now
        self.dead = False
        if rep.get("disk_failed"):
            self.draining = True  # its disk failed: no new replicas there, its data moves away

    def as_server(self, hot: bool = False) -> placement.Server:
        return placement.Server(self.id, self.node, self.capacity, self.used, not self.dead,
                                self.draining, hot, min(self.queue, QUEUE_REPORTED_MAX))


class Fleet:
    def __init__(self, namespace: str, log: EventLog, auth, mastership):
        self.servers: dict[str, ServerView] = {}
        self.foreign: set[str] = set()  # chunkservers of another file system
        self.busy: set[str] = set()  # chunks being re-versioned, truncated or copied
        self.log = log
        self.auth = auth
        self.mastership = mastership  # its term goes with every call; its namespace
        self.handles = Handles(namespace)
        self.hot = HotServers()  # disks far fuller than their peers' (issue 20 part 2)
        self._hot_judged_at = float("-inf")

    # ------------------------------------------------------------ reports
    def report(self, rep: dict, fsid: str | None, now: float) -> ServerView | None:
        """A heartbeat's report: the server's view, updated (None: the server belongs to
        another file system and is ignored)."""
        if rep.get("fsid") and fsid and rep["fsid"] != fsid:
            self.servers.pop(rep["id"], None)
            if rep["id"] not in self.foreign:
                self.foreign.add(rep["id"])
                self.log.record("foreign_server", f"chunkserver {rep['id']} holds chunks of "
                                                  f"file system {rep['fsid']}, not {fsid}: "
                                                  f"ignored")
            return None
        sv = self.servers.get(rep["id"])
        if sv is None:
            sv = self.servers[rep["id"]] = ServerView(rep, now)
            self.log.record("server_joined", f"chunkserver {sv.id} ({sv.name}) joined")
        else:
            if sv.dead:
                self.log.record("server_back", f"chunkserver {sv.id} is heartbeating again")
            if sv.name != rep["name"]:
                self.handles.forget(sv.name)
            sv.update(rep, now)
        for cid in rep.get("corrupt", []):
            self.log.record("corrupt", f"chunk {cid}: the replica on {sv.id} failed its "
                                       f"checksum and was removed")
        if now - self._hot_judged_at >= HOT_SERVERS_CHECK_S:
            self._judge_hot(now)
        return sv

    def _judge_hot(self, now: float) -> None:
        """Flag (and clear) chunkservers far fuller than their peers: an event each, the
        ``pangu_hot_chunkservers`` gauge; placement reads ``ServerView.as_server().hot``."""
        self._hot_judged_at = now
        change = self.hot.update(sv.as_server() for sv in self.servers.values())
        for sid, v, med, signal in change.flagged:
            what = (f"is {v:.0%} full, its peers {med:.0%}" if signal == "disk use" else
                    f"has {v:.1f} reads and writes in flight, its peers {med:.1f}")
            self.log.record("server_hot", f"chunkserver {sid} {what}: new replicas go "
                                          f"elsewhere while they fit")
        for sid, _, _ in change.cleared:
            self.log.record("server_hot_cleared", f"chunkserver {sid} is back in line with "
                                                  f"its peers' disk use and queue")
        HOT_SERVERS.set(len(change.hot))

    def declare_dead(self, now: float, dead_after_s: float) -> list[str]:
        """Servers silent for ``dead_after_s``, newly declared dead."""
        out = []
        for sv in self.servers.values():
            if not sv.dead and now - sv.last > dead_after_s:
                sv.dead = True
                self.log.record("server_dead", f"chunkserver {sv.id} silent for "
                                               f"{now - sv.last:.1f}s: declared dead")
                out.append(sv.id)
        return out

    def live_since(self, t: float) -> int:
        """Live servers that reported after ``t``."""
        return sum(1 for s in self.servers.values() if not s.dead and s.last > t)

    def drain(self, server: str, draining: bool) -> dict:
        sv = self.servers.get(server)
        if sv is None:
            raise NotFound(f"no chunkserver {server!r}; known: {sorted(self.servers)}")
        sv.draining = draining
        self.log.record("drain" if draining else "undrain", f"chunkserver {server} "
                        + ("drains: its data moves away" if draining else "takes data again"))
        return {"server": server, "draining": draining, "chunks": len(sv.chunks)}

    # ------------------------------------------------------------ replica views
    def as_servers(self) -> list[placement.Server]:
        hot = self.hot.hot
        return [s.as_server(s.id in hot) for s in self.servers.values()]

    def held(self, live_only: bool = False) -> dict[str, dict]:
        """Server id -> its replicas (chunk id -> (version, length)), live servers only if
        asked."""
        return {sid: sv.chunks for sid, sv in self.servers.items()
                if not (live_only and sv.dead)}

    def used_bytes(self) -> dict[str, int]:
        return {sid: sv.used for sid, sv in self.servers.items()}

    def current(self, cid: str, version: int) -> list[str]:
        """Live servers holding chunk ``cid`` at ``version`` or newer."""
        return sorted(sid for sid, sv in self.servers.items()
                      if not sv.dead and sv.chunks.get(cid, (0, 0))[0] >= version)

    def set_replica(self, sid: str, cid: str, version: int, length: int | None = None) -> None:
        """What a call that succeeded changed on ``sid`` (before its next report)."""
        chunks = self.servers[sid].chunks
        chunks[cid] = (version, chunks[cid][1] if length is None else length)

    def forget_replica(self, sid: str, cid: str) -> None:
        self.servers[sid].chunks.pop(cid, None)

    def file_info(self, path: str) -> dict:
        """The file's stat with its chunks, each with its current replicas."""
        ns = self.mastership.ns
        st = ns.stat(path)
        if st["type"] != "file":
            raise IsADir(f"{path} is a directory; expected a file")
        out = []
        for c in ns.chunks(path):
            reps = [{"id": sid, "name": self.servers[sid].name, "node": self.servers[sid].node,
                     "dir": self.servers[sid].dir} for sid in self.current(c.id, c.version)]
            out.append({"id": c.id, "version": c.version, "length": c.length, "replicas": reps})
        return dict(st, chunks=out)

    def status(self, now: float) -> list[dict]:
        return [{"id": s.id, "name": s.name, "node": s.node, "dead": s.dead,
                 "draining": s.draining, "capacity_bytes": s.capacity,
                 "used_bytes": s.used, "chunks": len(s.chunks),
                 "last_heartbeat_s": round(now - s.last, 2), "queue": round(s.queue, 2),
                 "hot": self.hot.signal.get(s.id)}
                for s in sorted(self.servers.values(), key=lambda s: s.id)]

    # ------------------------------------------------------------ calls
    async def call(self, server: str, method: str, *args,
                   timeout_s: float = CONTROL_CALL_TIMEOUT_S):
        sv = self.servers[server]
        kw = self.auth.call_kwargs(self.mastership.epoch)
        try:
            return await actors.acall(getattr(self.handles.get(sv.name), method), *args,
                                      timeout_s=timeout_s, **kw)
        except Exception:
            self.handles.forget(sv.name)
            raise

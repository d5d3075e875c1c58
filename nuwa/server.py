"""One Nuwa replica as a plain asyncio server: Raft node + WAL + namespace tree + sockets.

This is the shell around the pure cores (``nuwa.raft.RaftNode``, ``nuwa.tree.Tree``). It
owns time (a tick task), disk (``nuwa.wal.Wal``) and network (``nuwa.transport``). The Ray
actor in ``nuwa.replica`` only hosts it. Tests can also run several in one process without
Ray.

The Raft loop: every event (a tick, a peer message, a client proposal) steps the node, then
``_process_ready`` persists the Ready's entries and hard state (one fsync), sends its
messages, applies committed entries to the tree, answers the clients waiting on them, and
serves reads whose read index has been applied.

Client requests are msgpack maps over the same socket (hello ``b"C"``). Writes and
linearizable reads are served by the leader only; other replicas answer ``NotLeader`` with the
leader's address. Sessions are timed by the leader, like etcd leases: keep-alives renew a
leader-local deadline, and the leader proposes ``session_close(expired)`` once it passes. A
new leader gives every session a full TTL again. The deadlines count the leader's own ticks
(never wall time): a tick is at least ``tick_s`` of monotonic time, so a session lives at
least its TTL after its last keep-alive, and a jump of the wall clock changes nothing.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from nuwa import errors as E
from nuwa import peer_guard
from nuwa.codec import encode_message
from nuwa.commands import parse_command
from nuwa.raft import ConfChangeRefused, MemoryStorage, MsgType, NotLeader, RaftNode, Role
from nuwa.raft_types import ProposalDropped
from nuwa.transport import Transport, frame, read_frame
from nuwa.tree import Tree
from nuwa.wal import Wal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    tick_s: float = 0.02
    election_ticks: int = 15  # 0.3-0.6 s election timeout: leader recovery well under 1 s
    heartbeat_ticks: int = 2
    snapshot_every_entries: int = 10_000
    snapshot_trailing_entries: int = 5_000  # kept after a snapshot, so a follower a little
    #                                         behind catches up from the log, not a snapshot
    pending_max: int = 20_000  # proposals and reads waiting for an answer, per replica
    watchers_max: int = 10_000  # watches per replica
    watch_events_per_frame_max: int = 1000  # events in one watch message (a big txn is split)
    client_inflight_max: int = 1024  # requests in flight on one client connection
    read_timeout_s: float = 5.0


WRITE_OPS = {"create", "set", "delete", "txn"}
READ_OPS = {"get", "list", "stat", "exists"}


class ReplicaServer:
    def __init__(self, replica_id: int, voters: list[int], data_dir: str,
                 config: ServerConfig = ServerConfig(), seed: int | None = None,
                 rejoin: bool = False, auth: dict | None = None, namespace: str | None = None,
                 peer_secret: bytes | None = None):
        from zhongkui.shell import make_guard

        self.id = replica_id
        # Zhongkui: with authentication on, every request carries a token (``cred``) and each
        # operation is decided on its path (the node's creator owns it).
        self.guard = make_guard(auth, f"nuwa-{replica_id}", namespace)
        self.rejoin = rejoin  # the group existed before: an empty disk means the disk was lost
        self.voters = list(voters)
        self.config = config
        self.data_dir = data_dir
        self.rng = random.Random(seed if seed is not None else secrets.randbits(64))
        self.wal = Wal(data_dir)
        self.storage = MemoryStorage()
        self.tree = Tree()
        self.node: RaftNode | None = None
        # Peers prove membership with the cluster's peer secret (nuwa.peer_auth); without one,
        # only replicas in this same process can be peers (nuwa.transport.PROCESS_PEER_SECRET).
        self.transport = Transport(replica_id, self._on_peer, self._on_client,
                                   peer_secret=peer_secret, is_member=self._is_peer_member)
        self.peer_dropped: collections.Counter = collections.Counter()  # reason -> messages
        self.addresses: dict[int, tuple[str, int]] = {}
        self.applied = 0
        self._last_hs = None
        self.pending: dict[str, asyncio.Future] = {}  # request id -> future of apply result
        self._proposals: list[tuple[str, bytes]] = []  # (request id, entry) not yet in Raft
        self.reads: dict[bytes, asyncio.Future] = {}  # read-index ctx -> future of its index
        self.read_waiters: list[tuple[int, asyncio.Future]] = []  # (index, future) until applied
        self.session_deadlines: dict[int, int] = {}  # session -> tick at which it expires
        self._ticks = 0  # ticks of this replica's clock (session expiry counts these)
        self.was_leader = False
        self.watchers: dict[int, tuple[Any, str, bool]] = {}  # id -> (conn, path, recursive)
        self._watch_seq = 0
        self._seq = 0
        self._tick_task: asyncio.Task | None = None
        self._ready_scheduled = False
        self.stopped = False
        self.started_at = time.time()

    # ------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Recover from disk and start serving on ``host`` (clients and peers share the
        port): loopback unless the group spans machines, then the node's own address
        (``nuwa.group``), never every interface. ``port`` 0 picks a free one. A restarted
        replica asks for its old port so the addresses clients hold stay valid."""
        rec = self.wal.recover()
        if rec.snapshot is not None:
            self.storage.apply_snapshot(rec.snapshot)
            self.tree = Tree.restore(rec.snapshot.data)
            self.applied = rec.snapshot.index
        if rec.entries:
            self.storage.append(rec.entries)
        if rec.hard_state is not None:
            self.storage.set_hard_state(rec.hard_state)
            self._last_hs = rec.hard_state
        self.voter = self._membership(rec)
        self.node = RaftNode(self.id, self.voters, self.storage, self.rng,
                             election_ticks=self.config.election_ticks,
                             heartbeat_ticks=self.config.heartbeat_ticks, applied=self.applied,
                             voter=self.voter)
        try:
            port = await self.transport.listen(host, port)
        except OSError:
            port = await self.transport.listen(host, 0)  # the old port is taken: take another
        self._tick_task = asyncio.get_running_loop().create_task(self._ticker())
        return port

    def _membership(self, rec) -> bool:
        """Whether this replica may vote, and its bootstrap voters (``member.json``).

        The configuration itself lives in the Raft log and snapshots (membership changes);
        the bootstrap voters only matter before the first conf entry. They are recorded at
        the first start, so a restart uses the same ones whatever it is given. A replica
        that joins an existing group starts with none and learns the configuration from the
        leader. One that lost its disk may have voted in a term it no longer remembers, so
        voting again could elect two leaders in one term: it rejoins as a non-voter (it
        replicates, applies and acks, but never votes or campaigns), for good under this id;
        ``nuwa.group`` replaces it with a new id."""
        marker = os.path.join(self.data_dir, "member.json")
        if os.path.exists(marker):
            with open(marker) as f:
                member = json.load(f)
            self.voters = list(member.get("bootstrap", member.get("voters", self.voters)))
            return bool(member["voter"])
        empty = rec.hard_state is None and rec.snapshot is None and not rec.entries
        voter = not (self.rejoin and empty)
        tmp = marker + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"id": self.id, "voter": voter, "bootstrap": sorted(self.voters)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, marker)
        if not voter:
            logger.warning("replica %s lost its disk: rejoining as a non-voter", self.id)
        return voter

    def set_peers(self, addresses: dict[int, tuple[str, int]]) -> None:
        self.addresses = dict(addresses)
        self.transport.set_peers(addresses)

    async def stop(self) -> None:
        self.stopped = True
        if self._tick_task is not None:
            self._tick_task.cancel()
        await self.transport.close()
        self.wal.close()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(E.Unavailable("replica stopped"))

    def status(self) -> dict:
        st = dict(self.node.status()) if self.node else {}
        if self.stopped and st.get("role") is Role.LEADER:
            st["role"] = Role.FOLLOWER  # stopped (its disk failed, or stop()): it leads nothing
        st.update(revision=self.tree.revision, applied=self.applied, voter=self.voter,
                  address=self.addresses.get(self.id), wal_bytes=self.wal.size_bytes(),
                  sessions=len(self.tree.sessions()), watchers=len(self.watchers),
                  peer_dropped=dict(self.peer_dropped),
                  peer_auth_failed=self.transport.peer_auth_failures)
        st["stopped"] = self.stopped
        return st

    # ------------------------------------------------------------ raft loop

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            if self.stopped:
                return
            self._ticks += 1
            try:
                self.node.tick()
                self._leader_duties()
                self._process_ready()
            except Exception as e:
                self._fatal(e)

    def _is_peer_member(self, peer_id: int) -> bool:
        """A peer may connect if it is in our configuration (voters and learners, from the
        log) or among the peers the platform published (a replica joining the group is
        published before its add_learner commits, and knows no configuration yet)."""
        if self.node is None or peer_id == self.id:
            return False
        return peer_id in self.node.voters or peer_id in self.node.learners \
            or peer_id in self.addresses

    def _on_peer(self, peer_id: int, payload: bytes) -> None:
        """One frame from authenticated peer ``peer_id``: checked in full before the Raft
        core sees it (``nuwa.peer_guard``); a bad one is counted and dropped, never raised."""
        if self.stopped:
            return
        members = {*self.node.voters, *self.node.learners, *self.addresses} - {self.id}
        reason = peer_guard.deliver(self.node, payload, peer_id=peer_id, members=members,
                                    validate_snapshot=Tree.restore, on_drop=self._peer_drop)
        if reason is None:
            self._schedule_ready()

    def _peer_drop(self, reason: str, detail: str) -> None:
        self.peer_dropped[reason] += 1
        n = self.peer_dropped[reason]
        if n & (n - 1) == 0:  # 1, 2, 4, ...: a flood of bad messages cannot flood the log
            logger.warning("replica %s dropped a peer message (%s, %s so far): %s", self.id,
                           reason, n, detail)
        if reason == "step_failed":
            self._schedule_ready()  # the step may have queued output before it failed

    def _schedule_ready(self) -> None:
        """Batch: handle every message that arrived in this loop iteration, then one Ready."""
        if not self._ready_scheduled:
            self._ready_scheduled = True
            asyncio.get_running_loop().call_soon(self._run_ready)

    def _run_ready(self) -> None:
        self._ready_scheduled = False
        if self.stopped:
            return
        try:
            self._process_ready()
        except Exception as e:
            self._fatal(e)

    def _fatal(self, e: Exception) -> None:
        """A failure inside the Raft loop (a WAL write or fsync, applying, restoring a snapshot)
        leaves this replica's disk or state machine in doubt; carrying on could apply entries
        out of order or count entries as durable that are not. Stop serving instead: the
        others keep the group available, and a restart recovers from what is on disk."""
        logger.critical("replica %s stops after a failure in its Raft loop: %r", self.id, e,
                        exc_info=True)
        self.stopped = True
        if self._tick_task is not None:
            self._tick_task.cancel()
        asyncio.get_running_loop().create_task(self.transport.close())
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(E.OutcomeUnknown(f"replica {self.id} stopped: {e!r}"))

    def _process_ready(self) -> None:
        self._flush_proposals()
        while self.node.has_ready():
            rd = self.node.ready()
            if rd.snapshot is not None:
                tree = Tree.restore(rd.snapshot.data)  # validate before it is on disk
                old_rev = self.tree.revision
                self.wal.save_snapshot(rd.snapshot)
                self.storage.apply_snapshot(rd.snapshot)
                self.tree = tree
                self.applied = rd.snapshot.index
                if self.watchers:
                    self._notify_watchers(old_rev)
            # A leader may replicate its new entries before they are on its own disk (Raft
            # thesis 10.2.1): followers' fsyncs then overlap ours. Its commit still waits for
            # this fsync, because committed entries only come in a later Ready. Everything
            # else (votes, a follower's acks) goes out only once durable.
            early = [m for m in rd.messages if m.type is MsgType.APPEND] if rd.role is Role.LEADER else []
            if early:
                self.transport.send_many([(m.to, encode_message(m)) for m in early])
            if rd.entries or rd.hard_state is not None:
                hs = rd.hard_state
                must_sync = bool(rd.entries) or (hs is not None and (
                    self._last_hs is None or (hs.term, hs.vote) != (self._last_hs.term, self._last_hs.vote)))
                self.wal.save(hs, rd.entries, sync=must_sync)
                if rd.entries:
                    self.storage.append(rd.entries)
                if hs is not None:
                    self.storage.set_hard_state(hs)
                    self._last_hs = hs
            late = [(m.to, encode_message(m)) for m in rd.messages
                    if not early or m.type is not MsgType.APPEND]
            if late:
                self.transport.send_many(late)
            self._apply(rd.committed_entries)
            for rs in rd.read_states:
                fut = self.reads.pop(rs.context, None)
                if fut is not None and not fut.done():
                    self.read_waiters.append((rs.index, fut))
            self.node.advance(rd)
        self._release_reads()
        self._maybe_snapshot()

    def _apply(self, entries) -> None:
        if not entries:
            return
        rev_before = self.tree.revision
        for e in entries:
            if e.index <= self.applied:
                continue
            self.applied = e.index
            if e.kind == "conf":
                fut = self.pending.pop(f"conf:{e.index}:{e.term}", None)
                if fut is not None and not fut.done():
                    fut.set_result({"voters": list(self.node.voters),
                                    "learners": list(self.node.learners), "index": e.index})
                continue
            if e.kind != "normal" or not e.data:
                continue
            try:
                env = msgpack.unpackb(e.data, raw=False)
                cmd = env["cmd"]
            except Exception as err:  # never let one bad entry stop the replica
                logger.error("replica %s: undecodable entry %d: %s", self.id, e.index, err)
                continue
            result = self.tree.apply(cmd)
            if cmd.get("op") == "session_open" and "error" not in result:
                self.session_deadlines[cmd["session"]] = self._session_deadline(cmd["ttl_s"])
            elif cmd.get("op") == "session_close":
                self.session_deadlines.pop(cmd["session"], None)
            fut = self.pending.pop(env.get("rid", ""), None)
            if fut is not None and not fut.done():
                fut.set_result(result)
        if self.tree.revision != rev_before and self.watchers:
            self._notify_watchers(rev_before)

    def _release_reads(self) -> None:
        still = []
        for index, fut in self.read_waiters:
            if fut.done():
                continue
            if index <= self.applied:
                fut.set_result(index)
            else:
                still.append((index, fut))
        self.read_waiters = still

    def _maybe_snapshot(self) -> None:
        if self.applied - self.storage.snapshot().index < self.config.snapshot_every_entries:
            return
        voters, learners = self.node.config_at(self.applied)
        snap = self.storage.create_snapshot(self.applied, self.tree.snapshot(), voters, learners)
        self.wal.save_snapshot(snap)
        keep_from = self.applied - self.config.snapshot_trailing_entries
        if keep_from > self.storage.first_index():
            self.storage.compact(keep_from)

    # ------------------------------------------------------------ leader duties: sessions

    def _session_deadline(self, ttl_s) -> int:
        """The tick after which a session renewed now expires: at least ``ttl_s`` from now,
        since a tick never comes sooner than ``tick_s`` after the last (ticks only run late)."""
        return self._ticks + math.ceil(float(ttl_s) / self.config.tick_s) + 1

    def _leader_duties(self) -> None:
        is_leader = self.node.role is Role.LEADER
        now = self._ticks
        if is_leader and not self.was_leader:
            # New leader: every session gets a full TTL (a keep-alive may have gone to the old one).
            self.session_deadlines = {s["session"]: self._session_deadline(s["ttl_s"])
                                      for s in self.tree.sessions()}
        if self.was_leader and not is_leader:
            # Our proposals may still commit under the next leader, or be overwritten: we
            # cannot tell, so the clients are told exactly that.
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(E.OutcomeUnknown(
                        f"replica {self.id} lost leadership before the write was applied; it may "
                        f"or may not have happened"))
            self.pending.clear()
            for fut in self.reads.values():
                if not fut.done():
                    fut.set_exception(self._leader_error())
            self.reads.clear()
            # Watches are served by the leader: drop their connections so each client
            # resubscribes at the new leader from its last revision (rather than going quiet).
            for conn in {c for c, _, _ in self.watchers.values()}:
                conn.writer.close()
            self.watchers.clear()
        self.was_leader = is_leader
        if not is_leader:
            return
        for sid, deadline in list(self.session_deadlines.items()):
            if now > deadline:
                try:
                    fut = self._propose({"op": "session_close", "session": sid,
                                         "reason": "expired"})
                except (E.NuwaError, NotLeader, ProposalDropped):
                    continue  # refused for now: try again next tick
                del self.session_deadlines[sid]
                fut.add_done_callback(
                    lambda f, sid=sid, deadline=deadline: self._close_refused(f, sid, deadline))

    def _close_refused(self, fut: asyncio.Future, sid: int, deadline: float) -> None:
        """A session_close that Raft refused (nothing appended) is tried again next tick."""
        if not fut.cancelled() and isinstance(fut.exception(), (NotLeader, ProposalDropped)):
            if self.was_leader:
                self.session_deadlines.setdefault(sid, deadline)

    # ------------------------------------------------------------ proposals and reads

    def _propose(self, cmd: dict) -> asyncio.Future:
        """Queue a write; its future gets the apply result, or NotLeader / ProposalDropped
        when Raft refused it (nothing was appended: safe to retry). The writes that arrive in
        one loop iteration go to Raft together (``_flush_proposals``): one append per
        follower and one fsync for all of them."""
        if len(self.pending) >= self.config.pending_max:
            raise E.Unavailable(f"{len(self.pending)} requests pending at replica {self.id}; "
                                f"pending_max is {self.config.pending_max}")
        self._seq += 1
        rid = f"{self.id}:{self.started_at}:{self._seq}"
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self._proposals.append((rid, msgpack.packb({"rid": rid, "cmd": cmd}, use_bin_type=True)))
        self._schedule_ready()
        return fut

    def _flush_proposals(self) -> None:
        if not self._proposals:
            return
        batch, self._proposals = self._proposals, []
        err: Exception | None = None
        try:
            taken = len(self.node.propose_many([data for _, data in batch]))
        except (NotLeader, ProposalDropped) as e:
            taken, err = 0, e
        for rid, _ in batch[taken:]:
            fut = self.pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(err or ProposalDropped(
                    "uncommitted_entries_max entries are waiting to commit; retry later"))

    async def _read_barrier(self) -> None:
        """Linearizable read: wait until our applied state includes every write committed
        before this read started (Raft read index)."""
        ctx = secrets.token_bytes(8)
        fut = asyncio.get_running_loop().create_future()
        self.reads[ctx] = fut
        self.node.read_index(ctx)
        self._schedule_ready()
        try:
            await asyncio.wait_for(fut, self.config.read_timeout_s)
        finally:
            self.reads.pop(ctx, None)

    def _leader_error(self) -> E.NotLeader:
        leader = self.node.status().get("leader", 0)
        hint = list(self.addresses[leader]) if leader in self.addresses else None
        return E.NotLeader(f"replica {self.id} is not the leader", leader_hint=hint)

    # ------------------------------------------------------------ client connections

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        inflight: set[asyncio.Task] = set()
        try:
            while True:
                req = msgpack.unpackb(await read_frame(reader), raw=False)
                if len(inflight) >= self.config.client_inflight_max:
                    conn.send({"id": req.get("id"), "error": E.Unavailable(
                        f"client_inflight_max={self.config.client_inflight_max} requests in "
                        f"flight on this connection").to_dict()})
                    continue
                t = asyncio.get_running_loop().create_task(self._serve(conn, req))
                inflight.add(t)
                t.add_done_callback(inflight.discard)
        finally:
            for wid in [w for w, (c, _, _) in self.watchers.items() if c is conn]:
                del self.watchers[wid]

    async def _serve(self, conn: "_Conn", req: dict) -> None:
        rid = req.get("id")
        try:
            result = await self._handle(conn, req)
            conn.send({"id": rid, "ok": result})
        except E.NuwaError as e:
            conn.send({"id": rid, "error": e.to_dict()})
        except NotLeader:
            conn.send({"id": rid, "error": self._leader_error().to_dict()})
        except ProposalDropped as e:  # nothing was appended: safe to send again
            conn.send({"id": rid, "error": E.Unavailable(f"replica {self.id} refused the "
                                                         f"proposal for now: {e}").to_dict()})
        except asyncio.TimeoutError:
            conn.send({"id": rid, "error": E.Timeout("the replica could not confirm the read in "
                                                     f"{self.config.read_timeout_s}s").to_dict()})
        except Exception as e:  # a bug: say so rather than leave the client waiting
            logger.exception("request %r failed", req.get("op"))
            conn.send({"id": rid, "error": E.NuwaError(f"internal error: {e!r}").to_dict()})

    async def _who(self, conn: "_Conn", cred):
        """The verified caller (tokens verified once per connection and token)."""
        from zhongkui.errors import BadCredentials

        hit = conn.who
        if hit is not None and hit[0] == cred and hit[1].expires_at > time.time():
            try:  # as the directory has them now (Zhongkui's revocation, issue 14 defect 5)
                return self.guard.current(hit[1])
            except BadCredentials as e:
                raise E.Unauthenticated(f"{type(e).__name__}: {e}") from None
        try:
            who = await self.guard.aidentify(cred)
        except BadCredentials as e:
            raise E.Unauthenticated(f"{type(e).__name__}: {e}") from None
        conn.who = (cred, who)
        return who

    def _creator(self, path: str) -> str | None:
        """Who created ``path`` (a directory is found with or without its trailing '/')."""
        nodes = self.tree._nodes  # a dict lookup: this runs for every request
        node = nodes.get(path) or nodes.get(path.rstrip("/") if path.endswith("/")
                                            else path + "/")
        return node.creator if node is not None else None

    async def _allow(self, who, path, perm: str, owner_of: str | None = None) -> None:
        from zhongkui.errors import Denied, ZhongkuiError

        if not isinstance(path, str) or not path.startswith("/"):
            return  # the operation itself refuses a bad path
        try:
            await self.guard.acheck(who, "nuwa", path, perm,
                                    self._creator(owner_of if owner_of is not None else path))
        except Denied as e:
            raise E.Denied(str(e)) from None
        except ZhongkuiError as e:
            raise E.BadRequest(str(e)) from None

    async def _allow_subtree(self, who, path) -> None:
        from zhongkui.acl import PROTECTED_NUWA_PREFIXES, under

        if not isinstance(path, str):
            return
        for prefix in (*PROTECTED_NUWA_PREFIXES, *self.guard.restricted):
            if prefix.rstrip("/") != path.rstrip("/") and under(prefix, path) and \
                    self._creator(prefix) is not None:
                await self._allow(who, prefix, "delete")

    def _nearest(self, path) -> str:
        """The nearest existing ancestor directory of ``path`` (its owner decides a create,
        with parents=True too)."""
        p = self._parent(path)
        while p != "/" and self._creator(p) is None:
            p = self._parent(p)
        return p

    @staticmethod
    def _parent(path) -> str:
        if not isinstance(path, str):
            return "/"
        return path.rstrip("/").rpartition("/")[0] + "/"

    async def _authorize(self, conn: "_Conn", req: dict, op) -> None:
        """Zhongkui's decision for one request; fixes the creator of what it creates."""
        who = await self._who(conn, req.get("cred"))
        if op in ("status", "members", "unwatch"):
            return
        if op in ("session_keepalive", "session_close"):
            sid = req.get("session") if op == "session_keepalive" else \
                (req.get("cmd") or {}).get("session")
            sess = self.tree._sessions.get(sid) if isinstance(sid, int) else None
            owner = sess.owner if sess is not None else None
            if owner is not None and owner != who.user and not who.admin:
                self.guard.report_denial(who.user, op, f"session:{sid}", "another user's session")
                raise E.Denied(f"user {who.user!r} may not {op.replace('_', ' ')} {owner!r}'s "
                               f"session")
            if op == "session_keepalive":
                return
        if op in ("conf_change", "transfer_leader"):
            await self._allow(who, "/", "admin")
            return
        if op in READ_OPS or op == "watch":
            await self._allow(who, req.get("path"), "read")
            return
        cmd = req.get("cmd")
        if not isinstance(cmd, dict):
            return  # refused as a bad command below
        if op in ("session_open", "session_close"):
            if op == "session_open":
                cmd["owner"] = who.user
            return
        ops = cmd.get("ops") if op == "txn" else [cmd]
        for c in ops if isinstance(ops, list) else ():
            if not isinstance(c, dict):
                continue
            kind = c.get("op")
            if kind == "create":
                await self._allow(who, c.get("path"), "create", self._nearest(c.get("path")))
                c["creator"] = who.user  # the creator owns the node: as verified, not as told
            elif kind in ("set", "set_value"):
                await self._allow(who, c.get("path"), "write")
            elif kind == "delete":
                await self._allow(who, c.get("path"), "delete")
                if c.get("recursive"):
                    # A subtree may hold protected or restricted prefixes the open namespace
                    # does not reach: deleting it needs delete on each of them too.
                    await self._allow_subtree(who, c.get("path"))
            elif kind == "check":
                await self._allow(who, c.get("path"), "read")

    async def _handle(self, conn: "_Conn", req: dict) -> Any:
        op = req.get("op")
        if self.guard.enabled:
            await self._authorize(conn, req, op)
        if op == "status":
            return self.status()
        if op == "members":
            return {str(k): list(v) for k, v in self.addresses.items()}
        leader = self.node.role is Role.LEADER
        if op in WRITE_OPS or op in ("session_open", "session_close"):
            if not leader:
                raise self._leader_error()
            cmd = dict(req["cmd"])
            if op == "session_open":
                cmd["session"] = secrets.randbits(62) or 1  # 0 is not a valid session id
            # Refuse bad or oversized commands here, before they become log entries: an entry
            # that cannot be framed would cut the leader off from its peers.
            parse_command(cmd)
            result = await self._propose(cmd)
            if "error" in result:
                raise E.error_from_dict(result["error"])
            if op == "session_open":
                return {"session": cmd["session"], "ttl_s": cmd["ttl_s"]}
            return result
        if op == "conf_change":
            # A single-server membership change (nuwa.group drives replacements with it).
            if not leader:
                raise self._leader_error()
            try:
                index = self.node.propose_conf_change(str(req.get("change")), req.get("member"))
            except ConfChangeRefused as e:
                raise E.BadRequest(str(e)) from None
            fut = asyncio.get_running_loop().create_future()
            self.pending[f"conf:{index}:{self.node.term}"] = fut
            self._schedule_ready()
            return await fut
        if op == "transfer_leader":
            if not leader:
                raise self._leader_error()
            to = req.get("to")
            if to not in self.node.voters:
                raise E.BadRequest(f"cannot hand the leadership to {to!r}: voters are "
                                   f"{list(self.node.voters)}")
            self.node.transfer_leadership(to)
            self._schedule_ready()
            return {"to": to}
        if op == "session_keepalive":
            if not leader:
                raise self._leader_error()
            sid = req["session"]
            # The tree is the truth (a new leader may not have rebuilt its timers yet).
            ttl = next((s["ttl_s"] for s in self.tree.sessions() if s["session"] == sid), None)
            if ttl is None:
                raise E.SessionExpired(f"session {sid} has expired or was closed")
            if self.was_leader:  # (else our first tick as leader has not set the timers yet)
                deadline = self.session_deadlines.get(sid)
                if deadline is None or self._ticks > deadline:
                    # Past its deadline, its close proposed: renewing it now would let the
                    # client count on a session that is about to go.
                    raise E.SessionExpired(f"session {sid} has expired; its close is being "
                                           f"committed")
            self.session_deadlines[sid] = self._session_deadline(ttl)
            # Confirm we still lead (a heartbeat round) before the client counts on it: a
            # deposed leader that has not noticed yet must not extend a session that the
            # real leader may expire sooner (the holder would claim a lock it lost).
            await self._read_barrier()
            return {"ttl_s": ttl}
        if op in READ_OPS:
            if req.get("linearizable", True):
                if not leader:
                    raise self._leader_error()
                await self._read_barrier()
            return self._read(op, req["path"])
        if op == "watch":
            # Served by the leader: it applies first, while a follower learns of a commit only
            # with the next append or heartbeat. After a leader change the client resubscribes
            # there from its last revision.
            if not leader:
                raise self._leader_error()
            return self._watch(conn, req)
        if op == "unwatch":
            w = self.watchers.get(req["watch"])
            if w is not None and w[0] is conn:  # only the caller's own watches
                del self.watchers[req["watch"]]
            return True
        raise E.BadRequest(f"unknown op {op!r}; expected one of create, set, delete, txn, get, "
                           f"list, stat, exists, session_open, session_keepalive, session_close, "
                           f"watch, unwatch, status, members, conf_change, transfer_leader")

    def _read(self, op: str, path: str) -> Any:
        if op == "get":
            value, stat = self.tree.get(path)
            return {"value": value, "stat": _stat(stat), "revision": self.tree.revision}
        if op == "list":
            return {"children": self.tree.list(path), "revision": self.tree.revision}
        if op == "stat":
            return {"stat": _stat(self.tree.stat(path)), "revision": self.tree.revision}
        return {"exists": self.tree.exists(path), "revision": self.tree.revision}

    # ------------------------------------------------------------ watches

    def _watch(self, conn: "_Conn", req: dict) -> dict:
        """Subscribe; the backlog is every event after the position (``from_revision``, and
        ``from_index`` within it when given: a watcher cut off in the middle of a revision's
        events resumes at the next one), sent before the answer, in (revision, index)
        order. Each event carries its ``revision`` and ``index``."""
        if len(self.watchers) >= self.config.watchers_max:
            raise E.Unavailable(f"watchers_max={self.config.watchers_max} watches on replica {self.id}")
        path, recursive = req.get("path"), bool(req.get("recursive", False))
        if not isinstance(path, str):
            raise E.BadPath(f"watch: path must be a string, got {path!r}")
        from_rev = req.get("from_revision", self.tree.revision)
        if from_rev is None:
            from_rev = self.tree.revision
        # events_since refuses a revision or index that is not an int >= 0 (BadRequest).
        backlog = self._visible(conn, self.tree.events_since(from_rev, path, recursive,
                                                             index=req.get("from_index")))
        self._watch_seq += 1
        wid = self._watch_seq
        self.watchers[wid] = (conn, path, recursive)
        self._send_events(conn, wid, backlog)
        return {"watch": wid, "revision": self.tree.revision}

    def _send_events(self, conn: "_Conn", wid: int, events: list) -> None:
        """Every event, in order, at most ``watch_events_per_frame_max`` per message (a
        recursive delete of a big subtree must not make one huge frame)."""
        step = max(1, self.config.watch_events_per_frame_max)
        for i in range(0, len(events), step):
            conn.send({"watch": wid, "events": [_event(e) for e in events[i:i + step]]})

    def _visible(self, conn: "_Conn", events: list) -> list:
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

    def _notify_watchers(self, rev_before: int) -> None:
        for wid, (conn, path, recursive) in list(self.watchers.items()):
            try:
                evs = self.tree.events_since(rev_before, path, recursive)
            except E.Compacted as c:
                conn.send({"watch": wid, "error": c.to_dict()})
                del self.watchers[wid]
                continue
            self._send_events(conn, wid, self._visible(conn, evs))


CONN_BUFFER_BYTES_MAX = 256 * 1024 * 1024  # unsent bytes to one client before it is cut off


class _Conn:
    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.who = None  # (token, Principal) last verified on this connection

    def send(self, msg: dict) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(frame(msgpack.packb(msg, use_bin_type=True)))
        if self.writer.transport.get_write_buffer_size() > CONN_BUFFER_BYTES_MAX:
            # A client that does not read (a stalled watcher) must not grow our memory without
            # bound: drop it; its watches resubscribe from their last revision on reconnect.
            logger.warning("closing a client %s bytes behind (CONN_BUFFER_BYTES_MAX)",
                           self.writer.transport.get_write_buffer_size())
            self.writer.close()


def _stat(stat) -> dict:
    return stat if isinstance(stat, dict) else stat.to_dict()


def _event(e) -> dict:
    return e if isinstance(e, dict) else e.to_dict()

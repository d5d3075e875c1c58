"""One Nuwa replica as a plain asyncio server: Raft node + WAL + namespace tree + sockets.

This is the shell around the pure cores (``nuwa.core.raft.RaftNode``, ``nuwa.core.tree.Tree``). It
owns time (a tick task), disk (``nuwa.io.wal.Wal``) and network (``nuwa.io.transport``). The Ray
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
import contextlib
import dataclasses
import enum
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

from nuwa.core import commands as C
from nuwa import errors as E
from nuwa.core import peer_guard
from nuwa.core.codec import encode_message
from nuwa.core.raft import ConfChangeRefused, MemoryStorage, MsgType, NotLeader, RaftNode, Role
from nuwa.core.raft_types import ProposalDropped
from nuwa.io.transport import FrameError, Transport, frame, read_frame
from nuwa.core.tree import Tree
from nuwa.io.wal import Wal
from nuwa.core.wire import (READ_OPS, REQUEST_OPS, WRITE_OPS, Request, command_dict, command_ops,
                       parse_request, request_id)

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
    # Hardening (issue 14): connections and what one user may hold. See docs/nuwa.md.
    connections_max: int = 4096  # accepted sockets, peers included; also kept fds_reserved
    #                              below this process's file descriptor limit
    fds_reserved: int = 128  # file descriptors never used for connections (WAL, snapshots)
    preauth_connections_max: int = 256  # client connections that have not signed in yet
    hello_timeout_s: float = 5.0  # from connecting to a first request with a valid token
    idle_timeout_s: float = 600.0  # no request, none in flight and no watch: closed
    connections_per_user_max: int = 256
    sessions_per_user_max: int = 1024
    watches_per_user_max: int = 2048
    ephemerals_per_user_max: int = 20_000
    pending_per_user_max: int = 4096  # requests of one user in flight at this replica


# Frames a client may send: before a valid token only small ones (a first request that is
# bigger signs in with ``auth`` first); after it, the biggest valid txn with room to spare.
NUWA_PREAUTH_FRAME_BYTES_MAX = 64 * 1024
CLIENT_FRAME_BYTES_MAX = C.TXN_OPS_MAX * (C.VALUE_BYTES_MAX + 16 * 1024) + 1024 * 1024


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
        # Peers prove membership with the cluster's peer secret (nuwa.core.peer_auth); without one,
        # only replicas in this same process can be peers (nuwa.io.transport.PROCESS_PEER_SECRET).
        self.transport = Transport(replica_id, self._on_peer, self._on_client,
                                   peer_secret=peer_secret, is_member=self._is_peer_member)
        self.peer_dropped: collections.Counter = collections.Counter()  # reason -> messages
        self.transport.connections_max = connections_cap(config)
        self._clients: set[_Conn] = set()  # open client connections
        self._pending_by_user: dict[str, int] = {}  # user -> requests in flight (bounded
        #                                             by the connections' inflight limits)
        self._reserved: dict[tuple[str, str], int] = {}  # (user, what) -> being proposed
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
        core sees it (``nuwa.core.peer_guard``); a bad one is counted and dropped, never raised."""
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
    #
    # Hardening (issue 14): a client connection must show a valid token in its first request
    # (a small frame, within hello_timeout_s); until then it is read one request at a time.
    # It is then bound to that user (connections_per_user_max), and closed once idle for
    # idle_timeout_s (no request in flight, no watch). Per-user quotas bound what one user can
    # hold of the replica's shared limits; the platform's own actors are bounded only by those.

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        conn.signed_in = not self.guard.enabled
        cfg = self.config
        if not conn.signed_in and sum(not c.signed_in for c in self._clients) >= \
                cfg.preauth_connections_max:
            conn.send({"id": None, "error": E.Unavailable(
                f"preauth_connections_max={cfg.preauth_connections_max} connections are "
                f"waiting to sign in at replica {self.id}; try again later").to_dict()})
            return
        self._clients.add(conn)
        watchdog = asyncio.get_running_loop().create_task(self._watchdog(conn))
        try:
            while not writer.is_closing():
                limit = CLIENT_FRAME_BYTES_MAX if conn.signed_in else NUWA_PREAUTH_FRAME_BYTES_MAX
                try:
                    payload = await read_frame(reader, limit)
                except FrameError as e:
                    name = "CLIENT_FRAME_BYTES_MAX" if conn.signed_in else "NUWA_PREAUTH_FRAME_BYTES_MAX"
                    conn.send({"id": None, "error": E.LimitExceeded(
                        f"{e}; {name}={limit} bytes (before a valid token, frames must be small)",
                        limit=name, limit_value=limit).to_dict()})
                    return
                conn.last_request_at = time.monotonic()
                try:
                    req = msgpack.unpackb(payload, raw=False)
                except Exception as e:  # noqa: BLE001 - whatever the bytes are, refuse them
                    conn.send({"id": None, "error": E.BadRequest(
                        f"undecodable request ({type(e).__name__}); expected a msgpack map "
                        f"with op, id and cred").to_dict()})
                    return
                if not conn.signed_in and not await self._sign_in(conn, req):
                    return
                if len(conn.inflight) >= cfg.client_inflight_max:
                    conn.send({"id": request_id(req), "error": E.Unavailable(
                        f"client_inflight_max={cfg.client_inflight_max} requests in "
                        f"flight on this connection").to_dict()})
                    continue
                t = asyncio.get_running_loop().create_task(self._serve(conn, req))
                conn.inflight.add(t)
                t.add_done_callback(conn.inflight.discard)
        finally:
            watchdog.cancel()
            self._clients.discard(conn)
            for wid in [w for w, (c, *_) in self.watchers.items() if c is conn]:
                del self.watchers[wid]

    async def _sign_in(self, conn: "_Conn", req) -> bool:
        """The first request of a connection must carry a valid token; else the connection
        is told why and closed."""
        try:
            await self._who(conn, req.get("cred") if isinstance(req, dict) else None)
        except E.NuwaError as e:
            conn.send({"id": request_id(req), "error": e.to_dict()})
            conn.writer.close()
            return False
        return True

    async def _watchdog(self, conn: "_Conn") -> None:
        """Close a connection that does not sign in within hello_timeout_s, or that is idle
        (no request for idle_timeout_s, none in flight, no watch)."""
        cfg = self.config
        while not conn.writer.is_closing():
            now = time.monotonic()
            if not conn.signed_in:
                left = conn.opened_at + cfg.hello_timeout_s - now
                why = f"no valid token within hello_timeout_s={cfg.hello_timeout_s}"
            elif conn.inflight or any(w[0] is conn for w in self.watchers.values()):
                left, why = cfg.idle_timeout_s, ""
                conn.last_request_at = now
            else:
                left = conn.last_request_at + cfg.idle_timeout_s - now
                why = f"idle for idle_timeout_s={cfg.idle_timeout_s}"
            if left <= 0:
                conn.send({"id": None, "error": E.Timeout(f"closing the connection: {why}")
                           .to_dict()})
                conn.writer.close()
                return
            await asyncio.sleep(left)

    async def _serve(self, conn: "_Conn", req: dict) -> None:
        rid = request_id(req)
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
            logger.exception("request %r failed", req.get("op") if isinstance(req, dict) else req)
            conn.send({"id": rid, "error": E.NuwaError(f"internal error: {e!r}").to_dict()})

    async def _who(self, conn: "_Conn", cred):
        """The verified caller (tokens verified once per connection and token). A connection
        belongs to the first user it signs in as: another user's token on it is refused."""
        from zhongkui.errors import BadCredentials

        hit = conn.who
        if hit is not None and hit[0] == cred and hit[1].expires_at > time.time():
            try:  # as the directory has them now (Zhongkui's revocation, issue 14 defect 5)
                return self.guard.current(hit[1])
            except BadCredentials as e:
                raise E.Unauthenticated(f"{type(e).__name__}: {e}") from None
        if not isinstance(cred, str) or not cred:
            raise E.Unauthenticated("no token (cred); expected a Zhongkui token with every "
                                    "request (`fuxi login`)")
        try:
            who = await self.guard.aidentify(cred)
        except BadCredentials as e:
            raise E.Unauthenticated(f"{type(e).__name__}: {e}") from None
        if conn.user is None:
            if not who.platform and sum(c.user == who.user for c in self._clients) >= \
                    self.config.connections_per_user_max:
                raise self._quota(who.user, "connections_per_user_max",
                                  self.config.connections_per_user_max, "connections")
            conn.user = who.user
        elif conn.user != who.user:
            raise E.Denied(f"this connection is signed in as {conn.user!r}; a token of "
                           f"{who.user!r} needs a connection of its own")
        conn.who = (cred, who)
        conn.signed_in = True
        return who

    def _quota(self, user: str, limit: str, value: int, what: str) -> E.QuotaExceeded:
        return E.QuotaExceeded(f"user {user!r} holds {limit}={value} {what} at replica "
                               f"{self.id}; release some first", limit=limit, limit_value=value,
                               user=user)

    def _check_quota(self, who, limit: str, what: str, in_use: int, adding: int = 1) -> None:
        """Refuse ``adding`` more of ``what`` when ``who`` would hold more than the named
        per-user limit (counting what is still being proposed). The platform is exempt."""
        if who is None or who.platform or adding <= 0:
            return
        value = getattr(self.config, limit)
        if in_use + self._reserved.get((who.user, what), 0) + adding > value:
            raise self._quota(who.user, limit, value, what)

    @contextlib.contextmanager
    def _reserve(self, who, what: str, n: int):
        """Count ``n`` of ``what`` as held by ``who`` while their proposal is in flight."""
        key = (who.user, what) if who is not None and n > 0 else None
        if key is not None:
            self._reserved[key] = self._reserved.get(key, 0) + n
        try:
            yield
        finally:
            if key is not None:
                left = self._reserved[key] - n
                if left:
                    self._reserved[key] = left
                else:
                    del self._reserved[key]

    def _sessions_of(self, user: str) -> list:
        return [s for s in self.tree._sessions.values() if s.owner == user]

    def _creator(self, path: str) -> str | None:
        """Who created ``path`` (a directory is found with or without its trailing '/'). The
        root belongs to no user: a user named like its creator must not own the cluster."""
        if path == "/":
            return None
        nodes = self.tree._nodes  # a dict lookup: this runs for every request
        node = nodes.get(path) or nodes.get(path.rstrip("/") if path.endswith("/")
                                            else path + "/")
        return node.creator if node is not None else None

    async def _allow(self, who, path: str, perm: str, owner_of: str | None = None) -> None:
        from zhongkui.errors import Denied, ZhongkuiError

        try:
            await self.guard.acheck(who, "nuwa", path, perm,
                                    self._creator(owner_of if owner_of is not None else path))
        except Denied as e:
            raise E.Denied(str(e)) from None
        except ZhongkuiError as e:
            raise E.BadRequest(str(e)) from None

    async def _allow_subtree(self, who, path: str) -> None:
        from zhongkui.core.acl import PROTECTED_NUWA_PREFIXES, under

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

    def _own_session(self, who, sid: int, action: str, missing=E.NoSession):
        """The open session ``sid`` if ``who`` owns it (administrators may act on any)."""
        sess = self.tree._sessions.get(sid)
        if sess is None:
            raise missing(f"session {sid} is not open (expired or closed)", session=sid)
        if sess.owner != who.user and not who.admin:
            self.guard.report_denial(who.user, action, f"session:{sid}", "another user's session")
            raise E.Denied(f"user {who.user!r} may not {action} {sess.owner!r}'s session {sid}")
        return sess

    async def _authorize(self, conn: "_Conn", who, r: Request):
        """Zhongkui's decision on the parsed request; returns the command to propose (for
        writes: the parsed command with each creator set to the verified caller). Every node
        operation of the command tree is checked; an op this does not know is refused."""
        op = r.op
        if op in ("auth", "status", "members", "unwatch"):
            return None  # any signed-in user; unwatch touches only the caller's own watches
        if op in READ_OPS or op == "watch":
            await self._allow(who, r.path, "read")
            return None
        if op in ("conf_change", "transfer_leader"):
            await self._allow(who, "/", "admin")
            return None
        if op == "session_keepalive":
            self._own_session(who, r.session, "keep alive", E.SessionExpired)
            return None
        if op == "session_open":
            return None  # opened in the caller's name (``_execute``), within their quota
        if op == "session_close" and isinstance(r.cmd, C.SessionClose):
            self._own_session(who, r.cmd.session, "close")
            return r.cmd
        if op in WRITE_OPS and isinstance(r.cmd, (C.Create, C.Set, C.Delete, C.Txn)) and \
                (op == "txn") == isinstance(r.cmd, C.Txn):
            ops = [await self._allow_node_op(who, c) for c in command_ops(r.cmd)]
            return C.Txn(tuple(ops)) if isinstance(r.cmd, C.Txn) else ops[0]
        self.guard.report_denial(who.user, str(op), "nuwa", "an operation the guard does not know")
        raise E.Denied(f"op {op!r} is not one the guard knows; refused")

    async def _allow_node_op(self, who, c):
        if isinstance(c, C.Create):
            await self._allow(who, c.path, "create", self._nearest(c.path))
            if c.ephemeral_session is not None:
                self._own_session(who, c.ephemeral_session, "create an ephemeral node in")
            # The creator owns the node: as verified, not as told.
            return dataclasses.replace(c, creator=who.user)
        if isinstance(c, C.Set):
            await self._allow(who, c.path, "write")
            return c
        if isinstance(c, C.Delete):
            await self._allow(who, c.path, "delete")
            if c.recursive:
                # A subtree may hold protected or restricted prefixes the open namespace
                # does not reach: deleting it needs delete on each of them too.
                await self._allow_subtree(who, c.path)
            return c
        if isinstance(c, C.Check):
            await self._allow(who, c.path, "read")
            return c
        raise E.Denied(f"txn op {type(c).__name__} is not one the guard knows; refused")

    async def _handle(self, conn: "_Conn", req: dict) -> Any:
        r = parse_request(req)  # what is decided on below is exactly what is executed
        who = await self._who(conn, r.cred) if self.guard.enabled else None
        if who is None or who.platform:
            return await self._execute(conn, who, r)
        n = self._pending_by_user.get(who.user, 0)
        if n >= self.config.pending_per_user_max:
            raise self._quota(who.user, "pending_per_user_max",
                              self.config.pending_per_user_max, "requests in flight")
        self._pending_by_user[who.user] = n + 1
        try:
            return await self._execute(conn, who, r)
        finally:
            left = self._pending_by_user[who.user] - 1
            if left:
                self._pending_by_user[who.user] = left
            else:
                del self._pending_by_user[who.user]

    async def _execute(self, conn: "_Conn", who, r: Request) -> Any:
        op = r.op
        leader = self.node.role is Role.LEADER
        # Leader-only ops are refused at a follower before anything is decided on its
        # (possibly older) tree.
        if not leader and op not in ("auth", "status", "members", "unwatch") and \
                not (op in READ_OPS and not r.linearizable):
            raise self._leader_error()
        cmd = await self._authorize(conn, who, r) if who is not None else r.cmd
        if op == "auth":
            return who.to_doc() if who is not None else {"user": None}
        if op == "status":
            return _plain(self.status())
        if op == "members":
            return {str(k): list(v) for k, v in self.addresses.items()}
        if op in WRITE_OPS or op == "session_close":
            ephemerals = sum(isinstance(c, C.Create) and c.ephemeral_session is not None
                             for c in command_ops(cmd))
            if ephemerals and who is not None:
                self._check_quota(who, "ephemerals_per_user_max", "ephemerals",
                                  sum(len(s.ephemerals) for s in self._sessions_of(who.user)),
                                  ephemerals)
            # Bad or oversized commands were refused by the parser, before they could become
            # log entries: an entry that cannot be framed would cut the leader off its peers.
            with self._reserve(who, "ephemerals", ephemerals):
                result = await self._propose(command_dict(cmd, r.cmd_request_id))
            if "error" in result:
                raise E.error_from_dict(result["error"])
            return result
        if op == "session_open":
            if who is not None:
                self._check_quota(who, "sessions_per_user_max", "sessions",
                                  len(self._sessions_of(who.user)))
            owner = who.user if who is not None else (r.owner or "anonymous")
            session = secrets.randbits(62) or 1  # 0 is not a valid session id
            with self._reserve(who, "sessions", 1):
                result = await self._propose(command_dict(
                    C.SessionOpen(session, r.ttl_s, owner), r.cmd_request_id))
            if "error" in result:
                raise E.error_from_dict(result["error"])
            return {"session": session, "ttl_s": r.ttl_s}
        if op == "conf_change":
            # A single-server membership change (nuwa.group drives replacements with it).
            try:
                index = self.node.propose_conf_change(r.change, r.member)
            except ConfChangeRefused as e:
                raise E.BadRequest(str(e)) from None
            fut = asyncio.get_running_loop().create_future()
            self.pending[f"conf:{index}:{self.node.term}"] = fut
            self._schedule_ready()
            return await fut
        if op == "transfer_leader":
            to = r.to
            if to not in self.node.voters:
                raise E.BadRequest(f"cannot hand the leadership to {to!r}: voters are "
                                   f"{list(self.node.voters)}")
            self.node.transfer_leadership(to)
            self._schedule_ready()
            return {"to": to}
        if op == "session_keepalive":
            sid = r.session
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
            if r.linearizable:
                await self._read_barrier()
            return self._read(op, r.path)
        if op == "watch":
            # Served by the leader: it applies first, while a follower learns of a commit only
            # with the next append or heartbeat. After a leader change the client resubscribes
            # there from its last revision.
            if who is not None:
                self._check_quota(who, "watches_per_user_max", "watches",
                                  sum(w[0].user == who.user for w in self.watchers.values()))
            return self._watch(conn, r.watch_request())
        if op == "unwatch":
            w = self.watchers.get(r.watch)
            if w is not None and w[0] is conn:  # only the caller's own watches
                del self.watchers[r.watch]
            return True
        raise E.BadRequest(f"unknown op {op!r}; expected one of {', '.join(REQUEST_OPS)}")

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


def connections_cap(config: ServerConfig) -> int:
    """connections_max, kept fds_reserved below this process's file descriptor limit: a
    flood of connections must never take the descriptors the WAL and snapshots need."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return config.connections_max
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return config.connections_max
    return max(1, min(config.connections_max, soft - min(config.fds_reserved, soft // 2)))


class _Conn:
    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.who = None  # (token, Principal) last verified on this connection
        self.user: str | None = None  # the user this connection signed in as
        self.signed_in = False  # a valid token was shown (always, with authentication off)
        self.inflight: set[asyncio.Task] = set()
        self.opened_at = self.last_request_at = time.monotonic()

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


def _plain(obj):
    """``obj`` as msgpack can carry it to any client: enums as their names, map keys as str."""
    if isinstance(obj, enum.Enum):
        return obj.name
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_plain(v) for v in obj]
    return obj


def _stat(stat) -> dict:
    return stat if isinstance(stat, dict) else stat.to_dict()


def _event(e) -> dict:
    return e if isinstance(e, dict) else e.to_dict()

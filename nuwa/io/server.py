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
new leader gives every session a full TTL again. The policy is the pure
``nuwa.core.sessions.SessionTimers`` (the simulator drives it too); its time is this
replica's tick count, never wall time.

Composed here: ``nuwa.io.access`` (who may do what, per-user quotas), ``nuwa.io.watches``
(the watches served), ``nuwa.io.conn`` (one client connection).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from base import events, metrics
from nuwa.core import commands as C
from nuwa import errors as E
from nuwa.core import peer_guard
from nuwa.core.codec import encode_message
from nuwa.core.raft import ConfChangeRefused, MemoryStorage, MsgType, NotLeader, RaftNode, Role
from nuwa.core.raft_types import ProposalDropped
from nuwa.core.sessions import SessionTimers
from nuwa.core.tree import Tree
from nuwa.core.wire import (READ_OPS, REQUEST_OPS, WRITE_OPS, Request, command_dict, command_ops,
                            parse_request, request_id)
from nuwa.io.access import Access
from nuwa.io.conn import ClientConn, connections_cap, plain
from nuwa.io.export import Exports
from nuwa.io.transport import FrameError, Transport, read_frame
from nuwa.io.wal import Wal
from nuwa.io.watches import Watches

logger = logging.getLogger(__name__)

TERM = metrics.gauge("nuwa_term", "The Raft term each replica of this process is in.",
                     labels=("replica",))
LEADERSHIPS = metrics.counter("nuwa_leaderships_total",
                              "Times each replica of this process became leader.",
                              labels=("replica",))
OPS_APPLIED = metrics.counter("nuwa_ops_applied_total",
                              "Commands each replica of this process applied to its tree.",
                              labels=("replica",))


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
        guard = make_guard(auth, f"nuwa-{replica_id}", namespace)
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
        self.transport.connections_max = connections_cap(config.connections_max,
                                                         config.fds_reserved)
        self.clients: set[ClientConn] = set()  # open client connections
        self.access = Access(replica_id, config, guard, lambda: self.tree, self.clients)
        self.watches = Watches(replica_id, config, guard, lambda: self.tree)
        self.addresses: dict[int, tuple[str, int]] = {}
        self.applied = 0
        self._last_hs = None
        self.pending: dict[str, asyncio.Future] = {}  # request id -> future of apply result
        self._proposals: list[tuple[str, bytes]] = []  # (request id, entry) not yet in Raft
        self.reads: dict[bytes, asyncio.Future] = {}  # read-index ctx -> future of its index
        self.read_waiters: list[tuple[int, asyncio.Future]] = []  # (index, future) until applied
        self.sessions = SessionTimers(config.tick_s)  # the leader's session deadlines
        self._ticks = 0  # ticks of this replica's clock (session expiry counts these)
        self.was_leader = False
        self._seq = 0
        self._tick_task: asyncio.Task | None = None
        self._ready_scheduled = False
        self.stopped = False
        self._reported_role = None  # the role last reported to base.events
        self.exports = Exports()  # a backup image being handed out
        self.started_at = time.time()

    @property
    def guard(self):
        """The Zhongkui guard every request is decided by (tests and benchmarks set their own)."""
        return self.access.guard

    @guard.setter
    def guard(self, guard) -> None:
        self.access.guard = self.watches.guard = guard

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
                  sessions=len(self.tree.sessions()), watchers=len(self.watches),
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

    def _report_role(self, role) -> None:
        """A change of this replica's role, to the process's events and metrics."""
        self._reported_role = role
        term = getattr(self.node, "term", 0)
        TERM.set(term, replica=str(self.id))
        if role is Role.LEADER:
            LEADERSHIPS.inc(replica=str(self.id))
        events.emit("nuwa", "role_changed", f"replica {self.id} is {role.name.lower()} in term "
                    f"{term}", replica=self.id, role=role.name.lower(), term=term)

    def _process_ready(self) -> None:
        self._flush_proposals()
        while self.node.has_ready():
            rd = self.node.ready()
            if rd.role is not self._reported_role:
                self._report_role(rd.role)
            if rd.snapshot is not None:
                tree = Tree.restore(rd.snapshot.data)  # validate before it is on disk
                old_rev = self.tree.revision
                self.wal.save_snapshot(rd.snapshot)
                self.storage.apply_snapshot(rd.snapshot)
                self.tree = tree
                self.applied = rd.snapshot.index
                if self.watches:
                    self.watches.notify(old_rev)
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
        ops = 0
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
            ops += 1
            if cmd.get("op") == "session_open" and "error" not in result:
                self.sessions.opened(cmd["session"], cmd["ttl_s"], self._ticks)
            elif cmd.get("op") == "session_close":
                self.sessions.closed(cmd["session"])
            fut = self.pending.pop(env.get("rid", ""), None)
            if fut is not None and not fut.done():
                fut.set_result(result)
        if ops:
            OPS_APPLIED.inc(ops, replica=str(self.id))
        if self.tree.revision != rev_before and self.watches:
            self.watches.notify(rev_before)

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

    def _leader_duties(self) -> None:
        is_leader = self.node.role is Role.LEADER
        now = self._ticks
        if is_leader and not self.was_leader:
            # New leader: every session gets a full TTL (a keep-alive may have gone to the old one).
            self.sessions.lead(((s["session"], s["ttl_s"]) for s in self.tree.sessions()), now)
        if self.was_leader and not is_leader:
            self.sessions.follow()
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
            self.watches.close_all()  # served by the leader: clients resubscribe there
        self.was_leader = is_leader
        if not is_leader:
            return
        for sid, deadline in self.sessions.due(now):
            try:
                fut = self._propose({"op": "session_close", "session": sid, "reason": "expired"})
            except (E.NuwaError, NotLeader, ProposalDropped):
                continue  # refused for now: try again next tick
            self.sessions.closing(sid)
            fut.add_done_callback(
                lambda f, sid=sid, deadline=deadline: self._close_refused(f, sid, deadline))

    def _close_refused(self, fut: asyncio.Future, sid: int, deadline: int) -> None:
        """A session_close that Raft refused (nothing appended) is tried again next tick."""
        if not fut.cancelled() and isinstance(fut.exception(), (NotLeader, ProposalDropped)):
            self.sessions.close_refused(sid, deadline)

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
        conn = ClientConn(writer)
        conn.signed_in = not self.guard.enabled
        cfg = self.config
        if not conn.signed_in and sum(not c.signed_in for c in self.clients) >= \
                cfg.preauth_connections_max:
            conn.send({"id": None, "error": E.Unavailable(
                f"preauth_connections_max={cfg.preauth_connections_max} connections are "
                f"waiting to sign in at replica {self.id}; try again later").to_dict()})
            return
        self.clients.add(conn)
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
            self.clients.discard(conn)
            self.watches.drop_connection(conn)

    async def _sign_in(self, conn: ClientConn, req) -> bool:
        """The first request of a connection must carry a valid token; else the connection
        is told why and closed."""
        try:
            await self.access.who(conn, req.get("cred") if isinstance(req, dict) else None)
        except E.NuwaError as e:
            conn.send({"id": request_id(req), "error": e.to_dict()})
            conn.writer.close()
            return False
        return True

    async def _watchdog(self, conn: ClientConn) -> None:
        """Close a connection that does not sign in within hello_timeout_s, or that is idle
        (no request for idle_timeout_s, none in flight, no watch)."""
        cfg = self.config
        while not conn.writer.is_closing():
            now = time.monotonic()
            if not conn.signed_in:
                left = conn.opened_at + cfg.hello_timeout_s - now
                why = f"no valid token within hello_timeout_s={cfg.hello_timeout_s}"
            elif conn.inflight or self.watches.held_by(conn):
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

    async def _serve(self, conn: ClientConn, req: dict) -> None:
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

    async def _handle(self, conn: ClientConn, req: dict) -> Any:
        r = parse_request(req)  # what is decided on below is exactly what is executed
        who = await self.access.who(conn, r.cred) if self.guard.enabled else None
        async with self.access.in_flight(who):
            return await self._execute(conn, who, r)

    async def _execute(self, conn: ClientConn, who, r: Request) -> Any:
        op = r.op
        leader = self.node.role is Role.LEADER
        # Leader-only ops are refused at a follower before anything is decided on its
        # (possibly older) tree.
        if not leader and op not in ("auth", "status", "members", "unwatch") and \
                not (op in READ_OPS and not r.linearizable):
            raise self._leader_error()
        cmd = await self.access.authorize(who, r) if who is not None else r.cmd
        if op == "auth":
            return who.to_doc() if who is not None else {"user": None}
        if op == "status":
            return plain(self.status())
        if op == "members":
            return {str(k): list(v) for k, v in self.addresses.items()}
        if op in WRITE_OPS or op == "session_close":
            ephemerals = sum(isinstance(c, C.Create) and c.ephemeral_session is not None
                             for c in command_ops(cmd))
            if ephemerals and who is not None:
                self.access.check_quota(
                    who, "ephemerals_per_user_max", "ephemerals",
                    sum(len(s.ephemerals) for s in self.tree.sessions_of(who.user)), ephemerals)
            # Bad or oversized commands were refused by the parser, before they could become
            # log entries: an entry that cannot be framed would cut the leader off its peers.
            with self.access.reserve(who, "ephemerals", ephemerals):
                result = await self._propose(command_dict(cmd, r.cmd_request_id))
            if "error" in result:
                raise E.error_from_dict(result["error"])
            return result
        if op == "session_open":
            if who is not None:
                self.access.check_quota(who, "sessions_per_user_max", "sessions",
                                        len(self.tree.sessions_of(who.user)))
            owner = who.user if who is not None else (r.owner or "anonymous")
            session = secrets.randbits(62) or 1  # 0 is not a valid session id
            with self.access.reserve(who, "sessions", 1):
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
            if not self.sessions.keep_alive(sid, ttl, self._ticks):
                # Past its deadline, its close proposed: renewing it now would let the
                # client count on a session that is about to go.
                raise E.SessionExpired(f"session {sid} has expired; its close is being "
                                       f"committed")
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
                self.access.check_quota(who, "watches_per_user_max", "watches",
                                        self.watches.count_of(who.user))
            return self.watches.watch(conn, r.watch_request())
        if op == "unwatch":
            self.watches.unwatch(conn, r.watch)
            return True
        if op == "snapshot":
            if r.export is not None:
                return self.exports.chunk(r.export, r.offset)
            await self._read_barrier()  # still the leader: the image is the committed tree
            meta = {"revision": self.tree.revision, "index": self.applied,
                    "term": getattr(self.node, "term", 0), "taken_at": time.time(),
                    "replica": self.id}
            return self.exports.start(self.tree.snapshot(), meta)
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


def _stat(stat) -> dict:
    return stat if isinstance(stat, dict) else stat.to_dict()


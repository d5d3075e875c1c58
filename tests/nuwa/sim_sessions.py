"""Session expiry on the Raft simulator (``sim_raft``): sessions opened, kept alive and
abandoned while partitions, crashes, pauses and membership changes move the leadership.

Every replica applies committed entries to its own ``nuwa.core.tree.Tree`` and runs the pure
expiry policy the real server runs, ``nuwa.core.sessions.SessionTimers``, on its own tick
count. The replica-side shell mirrors ``nuwa.io.server``:

* entries are ``{"rid", "cmd"}`` envelopes, applied with ``Tree.apply``; a ``session_open``
  applied starts a timer, a ``session_close`` applied drops it (``opened`` / ``closed``);
* each tick: the replica's tick count goes up, the node ticks, then the leader's duties --
  a new leader gives every open session a full TTL (``lead``), a deposed one stops
  (``follow``) and forgets the keep-alives it had not answered, and the leader proposes
  ``session_close(expired)`` for every session ``due`` (``closing`` once proposed,
  ``close_refused`` if Raft refused it);
* a keep-alive at the leader: refused if the tree no longer has the session or
  ``keep_alive`` says it expired; else renewed, and answered once a read index (a heartbeat
  round: we still lead) has been applied.

Clients open sessions at the leader with a TTL of a few election timeouts. A *live* client
sends a keep-alive every TTL/3 ticks to the replica it believes leads (following hints);
a *dead* one stops at some point, like a crashed process. A replica may also be paused
(``sim_clients``'s fault: a stop-the-world pause of a leader is what makes expiry and
leadership race).

Checked (the promises a session's holder relies on, in global ticks; a replica's ticks are
never more than the global ones, as the server's ticks only run late):

* no session is closed as expired sooner than its TTL after a keep-alive renewal that was
  answered ok: once answered, the holder may count on the session for its TTL from when it
  sent the keep-alive;
* a keep-alive is never answered ok once its session's close has been applied;
* every open session's ephemeral nodes exist and belong to it, and the trees of all replicas
  agree at the same applied index (``Tree.validate_state``);
* liveness at the end (after healing): every dead client's session is closed as expired
  within a bound, and every live client's session that did not lapse (no keep-alive
  answered for a whole TTL, which the chaos may cause) is still open.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import msgpack

from nuwa.core import commands as C
from nuwa.core.codec import decode_message
from nuwa.core.raft import Entry, NotLeader, ProposalDropped, ReadState, Role
from nuwa.core.sessions import SessionTimers
from nuwa.core.tree import Tree
from tests.nuwa.sim_raft import ELECTION_TICKS, Replica, Sim, SimConfig

TICK_S = 1.0  # a simulated tick stands for this many seconds: TTLs are whole ticks
TTL_TICKS_CHOICES = (3 * ELECTION_TICKS, 5 * ELECTION_TICKS, 8 * ELECTION_TICKS)
CLIENTS_MIN, CLIENTS_MAX = 3, 6
PAUSE_P = 0.004  # per tick: pause a replica (usually the leader)
PAUSE_TICKS_MIN, PAUSE_TICKS_MAX = 2 * ELECTION_TICKS, 6 * ELECTION_TICKS
EXPIRY_TICKS_MAX = 30 * ELECTION_TICKS  # after healing: a dead session goes within this


@dataclass
class Shell:
    """A replica process's session state; a crash loses it (rebuilt from the log)."""

    tree: Tree
    timers: SessionTimers
    ticks: int = 0  # this replica's own clock
    was_leader: bool = False
    proposals: dict[str, tuple[int, int]] = field(default_factory=dict)
    # rid -> (session, deadline) of a close proposed by this replica
    keepalives: dict[bytes, tuple[int, int, int]] = field(default_factory=dict)
    # read context -> (client, session, global tick the client sent it), until read
    waiting: list[tuple[int, tuple[int, int, int]]] = field(default_factory=list)
    # (read index, keep-alive) until applied


@dataclass
class Client:
    id: int
    ttl_ticks: int
    dies_at: int | None  # None: kept alive to the end
    session: int = 0  # 0: not open yet
    next_at: int = 0
    hint: int = 0
    opening_since: int | None = None  # tick an open was proposed, until it is answered
    acked_sent_at: int | None = None  # newest keep-alive (or open) answered ok: sent then


class SessionSim(Sim):
    replay_test = "tests/nuwa/test_sessions_sim.py"

    def __init__(self, seed: int, n: int, config: SimConfig | None = None) -> None:
        self.srng = random.Random(seed * 7_919 + 5)  # the workload's own randomness
        self.shells: dict[int, Shell] = {}
        self.paused_until: dict[int, int] = {}
        self.healing = False
        self.rid_seq = 0
        self.sent_open: dict[str, tuple[int, int]] = {}  # rid of an open -> (client, sent at)
        self.expired_at: dict[int, int] = {}  # session -> global tick its close was applied
        self.session_stats = {"opened": 0, "keepalives_ok": 0, "keepalives_refused": 0,
                              "expired": 0, "leader_changes_with_sessions": 0, "pauses": 0,
                              "closes_refused": 0, "live_lapsed": 0}
        super().__init__(seed, n, config)
        chaos = self.cfg.chaos_ticks
        self.clients = []
        for i in range(1, self.srng.randint(CLIENTS_MIN, CLIENTS_MAX) + 1):
            dies = self.srng.random() < 0.5
            self.clients.append(Client(
                i, self.srng.choice(TTL_TICKS_CHOICES),
                self.srng.randint(chaos // 4, chaos) if dies else None,
                next_at=self.srng.randint(1, chaos // 4)))

    # ---------------------------------------------------------------- state machine hooks
    def _start(self, i: int) -> None:
        self.paused_until.pop(i, None)
        self.shells[i] = Shell(Tree(), SessionTimers(TICK_S))
        super()._start(i)

    def sm_restore(self, r: Replica, payload: bytes | None) -> None:
        shell = self.shells[r.id]
        shell.tree = Tree() if not payload else Tree.restore(payload)
        # The server's timers follow the log only; a restored tree's sessions get their full
        # TTL when (if) this replica next becomes leader.

    def sm_payload(self, r: Replica) -> bytes:
        return self.shells[r.id].tree.snapshot()

    def sm_apply(self, r: Replica, e: Entry) -> None:
        shell = self.shells[r.id]
        if e.kind == "normal":
            try:
                env = msgpack.unpackb(e.data, raw=False)
                cmd = env["cmd"]
            except Exception:  # noqa: BLE001 - the simulator's own liveness proposals
                cmd = env = None
            if cmd is not None:
                self._apply_cmd(r, shell, env["rid"], cmd, e.index)
        self._release(r)

    def _apply_cmd(self, r: Replica, shell: Shell, rid: str, cmd: dict, index: int) -> None:
        result = shell.tree.apply(cmd)
        if cmd["op"] == "session_open" and "error" not in result:
            shell.timers.opened(cmd["session"], cmd["ttl_s"], shell.ticks)
            sent = self.sent_open.pop(rid, None)
            if sent is not None:  # the first replica to apply it answers the client
                c = self.clients[sent[0] - 1]
                if not c.session:  # (a retried open also applied: that one is abandoned)
                    c.session, c.opening_since, c.acked_sent_at = cmd["session"], None, sent[1]
                    self.session_stats["opened"] += 1
        elif cmd["op"] == "session_close":
            shell.timers.closed(cmd["session"])
            if "error" not in result and cmd["session"] not in self.expired_at:
                self._check_expiry(cmd["session"], rid)
                self.expired_at[cmd["session"]] = self.now
        errors = shell.tree.validate_state()
        if errors:
            self.fail(f"{r.id}'s tree is inconsistent at {index}: {errors[:3]}")

    def _check_expiry(self, sid: int, rid: str) -> None:
        """The promise: closed as expired no sooner than its TTL after the newest keep-alive
        answered ok (from when the client sent it)."""
        self.session_stats["expired"] += 1
        c = next((c for c in self.clients if c.session == sid), None)
        if c is None or c.acked_sent_at is None:
            return
        if self.now < c.acked_sent_at + c.ttl_ticks:
            self.fail(f"session {sid} of client {c.id} expired at {self.now} (close {rid}), "
                      f"but a keep-alive sent at {c.acked_sent_at} was answered ok: its "
                      f"holder counts on it until {c.acked_sent_at + c.ttl_ticks}")
        if c.dies_at is None:
            # Its keep-alives went unanswered for a whole TTL (no reachable leader, pauses):
            # the session lapsed, as it should. The holder knows: none was answered.
            self.session_stats["live_lapsed"] += 1

    def read_state_ready(self, r: Replica, rs: ReadState) -> None:
        shell = self.shells[r.id]
        ka = shell.keepalives.pop(rs.context, None)
        if ka is not None:
            shell.waiting.append((rs.index, ka))
            self._release(r)

    def _release(self, r: Replica) -> None:
        shell = self.shells[r.id]
        still = []
        for index, (client, sid, sent_at) in shell.waiting:
            if index > r.sm_index:
                still.append((index, (client, sid, sent_at)))
                continue
            c = self.clients[client - 1]
            if c.session == sid:  # like the server: answered ok after the read barrier
                self.session_stats["keepalives_ok"] += 1
                gone = self.expired_at.get(sid)
                if gone is not None:
                    self.fail(f"{r.id} answered ok a keep-alive of session {sid} (client "
                              f"{c.id}, sent at {sent_at}) after its close was applied at "
                              f"{gone}")
                if c.acked_sent_at is None or sent_at > c.acked_sent_at:
                    c.acked_sent_at = sent_at
        shell.waiting = still

    # ---------------------------------------------------------------- the replica side
    def _propose(self, r: Replica, cmd: dict) -> str:
        self.rid_seq += 1
        rid = f"{r.id}:{self.rid_seq}"
        data = msgpack.packb({"rid": rid, "cmd": cmd}, use_bin_type=True)
        self.drive(r, lambda node: node.propose(data))
        return rid

    def _leader_duties(self, r: Replica) -> None:
        """``nuwa.io.server.ReplicaServer._leader_duties``, the session part."""
        shell, node = self.shells[r.id], r.node
        is_leader = node.role is Role.LEADER
        if is_leader and not shell.was_leader:
            shell.timers.lead(((s["session"], s["ttl_s"]) for s in shell.tree.sessions()),
                              shell.ticks)
            if shell.tree.sessions():
                self.session_stats["leader_changes_with_sessions"] += 1
        if shell.was_leader and not is_leader:
            shell.timers.follow()
            shell.keepalives.clear()  # its reads fail: the clients are told "not leader"
            shell.waiting.clear()
            shell.proposals.clear()
        shell.was_leader = is_leader
        if not is_leader:
            return
        for sid, deadline in shell.timers.due(shell.ticks):
            try:
                self._propose(r, C.session_close(sid, "expired"))
            except (NotLeader, ProposalDropped):
                self.session_stats["closes_refused"] += 1
                continue  # refused for now: try again next tick
            if r.node is None:
                return  # crashed in the middle of the Ready
            shell.timers.closing(sid)

    def _heal_and_check_liveness(self) -> None:
        self.paused_until.clear()
        self.healing = True  # the clients keep going while Raft's liveness is checked
        super()._heal_and_check_liveness()

    def _tick_all(self, skip_p: float) -> None:
        if self.healing:
            self._client()
        for r in self.live():
            if r.node is None or self._paused(r.id) or self.rng.random() < skip_p:
                continue
            self.shells[r.id].ticks += 1
            self.drive(r, lambda node: node.tick())
            if r.node is not None:
                self._leader_duties(r)

    def _keepalive(self, c: Client, r: Replica) -> bool:
        """A keep-alive of ``c`` served by ``r``; False when refused (not the leader)."""
        shell, node = self.shells[r.id], r.node
        if node.role is not Role.LEADER:
            c.hint = node.lead
            return False
        sess = shell.tree.session(c.session)
        if sess is None or not shell.timers.keep_alive(c.session, sess.ttl_s, shell.ticks):
            self.session_stats["keepalives_refused"] += 1
            return True  # SessionExpired: the client stops (its session is gone)
        self.read_seq += 1
        ctx = f"k{self.read_seq}".encode()
        self.reads[ctx] = max((x.node.log.committed for x in self.live()), default=0)
        shell.keepalives[ctx] = (c.id, c.session, self.now)
        try:
            self.drive(r, lambda n: n.read_index(ctx))
        except (NotLeader, ProposalDropped):
            shell.keepalives.pop(ctx, None)
            return False
        return True

    # ---------------------------------------------------------------- the clients
    def _paused(self, i: int) -> bool:
        return self.paused_until.get(i, 0) > self.now

    def _nemesis(self) -> None:
        super()._nemesis()
        if self.srng.random() < PAUSE_P:
            leader = self._leader()
            live = self.live()
            victim = leader if leader is not None and self.srng.random() < 0.7 else (
                self.srng.choice(live) if live else None)
            if victim is not None:
                self.session_stats["pauses"] += 1
                self.paused_until[victim.id] = self.now + self.srng.randint(PAUSE_TICKS_MIN,
                                                                            PAUSE_TICKS_MAX)
                self.note(f"pause {victim.id} until {self.paused_until[victim.id]}")

    def _deliver_due(self) -> None:
        # Sim._deliver_due, except that messages for a paused replica wait until it resumes.
        held = []
        while self.net and self.net[0][0] <= self.now:
            item = heapq.heappop(self.net)
            m = decode_message(item[2])
            r = self.replicas[m.to]
            if r.node is None or self.side[m.frm] != self.side[m.to]:
                continue
            if self._paused(m.to):
                held.append((self.paused_until[m.to] + self.srng.randint(0, 3), item[1], item[2]))
                continue
            self.drive(r, lambda node, m=m: node.step(m))
        for item in held:
            heapq.heappush(self.net, item)

    def _client(self) -> None:
        for c in self.clients:
            if self.now < c.next_at or (c.dies_at is not None and self.now >= c.dies_at):
                continue
            if c.session and c.session in self.expired_at:
                continue  # its session is gone; this client is done
            targets = [r for r in self.live() if not self._paused(r.id)]
            if not targets:
                continue
            r = self.replicas.get(c.hint)
            if r is None or r.node is None or self._paused(r.id) or self.srng.random() < 0.2:
                r = self.srng.choice(targets)
            if not c.session:
                if c.opening_since is not None and self.now - c.opening_since > 4 * ELECTION_TICKS:
                    c.opening_since = None  # no answer: the open may have been lost; again
                if c.opening_since is None and r.node.role is Role.LEADER:
                    sid = self.srng.getrandbits(62) or 1
                    try:
                        rid = self._propose(r, C.session_open(sid, c.ttl_ticks * TICK_S,
                                                              f"c{c.id}"))
                        self.sent_open[rid] = (c.id, self.now)
                        c.opening_since = self.now
                    except (NotLeader, ProposalDropped):
                        pass
                elif r.node is not None:
                    c.hint = r.node.lead
                c.next_at = self.now + 2
                continue
            ok = self._keepalive(c, r)
            c.next_at = self.now + (max(1, c.ttl_ticks // 3) if ok else 2)

    # ---------------------------------------------------------------- the run
    def run(self) -> "SessionSim":
        super().run()  # chaos with clients, then heal and Raft's liveness check
        self._expire_the_dead()
        return self

    def _expire_the_dead(self) -> None:
        self.healing = False  # (this loop runs the clients itself)
        deadline = self.now + EXPIRY_TICKS_MAX
        while self.now < deadline:
            self.now += 1
            self._client()
            self._tick_all(0.0)
            self._deliver_due()
            dead = [c for c in self.clients if c.dies_at is not None and c.session]
            if all(c.session in self.expired_at for c in dead):
                break
        else:
            missing = [c.session for c in self.clients if c.dies_at is not None and c.session
                       and c.session not in self.expired_at]
            self.fail(f"sessions of dead clients not expired {EXPIRY_TICKS_MAX} ticks after "
                      f"healing: {missing}")
        leader = self._leader()
        open_ = {s["session"] for s in self.shells[leader.id].tree.sessions()} if leader else set()
        for c in self.clients:
            if c.dies_at is None and c.session and c.session not in open_ \
                    and c.session not in self.expired_at:
                self.fail(f"live client {c.id}'s session {c.session} is not open at the end")
        self._check_trees_agree()

    def _check_trees_agree(self) -> None:
        by_index: dict[int, tuple[int, bytes]] = {}
        for r in self.live():
            image = self.shells[r.id].tree.snapshot()
            first = by_index.setdefault(r.sm_index, (r.id, image))
            if first[1] != image:
                self.fail(f"trees of {first[0]} and {r.id} differ at applied index {r.sm_index}")


def simulate_sessions(seed: int, n: int | None = None,
                      config: SimConfig | None = None) -> SessionSim:
    """Run one seeded session simulation; ``n`` defaults to 3 or 5 chosen by the seed."""
    if n is None:
        n = 3 if seed % 2 == 0 else 5
    return SessionSim(seed, n, config).run()

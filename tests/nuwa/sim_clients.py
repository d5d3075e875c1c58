"""Simulated Nuwa clients on the Raft simulator (``sim_raft``), recording a history for the
linearizability checker (``nuwa.linearizability``).

Every replica applies committed entries to its own ``nuwa.core.tree.Tree`` (snapshots carry the
tree, so a replica restored from a snapshot or restarted from its disk rebuilds it). Each
tree starts from the same genesis: the files ``/k0`` .. ``/k4`` holding ``b"init"``. On top,
3-5 clients run one operation at a time, each through a simulated client network (per-run
drops and delays, no duplicates: it stands for a TCP connection) to the replica they believe
leads. The client-facing shell of a replica mirrors ``nuwa.io.server``:

* ``put k v``  -> the command ``set(k, v)``, proposed with a request id; answered ``ok`` when
  this replica applies the entry with that request id;
* ``cas k e v`` -> ``set(k, v, expected_version=V)`` where ``V`` is the version at which the
  client saw the value ``e`` (from one of its reads or its own writes). Every written value
  is unique and keys are never deleted, so versions and values correspond one to one:
  "version is still V" is exactly "value is still e". A ``BadVersion`` refusal is an applied
  no-op, so it is ``ok`` with result False;
* ``get k``     -> ``read_index`` at the replica (a follower forwards it to its leader), and
  the value is read from this replica's tree once its applied index reaches the read index.

What the client records (Jepsen's ok / fail / info):

* ``ok`` with the result, when the answer arrives;
* ``fail`` only when the operation certainly had no effect: every attempt was refused before
  proposing (NotLeader, ProposalDropped, replica down); after such a refusal the client
  retries at the leader hint or elsewhere, up to ``attempts_max`` times;
* ``unknown`` when it gave up waiting: timeout, the connection to the replica broke because it
  crashed, or the replica lost leadership after proposing (its entry may still commit). An
  operation is never retried after it may have been proposed, because the tree does not
  deduplicate request ids and a repeated write is not the same operation.

History times are ``tick + event counter / 10_000``, so events inside one tick keep their
order (and explanations show ticks).

One more fault on top of ``sim_raft``'s: a process pause (a stop-the-world GC, a frozen VM).
A paused replica takes no ticks and handles no messages or client requests; what arrives for
it waits until it resumes. Paused leaders are the classic source of stale reads: when one
resumes, it still believes it leads although the others have elected a new leader, and only
the read index's heartbeat round stops it from answering from its old state. (Without
pauses the simulator almost never has a deposed leader that still thinks it leads: check-
quorum steps it down before the others' election timeouts let them elect a successor.)

Deliberately broken variants (``Broken``) show that the checker notices what a user would:
reads served from the replica's own tree without a read index (stale reads from followers
and deposed leaders), and writes acknowledged as soon as they are proposed (before commit).
"""

from __future__ import annotations

import enum
import heapq
import random
from dataclasses import dataclass, field

from nuwa.core.commands import decode_command, encode_command, set_value
from nuwa.errors import BadRequest
from nuwa.linearizability import CheckResult, History
from nuwa.core.codec import decode_message
from nuwa.core.raft import Entry, NotLeader, ProposalDropped, ReadState, Role
from nuwa.core.tree import Tree
from tests.nuwa.sim_raft import ELECTION_TICKS, Replica, Sim, SimConfig

KEYS = tuple(f"/k{i}" for i in range(5))
GENESIS_VALUE = b"init"
OP_TIMEOUT_TICKS = 6 * ELECTION_TICKS  # a client waits this long for one attempt's answer
ATTEMPTS_MAX = 6                        # refused attempts before an op is recorded as fail
DRAIN_TICKS_MAX = 40 * ELECTION_TICKS   # after the liveness check: let clients finish
PAUSE_P = 0.004                         # per tick: pause a replica (usually the leader)
PAUSE_TICKS_MIN, PAUSE_TICKS_MAX = 2 * ELECTION_TICKS, 6 * ELECTION_TICKS
EVENTS_PER_TICK_MAX = 10_000           # history time = tick + event counter / this


class Broken(enum.Enum):
    """Deliberate bugs for the negative controls."""

    NONE = "none"
    LOCAL_READS = "local_reads"              # serve get from the local tree, no read index
    ACK_BEFORE_COMMIT = "ack_before_commit"  # answer put as soon as it is proposed


def genesis_tree() -> Tree:
    tree = Tree()
    for path in KEYS:
        result = tree.apply({"op": "create", "path": path, "value": GENESIS_VALUE,
                             "creator": "genesis"})
        assert "error" not in result, result
    return tree


class SimBug(AssertionError):
    """The simulated service answered something no correct replica could (not a history
    verdict: e.g. a put refused by the tree)."""


@dataclass
class Shell:
    """A replica process's client-facing state; a crash loses it (new ``gen`` on restart)."""

    gen: int
    tree: Tree
    writes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    # request id -> (client, op, attempt, term at proposal)
    reads: dict[bytes, tuple[int, int, int, str]] = field(default_factory=dict)
    # read context -> (client, op, attempt, path), until the read state comes
    read_waiting: list[tuple[int, tuple[int, int, int, str]]] = field(default_factory=list)
    # (read index, waiter) until the tree has applied the read index


class Phase(enum.Enum):
    IDLE = "idle"          # between operations (think time until next_at)
    SENDING = "sending"    # an attempt is on its way / being served
    BACKOFF = "backoff"    # the last attempt was refused; retry at next_at


@dataclass
class Client:
    id: int
    phase: Phase = Phase.IDLE
    next_at: int = 0
    op_id: int = -1
    kind: str = ""
    path: str = ""
    value: bytes | None = None
    expected: bytes | None = None
    expected_version: int | None = None
    attempt: int = 0
    target: int = 0
    conn_gen: int | None = None  # replica process that accepted the current attempt
    deadline: int = 0
    leader_hint: int = 0
    seq: int = 0
    final_reads: list[str] = field(default_factory=list)
    # path -> (value, version) pairs this client has seen, for cas expectations
    seen: dict[str, list[tuple[bytes, int]]] = field(default_factory=dict)


class ClientSim(Sim):
    """``Sim`` with a Tree per replica, a client-facing shell and clients recording history."""

    replay_test = "tests/nuwa/test_linearizable_sim.py"
    # Sim's direct check of every read index against the commit index known when the read
    # was requested; tests switch it off to show that the history check catches stale reads.
    check_read_floor = True

    def __init__(self, seed: int, n: int, config: SimConfig | None = None,
                 broken: Broken = Broken.NONE) -> None:
        # Set up before Sim.__init__, which already starts the replicas.
        self.broken = broken
        self.crng = random.Random(seed * 1_000_003 + 17)  # the workload's own randomness
        self.shells: dict[int, Shell] = {}
        self.gen_seq = 0
        self.history = History()
        self.client_net: list[tuple[int, float, int, tuple]] = []
        self.client_net_seq = 0
        self.final_phase = False
        self.paused_until: dict[int, int] = {}
        self._t_tick, self._t_seq = -1, 0
        self.client_stats = {"pauses": 0, "tree_restores": 0, "follower_reads": 0, "resets": 0,
                             "leadership_lost": 0, "timeouts": 0, "retries": 0}
        super().__init__(seed, n, config)
        self.clients = [Client(i) for i in range(1, self.crng.randint(3, 5) + 1)]

    # ---------------------------------------------------------------- state machine hooks
    def _start(self, i: int) -> None:
        self.paused_until.pop(i, None)
        self.gen_seq += 1
        self.shells[i] = Shell(self.gen_seq, genesis_tree())
        super()._start(i)

    def sm_restore(self, r: Replica, payload: bytes | None) -> None:
        shell = self.shells[r.id]
        if payload is None:
            shell.tree = genesis_tree()
            return
        if not payload:
            self.fail(f"{r.id}: snapshot at {r.sm_index} carries no tree")
        shell.tree = Tree.restore(payload)
        self.client_stats["tree_restores"] += 1
        self._release_reads(r)

    def sm_payload(self, r: Replica) -> bytes:
        return self.shells[r.id].tree.snapshot()

    def sm_apply(self, r: Replica, e: Entry) -> None:
        shell = self.shells[r.id]
        if e.kind == "normal":
            try:
                cmd = decode_command(e.data)
            except BadRequest:
                cmd = None  # the simulator's own liveness proposal
            if cmd is not None:
                result = shell.tree.apply(cmd)
                waiter = shell.writes.pop(cmd.get("request_id"), None)
                if waiter is not None:
                    client, op, attempt, _ = waiter
                    self._respond(client, op, attempt, "ok", result)
        self._release_reads(r)

    def read_state_ready(self, r: Replica, rs: ReadState) -> None:
        shell = self.shells[r.id]
        waiter = shell.reads.pop(rs.context, None)
        if waiter is not None:  # else: a duplicate answer, or a read this process forgot
            shell.read_waiting.append((rs.index, waiter))
            self._release_reads(r)

    def _release_reads(self, r: Replica) -> None:
        shell = self.shells[r.id]
        if not shell.read_waiting:
            return
        still = []
        for index, waiter in shell.read_waiting:
            if index <= r.sm_index:
                self._answer_get(shell, waiter)
            else:
                still.append((index, waiter))
        shell.read_waiting = still

    def _answer_get(self, shell: Shell, waiter: tuple[int, int, int, str]) -> None:
        client, op, attempt, path = waiter
        value, stat = shell.tree.get(path)
        self._respond(client, op, attempt, "ok", (value, stat.version))

    # ---------------------------------------------------------------- client network
    def _t(self) -> float:
        if self._t_tick != self.now:
            self._t_tick, self._t_seq = self.now, 0
        self._t_seq += 1
        assert self._t_seq < EVENTS_PER_TICK_MAX, "history events in one tick"
        return self.now + self._t_seq / EVENTS_PER_TICK_MAX

    def _client_send(self, payload: tuple) -> None:
        if self.crng.random() < self.cfg.drop_p / 2:
            return
        delay = 1 + self.crng.randint(0, self.cfg.delay_ticks_max // 2)
        self.client_net_seq += 1
        heapq.heappush(self.client_net, (self.now + delay, self.crng.random(),
                                         self.client_net_seq, payload))

    def _respond(self, client: int, op: int, attempt: int, outcome: str, detail=None) -> None:
        self._client_send(("resp", client, op, attempt, outcome, detail))

    # ---------------------------------------------------------------- process pauses
    def _paused(self, i: int) -> bool:
        return self.paused_until.get(i, 0) > self.now

    def _nemesis(self) -> None:
        super()._nemesis()
        if self.crng.random() < PAUSE_P:
            leader = self._leader()
            live = self.live()
            if leader is not None and self.crng.random() < 0.7:
                victim = leader
            elif live:
                victim = self.crng.choice(live)
            else:
                return
            self.client_stats["pauses"] += 1
            self.paused_until[victim.id] = self.now + self.crng.randint(PAUSE_TICKS_MIN,
                                                                        PAUSE_TICKS_MAX)
            self.note(f"pause {victim.id} until {self.paused_until[victim.id]}")

    def _tick_all(self, skip_p: float) -> None:
        for r in self.live():
            if r.node is not None and not self._paused(r.id) and self.rng.random() >= skip_p:
                self.drive(r, lambda node: node.tick())

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
                # The backlog is read in some order with the client requests on resume.
                resume = self.paused_until[m.to] + self.crng.randint(0, 3)
                held.append((resume, item[1], item[2]))
                continue
            self.drive(r, lambda node, m=m: node.step(m))
        for item in held:
            heapq.heappush(self.net, item)

    def _heal_and_check_liveness(self) -> None:
        self.paused_until.clear()
        super()._heal_and_check_liveness()

    # ---------------------------------------------------------------- the replica side
    def _serve(self, req: tuple) -> None:
        _, cid, op, attempt, target, kind, path, value, expected_version = req
        if self._paused(target):  # the request waits in the socket buffer
            self.client_net_seq += 1
            resume = self.paused_until[target] + self.crng.randint(0, 3)
            heapq.heappush(self.client_net, (resume, self.crng.random(), self.client_net_seq,
                                             req))
            return
        c = self.clients[cid - 1]
        r = self.replicas[target]
        if r.node is None:
            self._respond(cid, op, attempt, "refused")  # connection refused: nothing happened
            return
        shell, node = self.shells[target], r.node
        if kind == "get":
            if self.broken is Broken.LOCAL_READS:
                self._answer_get(shell, (cid, op, attempt, path))
                return
            if node.role is not Role.LEADER:
                self.client_stats["follower_reads"] += 1
            ctx = f"c{cid}.{op}.{attempt}".encode()
            self.reads[ctx] = (max((x.node.log.committed for x in self.live()), default=0)
                               if self.check_read_floor else 0)
            shell.reads[ctx] = (cid, op, attempt, path)
            if c.op_id == op and c.attempt == attempt:
                c.conn_gen = shell.gen
            try:
                self.drive(r, lambda n: n.read_index(ctx))
            except NotLeader as err:
                shell.reads.pop(ctx, None)
                self._respond(cid, op, attempt, "not_leader", err.leader)
            except ProposalDropped:
                shell.reads.pop(ctx, None)
                self._respond(cid, op, attempt, "dropped")
            return
        # put / cas: the leader only, like nuwa.io.server.
        if node.role is not Role.LEADER:
            self._respond(cid, op, attempt, "not_leader", node.lead)
            return
        rid = f"c{cid}.{op}.{attempt}"
        cmd = set_value(path, value, expected_version=expected_version)
        cmd["request_id"] = rid
        data = encode_command(cmd)
        shell.writes[rid] = (cid, op, attempt, node.term)
        if c.op_id == op and c.attempt == attempt:
            c.conn_gen = shell.gen
        try:
            self.drive(r, lambda n: n.propose(data))
        except NotLeader as err:
            shell.writes.pop(rid, None)
            self._respond(cid, op, attempt, "not_leader", err.leader)
            return
        except ProposalDropped:
            shell.writes.pop(rid, None)
            self._respond(cid, op, attempt, "dropped")
            return
        if self.broken is Broken.ACK_BEFORE_COMMIT and kind == "put":
            shell.writes.pop(rid, None)
            self._respond(cid, op, attempt, "ok", {"stat": None})

    def _sweep_leadership(self) -> None:
        """Like nuwa.io.server's leader duties: a replica that lost leadership tells the clients
        waiting on its proposals that the outcome is unknown."""
        for i, shell in self.shells.items():
            if not shell.writes:
                continue
            node = self.replicas[i].node
            if node is None:
                continue  # the clients notice the broken connection themselves
            lost = [rid for rid, (_, _, _, term) in shell.writes.items()
                    if node.role is not Role.LEADER or node.term != term]
            for rid in lost:
                cid, op, attempt, _ = shell.writes.pop(rid)
                self.client_stats["leadership_lost"] += 1
                self._respond(cid, op, attempt, "unknown")

    # ---------------------------------------------------------------- the client side
    def _client(self) -> None:
        """Replaces Sim's random proposals: deliver client traffic, then run each client."""
        while self.client_net and self.client_net[0][0] <= self.now:
            payload = heapq.heappop(self.client_net)[3]
            if payload[0] == "req":
                self._serve(payload)
            else:
                self._on_response(payload)
        self._sweep_leadership()
        for c in self.clients:
            self._run_client(c)

    def _run_client(self, c: Client) -> None:
        if c.phase is Phase.SENDING:
            r = self.replicas[c.target]
            if c.conn_gen is not None and (r.node is None
                                           or self.shells[c.target].gen != c.conn_gen):
                self.client_stats["resets"] += 1
                self._finish(c, "unknown")  # connection reset after the replica accepted it
            elif self.now >= c.deadline:
                self.client_stats["timeouts"] += 1
                self._finish(c, "unknown")
            return
        if self.now < c.next_at:
            return
        if c.phase is Phase.BACKOFF:
            self._send_attempt(c)
        elif c.phase is Phase.IDLE:
            self._start_op(c)

    def _start_op(self, c: Client) -> None:
        rng = self.crng
        if self.final_phase:
            if not c.final_reads:
                return
            kind, path = "get", c.final_reads.pop()
        else:
            path = rng.choice(KEYS)
            kind = rng.choices(("get", "put", "cas"), (45, 30, 25))[0]
        c.seq += 1
        c.kind, c.path, c.attempt = kind, path, 0
        c.value = c.expected = c.expected_version = None
        if kind != "get":
            c.value = f"c{c.id}.{c.seq}".encode()  # unique: see the module docstring
        if kind == "cas":
            seen = c.seen.get(path) or [(GENESIS_VALUE, 0)]
            c.expected, c.expected_version = seen[-1] if rng.random() < 0.7 else rng.choice(seen)
        c.op_id = self.history.invoke(c.id, kind, path, value=c.value, expected=c.expected,
                                      t=self._t())
        if not c.leader_hint or (kind == "get" and rng.random() < 0.2):
            c.leader_hint = rng.choice(self.ids)  # sometimes read through a follower
        if self.broken is Broken.LOCAL_READS and kind == "get":
            c.leader_hint = rng.choice(self.ids)
        self._send_attempt(c)

    def _send_attempt(self, c: Client) -> None:
        c.phase = Phase.SENDING
        c.target = c.leader_hint or self.crng.choice(self.ids)
        c.conn_gen = None
        c.deadline = self.now + OP_TIMEOUT_TICKS
        self._client_send(("req", c.id, c.op_id, c.attempt, c.target, c.kind, c.path, c.value,
                           c.expected_version))

    def _on_response(self, payload: tuple) -> None:
        _, cid, op, attempt, outcome, detail = payload
        c = self.clients[cid - 1]
        if c.phase is not Phase.SENDING or c.op_id != op or c.attempt != attempt:
            return  # an answer to an attempt this client already gave up on
        if outcome == "ok":
            self._finish(c, "ok", detail)
        elif outcome == "unknown":
            self._finish(c, "unknown")
        else:  # refused before anything was proposed: certainly no effect, may retry
            if outcome == "not_leader" and detail:
                c.leader_hint = detail
            else:  # no hint, or that replica is down or busy: try another one
                c.leader_hint = self.crng.choice([i for i in self.ids if i != c.target])
            c.attempt += 1
            if c.attempt >= ATTEMPTS_MAX:
                self._finish(c, "fail")
            else:
                self.client_stats["retries"] += 1
                c.phase = Phase.BACKOFF
                c.next_at = self.now + self.crng.randint(1, 3)

    def _finish(self, c: Client, status: str, detail=None) -> None:
        t = self._t()
        if status == "ok":
            if c.kind == "get":
                value, version = detail
                self.history.ok(c.op_id, value, t=t)
                c.seen.setdefault(c.path, []).append((value, version))
            else:
                error = detail.get("error")
                if error is None:
                    self.history.ok(c.op_id, None if c.kind == "put" else True, t=t)
                    if detail.get("stat") is not None:
                        c.seen.setdefault(c.path, []).append((c.value, detail["stat"]["version"]))
                elif c.kind == "cas" and error["type"] == "BadVersion":
                    self.history.ok(c.op_id, False, t=t)
                else:
                    raise SimBug(f"seed={self.seed}: the tree refused {c.kind} {c.path}: "
                                 f"{error}")
        elif status == "fail":
            self.history.fail(c.op_id, t=t)
        else:
            self.history.unknown(c.op_id, t=t)
            c.leader_hint = 0
        c.phase = Phase.IDLE
        c.next_at = self.now + self.crng.randint(0, 3)

    # ---------------------------------------------------------------- the run
    def run(self) -> "ClientSim":
        super().run()  # chaos with clients, then heal and the liveness check
        self._drain()
        self._check_trees_agree()
        return self

    def _drain(self) -> None:
        """No more faults: clients finish what they started, then each reads every key."""
        self.final_phase = True
        for c in self.clients:
            c.final_reads = list(KEYS)
        deadline = self.now + DRAIN_TICKS_MAX
        while self.now < deadline and any(c.phase is not Phase.IDLE or c.final_reads
                                          for c in self.clients):
            self.now += 1
            self._client()
            self._tick_all(0.0)
            self._deliver_due()

    def _check_trees_agree(self) -> None:
        by_index: dict[int, tuple[int, bytes]] = {}
        for r in self.live():
            image = self.shells[r.id].tree.snapshot()
            first = by_index.setdefault(r.sm_index, (r.id, image))
            if first[1] != image:
                self.fail(f"trees of {first[0]} and {r.id} differ at applied index "
                          f"{r.sm_index}")

    def check(self, time_limit_s: float = 10.0) -> CheckResult:
        return self.history.check(time_limit_s,
                                  initial_values={k: GENESIS_VALUE for k in KEYS})


def simulate_clients(seed: int, n: int | None = None, broken: Broken = Broken.NONE,
                     config: SimConfig | None = None) -> ClientSim:
    """Run one seeded simulation with clients; ``n`` defaults to 3 or 5 chosen by the seed."""
    if n is None:
        n = 3 if seed % 2 == 0 else 5
    return ClientSim(seed, n, config, broken).run()

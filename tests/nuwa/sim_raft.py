"""Deterministic simulation of a Nuwa Raft group (3 or 5 replicas) in one process.

One seed fixes everything: fault rates, the schedule of partitions, crashes, restarts and disk
losses, message delays, drops, duplicates and reorders, client proposals and reads, and each
replica's election-timeout randomness. Time is ticks; nothing sleeps. Messages go through
``nuwa.core.codec`` both ways, as they would on a socket.

What the simulated shell does, like ``nuwa.io.server``: after every input it drains the node's
Ready -- persist snapshot, entries and hard state to the replica's "disk" (a MemoryStorage that
survives crashes), send messages, apply committed entries to a toy state machine (a hash chain
over the applied entries), hand out read states, advance -- and sometimes takes a snapshot and
compacts the log. A crash may also hit in the middle of a Ready, after the disk write and
before anything was sent.

Faults:

* network: per-run drop, duplicate and delay rates (delays reorder); partitions that split the
  group at random or cut the leader off into a minority; heals.
* crash + restart with disk: the node object is discarded (anything not yet persisted is
  lost) and rebuilt from the disk.
* crash without disk ("disk lost"): the replica comes back with empty storage and
  ``voter=False``: it catches up by log or snapshot and counts for commit and read quorums
  but never votes or campaigns again (see ``nuwa.core.raft``'s docstring for why voting again
  would be unsafe). The lost-disk marker is kept with its new disk. At most (n-1)//2 replicas
  lose their disk per run, so a quorum of voters remains and the liveness check is fair.

Checked after every step (``InvariantError`` carries the seed and the recent trace):

* election safety: at most one leader per term; no replica grants two votes in one term
  (from the messages it sends); a persisted (term, vote) never goes back;
* log matching: all persisted entries with the same (index, term) have the same payload and
  the same preceding term (which, by induction, makes the logs identical up to there);
* state machine safety: every replica applies indexes in order, and the entry it applies at
  index i is the one every other replica applied at i; snapshots carry the same hash chain;
  applied <= commit <= last index;
* leader completeness: a new leader of term T holds every entry committed before T (see
  ``_check_leader_completeness`` for how "before T" is known);
* read-index: a ReadState's index is at least the highest commit index any replica knew
  when the read was requested.

* membership changes: now and then the leader replaces a voter by a brand-new replica with
  single-server changes (thesis §4.1) -- add the new one as a learner (it joins with an empty
  disk and no configuration), promote it once it has caught up, remove the old one (after
  handing the leadership away if the old one leads). Nodes take each snapshot's
  configuration from ``config_at``. A removed replica is stopped for good.

At the end: heal the network, restart every crashed replica (with its disk), finish a
membership change under way, and require that within ``liveness_ticks_max`` a leader is
elected, a final proposal commits, and every member (including those that lost their disk
and learners) applies it.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import struct
from collections import deque
from dataclasses import dataclass, field

from nuwa.core.codec import decode_message, encode_message
from nuwa.core.raft import (
    ConfChangeRefused,
    Entry,
    MemoryStorage,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    RaftNode,
    Ready,
    ReadState,
    Role,
    Snapshot,
)

ELECTION_TICKS = 10
HEARTBEAT_TICKS = 2
_SM = struct.Struct(">Q32s")


class InvariantError(AssertionError):
    pass


def _chain(digest: bytes, e: Entry) -> bytes:
    h = hashlib.blake2b(digest, digest_size=32)
    h.update(struct.pack(">QQ", e.index, e.term))
    h.update(e.kind.encode())
    h.update(e.data)
    return h.digest()


@dataclass
class Disk:
    storage: MemoryStorage = field(default_factory=MemoryStorage)
    voter: bool = True  # False once this replica has lost a disk (persisted marker)
    generation: int = 0  # how many times the disk was lost


@dataclass
class Replica:
    id: int
    disk: Disk
    node: RaftNode | None = None
    sm_index: int = 0
    sm_digest: bytes = bytes(32)
    applied_values: list[bytes] = field(default_factory=list)
    bootstrap: tuple[int, ...] = ()  # voters it starts with on an empty disk (() = joining)
    removed: bool = False  # taken out of the group by a membership change: stays down


@dataclass
class SimConfig:
    chaos_ticks: int = 600
    liveness_ticks_max: int = 60 * ELECTION_TICKS
    drop_p: float = 0.05
    dup_p: float = 0.03
    delay_ticks_max: int = 3
    partition_p: float = 0.01
    heal_p: float = 0.04
    crash_p: float = 0.003
    crash_mid_ready_p: float = 0.001
    wipe_p: float = 0.0005
    restart_p: float = 0.08
    compact_p: float = 0.03
    propose_p: float = 0.5
    read_p: float = 0.15
    tick_skip_p: float = 0.05
    replace_p: float = 0.004  # chance per tick to start replacing a voter
    replacements_max: int = 2

    def randomize(self, rng: random.Random) -> None:
        """Per-run fault intensity, so that the sweep covers gentle and harsh runs."""
        self.drop_p = rng.choice([0.0, 0.02, 0.1, 0.3])
        self.dup_p = rng.choice([0.0, 0.05, 0.2])
        self.delay_ticks_max = rng.choice([0, 2, 6, 15])
        harsh = rng.choice([0.0, 0.5, 1.0, 3.0])
        self.partition_p *= harsh
        self.crash_p *= harsh
        self.crash_mid_ready_p *= harsh
        self.wipe_p *= harsh * 2
        self.compact_p = rng.choice([0.0, 0.03, 0.2])
        self.replace_p = rng.choice([0.0, 0.004, 0.02])


class Sim:
    # The direct check that a replica without its disk never grants a vote; tests switch it
    # off to show that the end-to-end invariants catch the consequences too.
    check_lost_disk_never_votes = True
    # The test file whose NUWA_SEED replays this run (printed with every failure).
    replay_test = "tests/nuwa/test_raft_sim.py"

    def __init__(self, seed: int, n: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.n = n
        self.rng = random.Random(seed)
        if config is None:
            config = SimConfig()
            config.randomize(self.rng)
        self.cfg = config
        self.ids = list(range(1, n + 1))
        self.replicas = {i: Replica(i, Disk(), bootstrap=tuple(self.ids)) for i in self.ids}
        self.change: tuple[int, int] | None = None  # (old, new) replacement under way
        self.replacements = 0
        self.now = 0
        self.net: list[tuple[int, int, bytes]] = []  # heap of (deliver_at, seq, encoded)
        self.net_seq = 0
        self.side: dict[int, int] = {i: 0 for i in self.ids}  # partition side per replica
        self.trace: deque[str] = deque(maxlen=40)
        # Global records for the invariants.
        self.leader_of_term: dict[int, int] = {}
        self.vote_of: dict[tuple[int, int], int] = {}  # (term, voter) -> candidate
        self.log_registry: dict[tuple[int, int], tuple[bytes, str, int]] = {}
        self.applied_at: dict[int, Entry] = {}
        self.commit_term_ub: dict[int, int] = {}  # index -> a term >= the one it committed in
        self.digest_at: dict[int, bytes] = {0: bytes(32)}
        self.reads: dict[bytes, int] = {}  # context -> commit floor when requested
        self.read_seq = 0
        self.proposal_seq = 0
        self.wiped = 0
        self.stats = {"elections": 0, "snapshots_sent": 0, "reads_served": 0, "wipes": 0,
                      "crashes": 0, "partitions": 0, "committed": 0, "mid_ready_crashes": 0,
                      "conf_changes": 0, "replacements": 0}
        for i in self.ids:
            self._start(i)

    # ---------------------------------------------------------------- helpers
    def fail(self, what: str) -> None:
        trace = "\n  ".join(self.trace)
        raise InvariantError(f"seed={self.seed} n={self.n} tick={self.now}: {what}\n"
                             f"replay: NUWA_SEED={self.seed} python -m pytest {self.replay_test} -q"
                             f"\nlast events:\n  {trace}")

    def note(self, event: str) -> None:
        self.trace.append(f"t={self.now} {event}")

    def live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.node is not None]

    def members(self) -> list[Replica]:
        return [r for r in self.replicas.values() if not r.removed]

    def _start(self, i: int) -> None:
        r = self.replicas[i]
        snap = r.disk.storage.snapshot()
        r.sm_index, r.sm_digest = 0, bytes(32)
        if snap.index:
            self._restore_sm(r, snap)
        else:
            self.sm_restore(r, None)
        r.node = RaftNode(i, r.bootstrap, r.disk.storage, random.Random(self.rng.getrandbits(64)),
                          election_ticks=ELECTION_TICKS, heartbeat_ticks=HEARTBEAT_TICKS,
                          entries_per_append_max=self.rng.choice([1, 4, 64]),
                          inflight_appends_max=self.rng.choice([1, 4, 64]),
                          applied=r.sm_index, voter=r.disk.voter)
        self.note(f"start {i} voter={r.disk.voter} term={r.node.term} "
                  f"last={r.node.log.last_index()} snap={snap.index}")

    def _restore_sm(self, r: Replica, snap: Snapshot) -> None:
        index, digest = _SM.unpack_from(snap.data)
        if index != snap.index:
            self.fail(f"snapshot data at {index} labelled {snap.index}")
        known = self.digest_at.get(index)
        if known is not None and known != digest:
            self.fail(f"replica {r.id} restored a snapshot at {index} that differs from what "
                      f"was applied there")
        r.sm_index, r.sm_digest = index, digest
        self.sm_restore(r, snap.data[_SM.size:])

    # ---------------------------------------------------------------- state machine hooks
    # No-ops here; a subclass (``sim_clients``) runs a real state machine and clients on them.
    def sm_restore(self, r: Replica, payload: bytes | None) -> None:
        """``r``'s state machine restarts from a snapshot's payload, or from scratch (None)."""

    def sm_apply(self, r: Replica, e: Entry) -> None:
        """``r`` applies committed entry ``e`` (after the safety checks on it)."""

    def sm_payload(self, r: Replica) -> bytes:
        """The state machine image stored in a snapshot after the (index, digest) header."""
        return b""

    def read_state_ready(self, r: Replica, rs: ReadState) -> None:
        """``r`` was handed read state ``rs`` (checked against its commit floor)."""

    # ---------------------------------------------------------------- the shell
    def drive(self, r: Replica, action) -> None:
        """Run one input on a node, then drain its Ready and check invariants."""
        node = r.node
        assert node is not None
        was_leader = node.role is Role.LEADER
        action(node)
        while r.node is not None and r.node.has_ready():
            self._handle_ready(r, r.node.ready())
        if r.node is not None:
            self._check_node(r, was_leader)

    def _handle_ready(self, r: Replica, rd: Ready) -> None:
        node = r.node
        assert node is not None
        st = r.disk.storage
        if rd.role is Role.LEADER:
            other = self.leader_of_term.setdefault(node.term, r.id)
            if other != r.id:
                self.fail(f"two leaders in term {node.term}: {other} and {r.id}")
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
            self._restore_sm(r, rd.snapshot)
            self.note(f"{r.id} installed snapshot {rd.snapshot.index}")
        if rd.entries:
            st.append(rd.entries)
            for e in rd.entries:
                if e.index < st.first_index():
                    continue  # already covered by the snapshot
                key = (e.index, e.term)
                val = (e.data, e.kind, st.term(e.index - 1))
                old = self.log_registry.setdefault(key, val)
                if old != val:
                    self.fail(f"log matching: entry {key} on {r.id} is {val}, elsewhere {old}")
        if rd.hard_state is not None:
            old = st.hard_state()
            hs = rd.hard_state
            if hs.term < old.term or (hs.term == old.term and old.vote and hs.vote != old.vote):
                self.fail(f"{r.id} persisted {hs} after {old}")
            st.set_hard_state(hs)
        if self.rng.random() < self.cfg.crash_mid_ready_p:
            self.stats["mid_ready_crashes"] += 1
            self.note(f"crash {r.id} after persisting, before sending")
            r.node = None
            return
        for m in rd.messages:
            self._send(r, m)
        for e in rd.committed_entries:
            self._apply(r, e)
        for rs in rd.read_states:
            # .get, not .pop: a duplicated READ_INDEX(_RESP) may answer the same read twice;
            # the shell just ignores contexts it no longer waits for.
            floor = self.reads.get(rs.context)
            if floor is None:
                self.fail(f"{r.id} got a read state for unknown context {rs.context!r}")
            if rs.index < floor:
                self.fail(f"stale read on {r.id}: read index {rs.index} < commit {floor} "
                          f"known when the read was requested")
            self.stats["reads_served"] += 1
            self.read_state_ready(r, rs)
        node.advance(rd)

    def _apply(self, r: Replica, e: Entry) -> None:
        if e.index != r.sm_index + 1:
            self.fail(f"{r.id} applied {e.index} after {r.sm_index}")
        old = self.applied_at.setdefault(e.index, e)
        self.commit_term_ub.setdefault(e.index, r.node.term)
        if old != e:
            self.fail(f"state machines diverge at {e.index}: {r.id} applied {e}, "
                      f"another replica applied {old}")
        r.sm_digest = _chain(r.sm_digest, e)
        r.sm_index = e.index
        known = self.digest_at.setdefault(e.index, r.sm_digest)
        if known != r.sm_digest:
            self.fail(f"{r.id}'s applied sequence differs from another's up to {e.index}")
        if e.kind == "normal":
            r.applied_values.append(e.data)
        self.sm_apply(r, e)
        self.stats["committed"] = max(self.stats["committed"], e.index)

    def _check_node(self, r: Replica, was_leader: bool) -> None:
        node = r.node
        assert node is not None
        log = node.log
        if not log.applied <= log.committed <= log.last_index():
            self.fail(f"{r.id}: applied {log.applied} commit {log.committed} "
                      f"last {log.last_index()}")
        if node.role is Role.LEADER:
            other = self.leader_of_term.setdefault(node.term, r.id)
            if other != r.id:
                self.fail(f"two leaders in term {node.term}: {other} and {r.id}")
            if not was_leader:
                self.stats["elections"] += 1
                self.note(f"{r.id} leader of term {node.term}")
                self._check_leader_completeness(r)

    def _check_leader_completeness(self, r: Replica) -> None:
        """Raft's leader completeness: a leader of term T holds every entry committed in a
        term before T. An entry may be committed in a later term than T: a candidate can win
        an old term with votes delivered late, after a newer leader committed (it then cannot
        commit anything). So only entries known to be committed before T are checked: those
        first applied by a replica whose own term was below T (a replica learns of a commit
        from a leader of its term or earlier, so its term bounds the commit's from above)."""
        log = r.node.log
        term = r.node.term
        due = [i for i, t in self.commit_term_ub.items() if t < term]
        if due and log.last_index() < max(due):
            self.fail(f"new leader {r.id} of term {term} (last {log.last_index()}) misses "
                      f"entries committed before its term, up to {max(due)}")
        for index in due:
            e = self.applied_at[index]
            if index >= log.first_index():
                t = log.term(index)
                if t != e.term:
                    self.fail(f"new leader {r.id} has term {t} at {index}, applied {e}")

    # ---------------------------------------------------------------- network
    def _send(self, r: Replica, m: Message) -> None:
        if m.type in (MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP) and not m.reject:
            if not r.disk.voter and self.check_lost_disk_never_votes:
                self.fail(f"{r.id} lost its disk yet granted a {m.type.name}")
            if m.type is MsgType.VOTE_RESP:
                prior = self.vote_of.setdefault((m.term, r.id), m.to)
                if prior != m.to:
                    self.fail(f"{r.id} voted for {prior} and {m.to} in term {m.term}")
        if m.type is MsgType.SNAPSHOT:
            self.stats["snapshots_sent"] += 1
        self._enqueue(encode_message(m))

    def _enqueue(self, wire: bytes, copies: int = 1) -> None:
        if self.rng.random() < self.cfg.drop_p:
            return
        if self.rng.random() < self.cfg.dup_p:
            copies += 1
        for _ in range(copies):
            delay = 1 + self.rng.randint(0, self.cfg.delay_ticks_max)
            self.net_seq += 1
            heapq.heappush(self.net, (self.now + delay, self.rng.random(), wire))

    def _deliver_due(self) -> None:
        while self.net and self.net[0][0] <= self.now:
            _, _, wire = heapq.heappop(self.net)
            m = decode_message(wire)
            r = self.replicas[m.to]
            if r.node is None or self.side[m.frm] != self.side[m.to]:
                continue
            self.drive(r, lambda node, m=m: node.step(m))

    # ---------------------------------------------------------------- nemesis & clients
    def _nemesis(self) -> None:
        cfg, rng = self.cfg, self.rng
        if rng.random() < cfg.partition_p:
            self.stats["partitions"] += 1
            leader = self._leader()
            if leader is not None and rng.random() < 0.5:
                # Cut the leader off with a minority (possibly alone).
                minority = [leader.id] + rng.sample(
                    [i for i in self.ids if i != leader.id], rng.randint(0, (self.n - 1) // 2))
                self.side = {i: (1 if i in minority else 0) for i in self.ids}
            else:
                self.side = {i: rng.randint(0, 2) for i in self.ids}
            self.note(f"partition {self.side}")
        elif rng.random() < cfg.heal_p:
            self.side = {i: 0 for i in self.ids}
            self.note("heal")
        for r in self.replicas.values():
            if r.node is not None and rng.random() < cfg.crash_p:
                self.stats["crashes"] += 1
                self.note(f"crash {r.id} (disk kept)")
                r.node = None
            elif (r.node is not None and r.disk.voter and self.wiped < (self.n - 1) // 2
                  and rng.random() < cfg.wipe_p):
                self.wiped += 1
                self.stats["wipes"] += 1
                self.note(f"crash {r.id} and lose its disk")
                r.node = None
                r.disk = Disk(voter=False, generation=r.disk.generation + 1)
                r.applied_values = []
            elif r.node is None and not r.removed and rng.random() < cfg.restart_p:
                self._start(r.id)
            elif r.node is not None and rng.random() < cfg.compact_p:
                self._compact(r)

    def _compact(self, r: Replica) -> None:
        st = r.disk.storage
        if r.sm_index <= st.snapshot().index:
            return
        voters, learners = r.node.config_at(r.sm_index)
        st.create_snapshot(r.sm_index, _SM.pack(r.sm_index, r.sm_digest) + self.sm_payload(r),
                           voters, learners)
        keep = self.rng.randint(0, 5)
        st.compact(max(st.first_index() - 1, r.sm_index - keep))
        self.note(f"{r.id} snapshot at {r.sm_index}, first index now {st.first_index()}")

    def _leader(self) -> Replica | None:
        best = None
        for r in self.live():
            if r.node.role is Role.LEADER and (best is None or r.node.term > best.node.term):
                best = r
        return best

    def _client(self) -> None:
        rng = self.rng
        live = self.live()
        if not live:
            return
        if rng.random() < self.cfg.propose_p:
            r = rng.choice(live)
            self.proposal_seq += 1
            value = f"v{self.proposal_seq}".encode()
            try:
                self.drive(r, lambda node: node.propose(value))
            except (NotLeader, ProposalDropped):
                pass
        live = self.live()
        if live and rng.random() < self.cfg.read_p:
            r = rng.choice(live)
            self.read_seq += 1
            ctx = f"r{self.read_seq}".encode()
            self.reads[ctx] = max((x.node.log.committed for x in self.live()), default=0)
            try:
                self.drive(r, lambda node: node.read_index(ctx))
            except (NotLeader, ProposalDropped):
                self.reads.pop(ctx, None)

    def _membership(self) -> None:
        """Replace one voter by a new replica: add_learner, promote, remove -- one step at a
        time, each proposed by whoever leads once the previous change has committed."""
        if self.change is None:
            if (self.replacements >= self.cfg.replacements_max
                    or self.rng.random() >= self.cfg.replace_p):
                return
            leader = self._leader()
            if leader is None:
                return
            old = self.rng.choice(leader.node.voters)
            new = max(self.replicas) + 1
            self.replacements += 1
            self.stats["replacements"] += 1
            self.ids.append(new)
            self.side[new] = self.side[old]
            self.replicas[new] = Replica(new, Disk(), bootstrap=())
            self._start(new)
            self.change = (old, new)
            self.note(f"replace {old} by {new}")
        old, new = self.change
        leader = self._leader()
        if leader is None:
            return
        node = leader.node
        if node.status()["conf_index"] > node.log.committed:
            return  # the last step has not committed yet
        try:
            if new not in node.voters and new not in node.learners:
                op, member = "add_learner", new
            elif new in node.learners:
                pr = node.prs.get(new)
                if pr is None or pr.match < node.log.committed:
                    return  # promote only once it has caught up
                op, member = "promote", new
            elif old in node.voters or old in node.learners:
                if old == leader.id:
                    others = [v for v in node.voters if v != old]
                    self.drive(leader, lambda n: n.transfer_leadership(self.rng.choice(others)))
                    return
                op, member = "remove", old
            else:
                self.note(f"replacement of {old} by {new} done")
                gone = self.replicas[old]
                gone.removed, gone.node = True, None
                self.change = None
                return
            self.drive(leader, lambda n: n.propose_conf_change(op, member))
            self.stats["conf_changes"] += 1
            self.note(f"{leader.id} proposed {op} {member}")
        except (NotLeader, ProposalDropped, ConfChangeRefused):
            pass

    def _tick_all(self, skip_p: float) -> None:
        for r in self.live():
            if r.node is not None and self.rng.random() >= skip_p:
                self.drive(r, lambda node: node.tick())

    # ---------------------------------------------------------------- the run
    def run(self) -> "Sim":
        for _ in range(self.cfg.chaos_ticks):
            self.now += 1
            self._nemesis()
            self._membership()
            self._client()
            self._tick_all(self.cfg.tick_skip_p)
            self._deliver_due()
        self._heal_and_check_liveness()
        return self

    def _heal_and_check_liveness(self) -> None:
        self.note("heal all for the liveness check")
        self.side = {i: 0 for i in self.ids}
        self.cfg.drop_p = self.cfg.dup_p = 0.0
        self.cfg.crash_mid_ready_p = 0.0
        self.cfg.delay_ticks_max = min(self.cfg.delay_ticks_max, 2)
        for r in self.members():
            if r.node is None:
                self._start(r.id)
        self.cfg.replace_p = 0.0  # no new replacement; one under way is finished
        final = f"final-{self.seed}".encode()
        proposed_by: tuple[int, int] | None = None  # (leader id, term)
        deadline = self.now + self.cfg.liveness_ticks_max
        while self.now < deadline:
            self.now += 1
            self._tick_all(0.0)
            self._deliver_due()
            self._membership()
            if self.change is None and all(final in r.applied_values for r in self.members()):
                return
            leader = self._leader()
            if leader is not None and (leader.id, leader.node.term) != proposed_by:
                try:
                    self.drive(leader, lambda node: node.propose(final))
                    proposed_by = (leader.id, leader.node.term)
                except (NotLeader, ProposalDropped):
                    pass
        status = {r.id: r.node.status() for r in self.members()}
        self.fail(f"no liveness: after healing for {self.cfg.liveness_ticks_max} ticks the "
                  f"final proposal is not applied everywhere; status={status}")


def simulate(seed: int, n: int | None = None, config: SimConfig | None = None) -> Sim:
    """Run one seeded simulation; ``n`` defaults to 3 or 5 chosen by the seed."""
    if n is None:
        n = 3 if seed % 2 == 0 else 5
    return Sim(seed, n, config).run()

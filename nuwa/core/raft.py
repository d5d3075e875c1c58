"""Raft consensus as a pure state machine (the shape of etcd-io/raft).

The caller owns disk, network and time. It feeds the node ``tick()`` (logical time),
``step(message)`` (network input), ``propose(data)`` / ``read_index(ctx)`` (client input), and
drains ``ready()``: persist its snapshot, entries and hard state, then send its messages,
apply its committed entries, and call ``advance(ready)``. Randomness comes from the
``random.Random`` given at construction, so a whole cluster replays from one seed.

Roles and the only legal moves (``_ALLOWED``; ``_become_*`` refuse anything else)::

                timeout                  pre-vote quorum               vote quorum
    FOLLOWER ─────────────> PRE_CANDIDATE ──────────────> CANDIDATE ─────────────> LEADER
     ^ ^  │ timeout, pre-vote off                          ^  │ ^  │ timeout            │
     │ │  └────────────────────────────────────────────────┘  │ └──┘ (new term, or     │
     │ └── higher term, or a leader of this term ─────────────┘       pre-vote first)  │
     └──── higher term, or no quorum heard for election_ticks (check-quorum) ──────────┘

Rules implemented (Raft paper / thesis section in brackets):

* Elections [§5.2] with a timeout drawn from [election_ticks, 2*election_ticks).
* Pre-vote [thesis §9.6]: a node first asks whether it *could* win at term+1 without changing
  any term; peers refuse while they hear from a leader (the leader lease). A partitioned node
  that comes back therefore cannot disrupt a healthy leader.
* Check-quorum [thesis §6.2]: a leader that has not heard from a quorum for election_ticks
  steps down; followers in the lease ignore vote requests (except a hand-off: TIMEOUT_NOW).
* A no-op entry at the start of each term; commit only entries of the current term by counting
  replicas [§5.4.2]; followers commit min(leader commit, last new entry) [§5.3].
* Replication with fast conflict back-off (reject_hint + log_term) and flow control
  (``raft_progress``), snapshots to followers whose entries are compacted [§7].
* Read-index [thesis §6.4]: a read waits for an entry of the leader's term to commit, then a
  heartbeat round acknowledged by a quorum; followers forward to the leader.
* Leadership hand-off (``transfer_leadership``) via TIMEOUT_NOW [thesis §3.10].

Membership changes, one server at a time [thesis §4.1] (``propose_conf_change``): what is
valid, and how the configuration follows the log, is told in ``nuwa.core.raft_conf``.

A replica that lost its disk, kept under its old id, runs with ``voter=False``. It
replicates and applies (and counts towards commit and read quorums, which is safe) but
never votes or campaigns. Why it must never vote again under its old identity: before it
lost its disk it may have voted in some term T it cannot remember, and no message it can
receive afterwards proves that T is over (delayed messages can present an older term), so
voting again could elect two leaders in T. Since it never votes, every future election
quorum is made of replicas that kept their disks, and quorum intersection among those keeps
every committed entry -- including ones it acknowledged and then lost. The shell replaces
such a replica with a new id through the membership changes above (``nuwa.group``).
"""

from __future__ import annotations

from typing import Sequence

from nuwa.core.raft_conf import changed_config, check_conf_request, latest_config
from nuwa.core.raft_log import MemoryStorage, RaftLog
from nuwa.core.raft_progress import Progress, ProgressState
from nuwa.core.raft_read import ReadRounds
from nuwa.core.raft_types import (
    ConfChangeRefused,
    Entry,
    EntryUnavailable,
    HardState,
    IllegalTransition,
    LogCompacted,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    RaftError,
    ReadState,
    Ready,
    Rng,
    Role,
    Snapshot,
    encode_conf,
    well_formed,
)

__all__ = [
    "Role", "Entry", "Snapshot", "HardState", "ReadState", "MsgType", "Message", "Ready",
    "MemoryStorage", "RaftNode", "RaftError", "NotLeader", "ProposalDropped", "LogCompacted",
    "EntryUnavailable", "IllegalTransition", "ConfChangeRefused", "Rng",
]

_ALLOWED = {
    Role.FOLLOWER: {Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE},
    Role.PRE_CANDIDATE: {Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE},
    Role.CANDIDATE: {Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER},
    Role.LEADER: {Role.FOLLOWER},
}

_TRANSFER = b"transfer"  # context of VOTE messages of a leadership hand-off
_REPLICATION = (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT)


class RaftNode:
    """One replica's Raft state. Not thread-safe; the shell serialises all calls."""

    def __init__(self, node_id: int, voters: Sequence[int], storage: MemoryStorage,
                 rng: Rng, *, election_ticks: int = 10, heartbeat_ticks: int = 1,
                 pre_vote: bool = True, check_quorum: bool = True,
                 entries_per_append_max: int = 256, bytes_per_append_max: int = 1 << 20,
                 inflight_appends_max: int = 64, applied: int = 0,
                 uncommitted_entries_max: int = 10_000, pending_reads_max: int = 10_000,
                 voter: bool = True) -> None:
        if node_id < 1:
            raise ValueError(f"node_id must be >= 1, got {node_id}")
        if not 1 <= heartbeat_ticks < election_ticks:
            raise ValueError(f"need 1 <= heartbeat_ticks < election_ticks, got "
                             f"{heartbeat_ticks}, {election_ticks}")
        for name, value in (("entries_per_append_max", entries_per_append_max),
                            ("bytes_per_append_max", bytes_per_append_max),
                            ("inflight_appends_max", inflight_appends_max),
                            ("uncommitted_entries_max", uncommitted_entries_max),
                            ("pending_reads_max", pending_reads_max)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.id = node_id
        self.rng = rng
        self.election_ticks = election_ticks
        self.heartbeat_ticks = heartbeat_ticks
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.entries_per_append_max = entries_per_append_max
        self.bytes_per_append_max = bytes_per_append_max
        self.inflight_appends_max = inflight_appends_max
        self.uncommitted_entries_max = uncommitted_entries_max
        # False for a replica that lost its disk: it must never vote again (module docstring).
        self.is_voter_replica = voter

        snap = storage.snapshot()
        chosen = snap.voters if snap.index > 0 and snap.voters else tuple(voters)
        if any(v < 1 for v in chosen) or len(set(chosen)) != len(chosen):
            raise ValueError(f"voters must be distinct ids >= 1, got {list(chosen)}")
        # The configuration: the latest one in the log, committed or not (thesis §4.1); before
        # any conf entry, the snapshot's, or the bootstrap voters. Empty for a replica that is
        # joining an existing group: it learns the configuration from the leader.
        self.voters: tuple[int, ...] = tuple(sorted(chosen))
        self.learners: tuple[int, ...] = tuple(sorted(snap.learners)) if snap.index > 0 else ()
        self._bootstrap = (self.voters, self.learners)
        self._conf_index = 0  # index of the conf entry the configuration comes from (0: none)
        self._conf_term = 0

        self.log = RaftLog(storage, applied)
        hs = storage.hard_state()
        self.term = hs.term
        self.vote = hs.vote
        self.role = Role.FOLLOWER
        self.lead = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = election_ticks
        self.votes: dict[int, bool] = {}
        self.prs: dict[int, Progress] = {}
        self.lead_transferee = 0
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        # Leader only: reads waiting for the first commit of this term, and heartbeat rounds.
        self.reads = ReadRounds(pending_reads_max)
        self._prev_hard_state = hs
        self._prev_soft = (self.lead, self.role)
        self._refresh_config()  # conf entries in the log after the snapshot
        self._become_follower(self.term, 0)

    # ================================================================ public API
    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    @property
    def promotable(self) -> bool:
        return self.is_voter_replica and self.id in self.voters

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start an election now (pre-vote first if enabled). No-op on a leader or learner."""
        if self.role is not Role.LEADER:
            self._campaign(transfer=False)

    def propose(self, data: bytes) -> int:
        """Append ``data`` as a new entry; returns its index. It is committed once it shows up
        in a Ready's committed_entries (at that index, with this leader's term)."""
        return self._propose(bytes(data), "normal")

    def propose_many(self, datas: Sequence[bytes]) -> list[int]:
        """Append several entries behind one round of appends (the server gathers the writes
        that arrive in one loop iteration). Returns the indexes of the entries appended: only
        the first ones when fewer fit under ``uncommitted_entries_max``; raises
        ``ProposalDropped`` when none does."""
        return self._propose_entries([(bytes(d), "normal") for d in datas])

    def propose_conf_change(self, op: str, member: int) -> int:
        """Propose a single-server membership change (thesis §4.1); returns the entry's index.
        ``op`` is ``add_learner`` (a new replica that replicates but does not vote),
        ``promote`` (a learner becomes a voter) or ``remove``. The new configuration takes
        effect on each replica as soon as the entry is in its log. One change at a time: the
        next is refused (``ProposalDropped``) until this one commits, and a new leader first
        commits an entry of its own term. Invalid changes raise ``ConfChangeRefused``."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        check_conf_request(op, member)
        if not self._committed_in_term():
            raise ProposalDropped("a new leader must commit an entry of its term before a "
                                  "membership change; retry shortly")
        if self._conf_index > self.log.committed:
            raise ProposalDropped(f"the membership change at index {self._conf_index} has not "
                                  f"committed yet; one change at a time")
        voters, learners = changed_config(self.voters, self.learners, op, member, self.id)
        return self._propose(encode_conf(voters, learners), "conf")

    def config_at(self, index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The (voters, learners) in force at ``index`` (for a snapshot taken there)."""
        if index >= self._conf_index:
            return self.voters, self.learners
        base, voters, learners = self._config_base()
        return latest_config(voters, learners, self._entries_between(base + 1, index))[:2]

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read point; a ReadState(index, context) appears in a later
        Ready. ``context`` should be unique among this replica's outstanding reads."""
        context = bytes(context)
        if self.role is Role.LEADER:
            self._leader_read(self.id, context)
        elif self.lead == 0:
            raise NotLeader(0)
        else:
            self._send(Message(MsgType.READ_INDEX, self.id, self.lead, self.term,
                               context=context))

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to ``to``: catch it up, then tell it to campaign (TIMEOUT_NOW).
        Proposals are refused meanwhile; abandoned after election_ticks."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if to == self.id or to not in self.voters:
            return
        self.lead_transferee = to
        self.election_elapsed = 0
        if self.prs[to].match == self.log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, self.id, to, self.term))
        else:
            self._send_append(to)

    def report_unreachable(self, peer: int) -> None:
        """The shell could not deliver to ``peer``: stop pipelining to it."""
        pr = self.prs.get(peer)
        if self.role is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def has_ready(self) -> bool:
        return bool(
            self.msgs or self.read_states or self.log.unstable.entries
            or self.log.unstable.snapshot is not None or self.log.has_next_committed()
            or self._hard_state() != self._prev_hard_state
            or (self.lead, self.role) != self._prev_soft)

    def ready(self) -> Ready:
        hs = self._hard_state()
        snap = self.log.unstable.snapshot
        committed = self.log.next_committed()
        rd = Ready(
            hard_state=hs if hs != self._prev_hard_state else None,
            entries=list(self.log.unstable.entries),
            snapshot=snap,
            committed_entries=committed,
            messages=self.msgs,
            read_states=self.read_states,
            leader=self.lead,
            role=self.role,
        )
        self.msgs = []
        self.read_states = []
        self._prev_hard_state = hs
        self._prev_soft = (self.lead, self.role)
        if committed:
            self.log.applying = committed[-1].index
        return rd

    def advance(self, rd: Ready) -> None:
        """Call after ``rd`` was persisted, its messages sent and its entries applied."""
        if rd.snapshot is not None:
            self.log.stable_snap_to(rd.snapshot.index)
            self.log.applied_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)

    def status(self) -> dict:
        return {
            "id": self.id, "role": self.role, "term": self.term, "leader": self.lead,
            "vote": self.vote, "commit": self.log.committed, "applied": self.log.applied,
            "first_index": self.log.first_index(), "last_index": self.log.last_index(),
            "voters": self.voters, "learners": self.learners, "voter": self.promotable,
            "conf_index": self._conf_index,
            "progress": {i: repr(p) for i, p in self.prs.items()},
        }

    # ================================================================ role changes
    def _transition(self, to: Role) -> None:
        if to not in _ALLOWED[self.role]:
            raise IllegalTransition(f"node {self.id}: {self.role.name} -> {to.name}")
        self.role = to

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
        self.lead = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = (
            self.election_ticks + self.rng.randrange(self.election_ticks))
        self.votes = {}
        self.prs = {}
        self.lead_transferee = 0
        self.reads.clear()

    def _become_follower(self, term: int, lead: int) -> None:
        self._transition(Role.FOLLOWER)
        self._reset(term)
        self.lead = lead

    def _become_pre_candidate(self) -> None:
        # Changes neither term nor vote: a failed pre-vote leaves no trace.
        self._transition(Role.PRE_CANDIDATE)
        self.votes = {}
        self.lead = 0
        self.election_elapsed = 0
        self.randomized_election_timeout = (
            self.election_ticks + self.rng.randrange(self.election_ticks))

    def _become_candidate(self) -> None:
        self._transition(Role.CANDIDATE)
        self._reset(self.term + 1)
        self.vote = self.id

    def _become_leader(self) -> None:
        self._transition(Role.LEADER)
        self._reset(self.term)
        self.lead = self.id
        last = self.log.last_index()
        for v in self.voters + self.learners:
            pr = Progress(last + 1, self.inflight_appends_max)
            if v == self.id:
                pr.match = last
                pr.become_replicate()
                pr.recent_active = True
            self.prs[v] = pr
        # The no-op lets this term commit, which also commits earlier terms' entries (§5.4.2).
        self._append_entries([Entry(self.term, last + 1, b"", "noop")])
        self._broadcast_append()

    # ================================================================ time
    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self._campaign(transfer=False)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        for peer, pr in self.prs.items():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_elapsed_ticks += 1
                if pr.snapshot_elapsed_ticks >= self.election_ticks:
                    # No answer: the snapshot was probably lost. Probe again (which resends
                    # the snapshot if the follower still needs it).
                    pr.become_probe()
                    self._send_append(peer)
        if self.election_elapsed >= self.election_ticks:
            self.election_elapsed = 0
            if self.check_quorum and not self._quorum_active():
                self._become_follower(self.term, 0)
                return
            self.lead_transferee = 0  # a hand-off that did not happen in time is abandoned
        if self.heartbeat_elapsed >= self.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat(self.reads.latest_round_context())

    def _quorum_active(self) -> bool:
        active = 0
        for v in self.voters:
            pr = self.prs[v]
            if v == self.id or pr.recent_active:
                active += 1
            pr.recent_active = False
        return active >= self.quorum

    # ================================================================ elections
    def _campaign(self, transfer: bool) -> None:
        if not self.promotable:
            return
        if self.pre_vote and not transfer:
            self._become_pre_candidate()
            vote_type, term = MsgType.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, term = MsgType.VOTE, self.term
        if self._poll(self.id, True):  # a group of one
            if vote_type is MsgType.PRE_VOTE:
                self._campaign(transfer=True)
            else:
                self._become_leader()
            return
        ctx = _TRANSFER if transfer else b""
        for v in self.voters:
            if v != self.id:
                self._send(Message(vote_type, self.id, v, term, log_term=self.log.last_term(),
                                   index=self.log.last_index(), context=ctx))

    def _poll(self, voter: int, granted: bool) -> bool | None:
        """Record a vote; True if won, False if lost, None if undecided."""
        if voter in self.voters:
            self.votes.setdefault(voter, granted)
        yes = sum(1 for g in self.votes.values() if g)
        no = len(self.votes) - yes
        if yes >= self.quorum:
            return True
        if no > len(self.voters) - self.quorum:
            return False
        return None

    def _handle_vote_request(self, m: Message) -> None:
        resp = MsgType.PRE_VOTE_RESP if m.type is MsgType.PRE_VOTE else MsgType.VOTE_RESP
        if not self.is_voter_replica:
            return  # a replica that lost its disk never votes (see module docstring)
        # A learner does answer (as in etcd): the candidate may already have the entry that
        # promotes it, which has not reached it yet; refusing could leave no quorum.
        can_vote = (self.vote == m.frm or (self.vote == 0 and self.lead == 0)
                    or (m.type is MsgType.PRE_VOTE and m.term > self.term))
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A pre-vote grant answers with the candidate's future term; a vote grant is at
            # our (now equal) term.
            self._send(Message(resp, self.id, m.frm, m.term))
            if m.type is MsgType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, self.id, m.frm, self.term, reject=True))

    # ================================================================ stepping
    def step(self, m: Message) -> None:
        """Handle one message. Malformed or misdirected input is dropped, never raised."""
        if not well_formed(m, self.id):
            return
        if m.term > self.term:
            if m.type in (MsgType.PRE_VOTE, MsgType.VOTE):
                in_lease = self.lead != 0 and self.election_elapsed < self.election_ticks
                if in_lease and m.context != _TRANSFER and (
                        m.type is MsgType.PRE_VOTE or self.check_quorum):
                    # We heard from a leader within an election timeout: the candidate is
                    # probably a replica that was cut off. Ignore it (thesis §9.6, §6.2).
                    return
            if m.type is MsgType.PRE_VOTE or (m.type is MsgType.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change terms
            elif m.type in _REPLICATION:
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, 0)
        elif m.term < self.term:
            if m.type in (MsgType.APPEND, MsgType.HEARTBEAT) and (self.check_quorum
                                                                  or self.pre_vote):
                # A stale leader: tell it our term so it steps down. (With pre-vote its
                # followers would otherwise never bump its term.)
                self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self.term))
            elif m.type is MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, self.id, m.frm, self.term,
                                   reject=True))
            return

        if m.type in (MsgType.PRE_VOTE, MsgType.VOTE):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _step_leader(self, m: Message) -> None:
        pr = self.prs.get(m.frm)
        if m.type is MsgType.READ_INDEX:
            if pr is not None:
                try:
                    self._leader_read(m.frm, m.context)
                except ProposalDropped:
                    pass  # the follower's client times out and retries
            return
        if pr is None:
            return
        if m.type is MsgType.APPEND_RESP:
            pr.recent_active = True
            self._handle_append_response(m, pr)
        elif m.type is MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            self._handle_heartbeat_response(m, pr)

    def _step_candidate(self, m: Message) -> None:
        if m.type in _REPLICATION:
            self._become_follower(m.term, m.frm)  # a leader won this term
            self._step_follower(m)
            return
        expected = (MsgType.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE
                    else MsgType.VOTE_RESP)
        if m.type is not expected:
            return
        result = self._poll(m.frm, not m.reject)
        if result is True:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(transfer=True)
            else:
                self._become_leader()
        elif result is False:
            self._become_follower(self.term, 0)

    def _step_follower(self, m: Message) -> None:
        if m.type in _REPLICATION:
            self.election_elapsed = 0
            self.lead = m.frm
            if m.type is MsgType.APPEND:
                self._handle_append(m)
            elif m.type is MsgType.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif m.type is MsgType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))
        elif m.type is MsgType.TIMEOUT_NOW:
            self._campaign(transfer=True)

    # ================================================================ follower side
    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self.term,
                               index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None and (
                any(e.kind == "conf" for e in m.entries)
                or (self._conf_index and not self.log.match_term(self._conf_index, self._conf_term))):
            self._refresh_config()  # a conf entry arrived, or the one we used was overwritten
        if last_new is not None:
            self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self.term, index=last_new))
            return
        # Reject, with a hint so the leader can skip a whole term of mismatches at once.
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term)
        self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self.term, index=m.index,
                           reject=True, reject_hint=hint_index, log_term=hint_term))

    def _handle_heartbeat(self, m: Message) -> None:
        if self.is_voter_replica:
            # The leader never sends a commit beyond our acknowledged match. A replica that
            # lost its disk may hold entries from an older leader at those indexes, so it
            # only commits through APPEND, where the log-matching check guards it.
            self.log.commit_to(m.commit)
        self._send(Message(MsgType.HEARTBEAT_RESP, self.id, m.frm, self.term,
                           commit=self.log.committed, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None
        if snap.index <= self.log.committed:
            pass  # old news
        elif self.log.match_term(snap.index, snap.term):
            self.log.commit_to(snap.index)  # we have it all already
        else:
            self.log.restore(snap)
            self._refresh_config()
            self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self.term,
                               index=self.log.last_index()))
            return
        self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self.term,
                           index=self.log.committed))

    # ================================================================ leader side
    def _propose(self, data: bytes, kind: str) -> int:
        return self._propose_entries([(data, kind)])[0]

    def _propose_entries(self, items: list[tuple[bytes, str]]) -> list[int]:
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if self.lead_transferee:
            raise ProposalDropped(f"leadership is being handed to {self.lead_transferee}")
        room = self.uncommitted_entries_max - (self.log.last_index() - self.log.committed)
        if room <= 0:
            raise ProposalDropped(f"{self.uncommitted_entries_max} uncommitted entries "
                                  f"(uncommitted_entries_max) already; retry later")
        first = self.log.last_index() + 1
        entries = [Entry(self.term, first + i, data, kind)
                   for i, (data, kind) in enumerate(items[:room])]
        if not entries:
            return []
        self._append_entries(entries)
        self._broadcast_append()
        return [e.index for e in entries]

    def _append_entries(self, entries: list[Entry]) -> None:
        last = self.log.append(entries)
        self.prs[self.id].maybe_update(last)
        if any(e.kind == "conf" for e in entries):
            self._refresh_config()
        self._maybe_commit()

    def _maybe_commit(self) -> bool:
        matches = sorted((self.prs[v].match for v in self.voters), reverse=True)
        if not self.log.maybe_commit(matches[self.quorum - 1], self.term):
            return False
        if self.reads.waiting_for_commit and self._committed_in_term():
            for frm, ctx in self.reads.take_waiting_for_commit():
                self._leader_read(frm, ctx)
        return True

    def _committed_in_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def _broadcast_append(self) -> None:
        for v in self.prs:
            if v != self.id:
                self._send_append(v)

    def _broadcast_heartbeat(self, context: bytes = b"") -> None:
        for v in self.prs:
            if v != self.id:
                commit = min(self.prs[v].match, self.log.committed)
                self._send(Message(MsgType.HEARTBEAT, self.id, v, self.term, commit=commit,
                                   context=context))

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        """Send the next append (or a snapshot) to ``to``; False if nothing was sent."""
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        entries = self.log.slice(pr.next, pr.next + self.entries_per_append_max,
                                 self.bytes_per_append_max)
        if prev_term is None or entries is None:
            return self._send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        self._send(Message(MsgType.APPEND, self.id, to, self.term, log_term=prev_term,
                           index=prev, entries=tuple(entries), commit=self.log.committed))
        pr.sent_append(entries[-1].index if entries else prev, bool(entries))
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # don't ship a whole snapshot to a replica that may be down
        snap = self.log.storage.snapshot()
        if snap.index == 0 or snap.index < self.log.first_index() - 1:
            return False  # entries compacted without a covering snapshot: caller bug
        pr.become_snapshot(snap.index)
        self._send(Message(MsgType.SNAPSHOT, self.id, to, self.term, snapshot=snap))
        return True

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decrease_to(m.index, hint):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            if pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                pr.become_probe()
            if was_paused and not pr.is_paused():
                self._send_append(m.frm)
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        # A new commit index is not broadcast on its own (etcd does): followers learn it with
        # the next append or heartbeat. Only the leader answers clients, so nobody waits on
        # it, and an idle group saves two messages and a wake-up per write.
        self._maybe_commit()
        if was_paused:
            self._send_append(m.frm)
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, self.id, m.frm, self.term))

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and len(pr.inflights) >= pr.inflight_appends_max:
            pr.inflights.popleft()  # one may have been lost; let one more through
        behind = pr.match < self.log.last_index() or m.commit < self.log.committed
        if behind and pr.state is not ProgressState.SNAPSHOT:
            # An append (even empty) both repairs a lost one and carries the commit index
            # through the log-matching check, which a replica without its disk relies on.
            self._send_append(m.frm)
        rid = self.reads.round_of(m.context)
        if rid is not None:
            self._ack_read_round(rid, m.frm)

    # ================================================================ read index
    def _leader_read(self, frm: int, context: bytes) -> None:
        self.reads.check_room()
        if not self._committed_in_term():
            # Until this term commits, our commit index may be behind the last leader's.
            self.reads.wait_for_commit(frm, context)
            return
        if len(self.voters) == 1:
            self._answer_read(frm, self.log.committed, context)
            return
        self._broadcast_heartbeat(self.reads.start_round(self.log.committed, self.id, frm,
                                                         context))

    def _ack_read_round(self, rid: int, frm: int) -> None:
        for answer in self.reads.ack(rid, frm, self.voters, self.quorum):
            self._answer_read(*answer)

    def _answer_read(self, requester: int, index: int, context: bytes) -> None:
        if requester == self.id:
            self.read_states.append(ReadState(index, context))
        else:
            self._send(Message(MsgType.READ_INDEX_RESP, self.id, requester, self.term,
                               index=index, context=context))

    # ================================================================ configuration
    def _config_base(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """(index, voters, learners) of the newest snapshot (stored or just received), or the
        bootstrap configuration at index 0."""
        best = (0, *self._bootstrap)
        for snap in (self.log.storage.snapshot(), self.log.unstable.snapshot):
            if snap is not None and snap.index > best[0]:
                best = (snap.index, tuple(sorted(snap.voters)), tuple(sorted(snap.learners)))
        return best

    def _entries_between(self, lo: int, hi: int):
        while lo <= hi:
            batch = self.log.slice(lo, min(hi, lo + 1023) + 1)
            if not batch:
                return
            yield from batch
            lo = batch[-1].index + 1

    def _refresh_config(self) -> None:
        """Recompute the configuration from the newest snapshot plus the conf entries after
        it. Called only when a conf entry arrives or the log under one changed."""
        base, voters, learners = self._config_base()
        voters, learners, conf_index, conf_term = latest_config(
            voters, learners, self._entries_between(base + 1, self.log.last_index()))
        self._set_config(tuple(sorted(voters)), tuple(sorted(learners)), conf_index, conf_term)

    def _set_config(self, voters, learners, conf_index: int, conf_term: int) -> None:
        self._conf_index, self._conf_term = conf_index, conf_term
        if (voters, learners) == (self.voters, self.learners):
            return
        self.voters, self.learners = voters, learners
        if self.role is not Role.LEADER:
            if self.role is not Role.FOLLOWER and not self.promotable:
                self._become_follower(self.term, 0)  # no longer a voter: stop campaigning
            return
        if self.id not in voters:
            self._become_follower(self.term, 0)  # (refused at propose; kept as a guard)
            return
        members = set(voters) | set(learners)
        for peer in list(self.prs):
            if peer not in members:
                del self.prs[peer]
                if self.lead_transferee == peer:
                    self.lead_transferee = 0
        last = self.log.last_index()
        for peer in members:
            if peer not in self.prs:
                self.prs[peer] = Progress(last + 1, self.inflight_appends_max)
                self._send_append(peer)
        for answer in self.reads.recount(self.id, voters, self.quorum):
            self._answer_read(*answer)
        self._maybe_commit()  # a smaller quorum may commit more

    # ================================================================ plumbing
    def _send(self, m: Message) -> None:
        self.msgs.append(m)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

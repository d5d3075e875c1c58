"""The leader's linearizable reads in flight: read-index bookkeeping (Raft thesis §6.4; the
shape of etcd-io/raft's ``read_only.go``).

A read asked before the leader committed an entry of its own term waits for that commit
(until then the leader's commit index may be behind the previous leader's). After it, every
read gets a heartbeat *round*: the read's index is the commit index when it was asked, and it
is safe to serve once a quorum of voters acknowledged the round -- a quorum still followed
this leader after the read was asked. A round acknowledged by a quorum also confirms every
earlier round, so answers go out in the order the reads were asked.

Pure bookkeeping: ``RaftNode`` sends the heartbeats (with ``round_context``) and delivers
the answers this returns. Bounded by ``pending_reads_max``.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Iterable, NamedTuple

from nuwa.core.raft_types import ProposalDropped

# A heartbeat's context naming a read round: its id, 8 bytes big-endian.
ROUND = struct.Struct(">Q")


class ReadAnswer(NamedTuple):
    """A read that is safe to serve once the requester has applied ``index``."""

    requester: int  # replica that asked (the leader itself, or a follower that forwarded it)
    index: int
    context: bytes


class ReadRounds:
    """Reads waiting at the leader: for the first commit of its term, then for a quorum to
    acknowledge their heartbeat round. Emptied by ``clear`` whenever the role changes."""

    def __init__(self, pending_reads_max: int) -> None:
        if pending_reads_max < 1:
            raise ValueError(f"pending_reads_max must be >= 1, got {pending_reads_max}")
        self.pending_reads_max = pending_reads_max
        self.waiting_for_commit: list[tuple[int, bytes]] = []  # (requester, context)
        # round id -> (read index, replicas that acknowledged, requester, context)
        self.rounds: OrderedDict[int, tuple[int, set[int], int, bytes]] = OrderedDict()
        self.round_seq = 0

    def __len__(self) -> int:
        return len(self.waiting_for_commit) + len(self.rounds)

    def clear(self) -> None:
        self.waiting_for_commit = []
        self.rounds.clear()

    def check_room(self) -> None:
        """Refuse a new read (``ProposalDropped``) when ``pending_reads_max`` are waiting."""
        pending = len(self)
        if pending >= self.pending_reads_max:
            raise ProposalDropped(f"{pending} reads pending (pending_reads_max); retry later")

    def wait_for_commit(self, requester: int, context: bytes) -> None:
        self.waiting_for_commit.append((requester, context))

    def take_waiting_for_commit(self) -> list[tuple[int, bytes]]:
        """The reads that waited for this term's first commit (it has happened)."""
        waiting, self.waiting_for_commit = self.waiting_for_commit, []
        return waiting

    def start_round(self, index: int, leader: int, requester: int, context: bytes) -> bytes:
        """A new round for one read at ``index`` (the leader counts as acknowledged);
        returns the heartbeat context that names it."""
        self.round_seq += 1
        self.rounds[self.round_seq] = (index, {leader}, requester, context)
        return ROUND.pack(self.round_seq)

    def latest_round_context(self) -> bytes:
        """The context for a periodic heartbeat: the newest round (its ack confirms all)."""
        if not self.rounds:
            return b""
        return ROUND.pack(next(reversed(self.rounds)))

    @staticmethod
    def round_of(context: bytes) -> int | None:
        """The round id a heartbeat answer's context names, or None."""
        return ROUND.unpack(context)[0] if len(context) == ROUND.size else None

    def ack(self, round_id: int, frm: int, voters: Iterable[int],
            quorum: int) -> list[ReadAnswer]:
        """``frm`` acknowledged round ``round_id``; returns the reads now safe, oldest first."""
        entry = self.rounds.get(round_id)
        if entry is None:
            return []
        entry[1].add(frm)
        if len(entry[1] & set(voters)) < quorum:
            return []
        # A quorum still followed us when it answered `round_id`; that also confirms every
        # earlier round.
        out = []
        while self.rounds:
            first, (index, _, requester, ctx) = next(iter(self.rounds.items()))
            del self.rounds[first]
            out.append(ReadAnswer(requester, index, ctx))
            if first == round_id:
                break
        return out

    def recount(self, leader: int, voters: Iterable[int], quorum: int) -> list[ReadAnswer]:
        """The configuration changed: rounds that a quorum of the new voters already
        acknowledged are confirmed (a smaller quorum may suffice now)."""
        voters = set(voters)
        out: list[ReadAnswer] = []
        for rid, (_, acks, _, _) in list(self.rounds.items()):
            if rid in self.rounds and len(acks & voters) >= quorum:
                out.extend(self.ack(rid, leader, voters, quorum))
        return out

"""The plain data that crosses the Raft core's boundary: roles, entries, messages, Ready.

Everything here is immutable (except ``Ready``, a bag the caller consumes) and free of I/O,
so it can be encoded by ``nuwa.core.codec``, stored by ``nuwa.io.wal`` and compared in tests.
``nuwa.core.raft`` re-exports every public name; import from there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Role", "Entry", "Snapshot", "HardState", "ReadState", "MsgType", "Message", "Ready",
    "ENTRY_KINDS", "CONF_OPS", "CONF_MEMBERS_MAX", "encode_conf", "decode_conf", "ConfChangeRefused",
    "RaftError", "NotLeader", "ProposalDropped", "LogCompacted",
    "EntryUnavailable", "IllegalTransition", "Rng", "well_formed",
]


class Rng(Protocol):
    """The randomness a Raft node draws (election timeouts): a seeded ``random.Random`` from
    the caller, so a whole cluster replays from one seed. The core never makes its own."""

    def randrange(self, stop: int, /) -> int: ...


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


# "noop": the leader's first entry of its term (lets it commit earlier terms' entries, §5.4.2).
# "conf": a single-server membership change; its data is the whole new configuration
# (``encode_conf``), which takes effect as soon as the entry is in a replica's log (nuwa.core.raft).
ENTRY_KINDS = ("normal", "noop", "conf")


@dataclass(frozen=True)
class Entry:
    term: int
    index: int
    data: bytes
    kind: str = "normal"


@dataclass(frozen=True)
class Snapshot:
    """State machine image at ``index`` (whose entry had ``term``), with the configuration
    (voters and learners) in force at that index."""

    index: int
    term: int
    voters: tuple[int, ...]
    data: bytes
    learners: tuple[int, ...] = ()


CONF_OPS = ("add_learner", "promote", "remove")
CONF_MEMBERS_MAX = 64  # voters plus learners in one group


def encode_conf(voters, learners) -> bytes:
    """A configuration as the data of a ``conf`` entry: ``b"v=1,2,3;l=4"``."""
    v = ",".join(str(int(x)) for x in sorted(voters))
    l = ",".join(str(int(x)) for x in sorted(learners))
    return f"v={v};l={l}".encode()


def decode_conf(data: bytes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Inverse of ``encode_conf``; ValueError when ``data`` is not a valid configuration."""
    try:
        vpart, lpart = bytes(data).decode("ascii").split(";")
        if not (vpart.startswith("v=") and lpart.startswith("l=")):
            raise ValueError("missing v= or l=")
        voters = tuple(int(x) for x in vpart[2:].split(",") if x)
        learners = tuple(int(x) for x in lpart[2:].split(",") if x)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"not a Raft configuration: {bytes(data)[:64]!r} ({e})") from None
    members = voters + learners
    if (not voters or any(x < 1 for x in members) or len(set(members)) != len(members)
            or len(members) > CONF_MEMBERS_MAX):
        raise ValueError(f"invalid Raft configuration: voters {voters}, learners {learners}")
    return voters, learners


@dataclass(frozen=True)
class HardState:
    term: int
    vote: int  # 0 = voted for nobody in `term`; replica ids are ints >= 1
    commit: int


EMPTY_HARD_STATE = HardState(0, 0, 0)
EMPTY_SNAPSHOT = Snapshot(0, 0, (), b"")


@dataclass(frozen=True)
class ReadState:
    """A read-index result: reads issued with ``context`` may be served once applied >= index."""

    index: int
    context: bytes


class MsgType(enum.Enum):
    PRE_VOTE = 1
    PRE_VOTE_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    APPEND = 5
    APPEND_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9
    READ_INDEX = 10  # follower -> leader forward of a read_index request
    READ_INDEX_RESP = 11
    TIMEOUT_NOW = 12  # leader -> transferee: campaign now, skipping pre-vote and the lease


@dataclass(frozen=True)
class Message:
    """One Raft message. Field use per type:

    * PRE_VOTE/VOTE: ``index``/``log_term`` = candidate's last entry; ``context`` = b"transfer"
      on a leadership hand-off (bypasses the leader lease).
    * *_VOTE_RESP: ``reject``.
    * APPEND: ``index``/``log_term`` = entry preceding ``entries``; ``commit``.
    * APPEND_RESP: success: ``index`` = last index known to match. Reject: ``index`` = the
      rejected preceding index, ``reject_hint``/``log_term`` = follower's guess for fast back-off.
      Also the answer to SNAPSHOT.
    * HEARTBEAT: ``commit`` (never beyond what the follower has), ``context`` = read round.
    * HEARTBEAT_RESP: ``context`` echoed, ``commit`` = the follower's commit index.
    * SNAPSHOT: ``snapshot``.
    * READ_INDEX: ``context``; READ_INDEX_RESP: ``index``, ``context``.
    """

    type: MsgType
    frm: int
    to: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


def well_formed(m: "Message", to: int) -> bool:
    """Whether ``m`` is a message replica ``to`` may step: addressed to it from another
    replica, no negative numbers, an append's entries contiguous after its preceding index
    with terms in order and no newer than the message's, a snapshot that has an index.
    Anything else is dropped unseen (``RaftNode.step`` never raises on input)."""
    if not isinstance(m, Message) or m.to != to or m.frm < 1 or m.frm == to:
        return False
    if m.term < 0 or m.index < 0 or m.commit < 0 or m.log_term < 0:
        return False
    if m.type is MsgType.APPEND:
        for i, e in enumerate(m.entries):
            if (e.index != m.index + 1 + i or e.term > m.term or e.term < 1
                    or e.kind not in ENTRY_KINDS):
                return False
        if m.entries and m.entries[0].term < m.log_term:
            return False
    if m.type is MsgType.SNAPSHOT and (m.snapshot is None or m.snapshot.index < 1):
        return False
    return True


@dataclass
class Ready:
    """What the caller must do, in this order: persist ``snapshot``, ``entries`` and
    ``hard_state`` (durably), then send ``messages``, apply ``committed_entries``, hand out
    ``read_states``, and finally call ``RaftNode.advance(ready)``."""

    hard_state: HardState | None
    entries: list[Entry]
    snapshot: Snapshot | None
    committed_entries: list[Entry]
    messages: list[Message]
    read_states: list[ReadState]
    leader: int
    role: Role


class RaftError(Exception):
    """Base of the Raft core's operating errors."""


class NotLeader(RaftError):
    """propose/read_index on a replica that is not the leader. ``leader`` is 0 if unknown."""

    def __init__(self, leader: int, message: str = ""):
        super().__init__(message or f"not the leader; leader is {leader or 'unknown'}")
        self.leader = leader


class ConfChangeRefused(RaftError):
    """A membership change that is invalid (unknown member, removing the leader or the last
    voter); nothing was appended."""


class ProposalDropped(RaftError):
    """The leader refused a proposal or read: a named limit is reached or leadership is being
    handed off. Nothing was appended; retry later or at the new leader."""


class LogCompacted(RaftError):
    """The requested index is older than the storage's first index (it is in the snapshot)."""


class EntryUnavailable(RaftError):
    """The requested index is beyond the last index in storage."""


class IllegalTransition(AssertionError):
    """A role change the protocol forbids (a programmer error, never caused by input)."""

"""What a Raft message from a peer must satisfy before it reaches the Raft core (pure).

The peer port decodes bytes with ``nuwa.core.codec`` (which refuses anything structurally
broken), then ``check_message`` range-checks every field against this replica's own state
before ``RaftNode.step`` may see it, so nothing a peer sends can be persisted that the next
start cannot read back, or make the replica stop:

* identity: ``frm`` is the peer the connection authenticated (``nuwa.core.peer_auth``) and a
  current member; ``to`` is this replica;
* numbers: exact ``int`` (not bool) in range; ``term`` at most ``TERM_AHEAD_MAX`` beyond ours
  and never above ``TERM_MAX`` (so ``term + 1`` always fits the u64 on disk); indexes, commits
  and hints in ``[0, INDEX_MAX]``; ``log_term <= term``;
* shape: entries only in APPEND, consecutive after ``index``, terms in ``[log_term, term]``,
  each conf entry a valid configuration; a snapshot only (and always) in SNAPSHOT, with a valid
  configuration, ``term <= message term``, and data that ``validate_snapshot`` accepts; the
  reject flag only on responses; contexts at most ``CONTEXT_BYTES_MAX``.

``deliver`` is the whole pipeline the shell runs per message: admit, then step, catching
anything the step might still raise. It returns why a message was dropped (or None) and never
raises, so one malformed message costs one dropped message.
"""

from __future__ import annotations

from typing import Callable, Collection

from nuwa.core.codec import decode_message
from nuwa.core.peer_auth import PEER_ID_MAX
from nuwa.core.raft_types import (
    CONF_MEMBERS_MAX,
    ENTRY_KINDS,
    Entry,
    Message,
    MsgType,
    Snapshot,
    decode_conf,
    encode_conf,
)

__all__ = [
    "TERM_AHEAD_MAX", "TERM_MAX", "INDEX_MAX", "CONTEXT_BYTES_MAX", "ENTRIES_PER_MESSAGE_MAX",
    "PEER_ID_MAX", "PeerMessageRejected", "check_message", "admit", "deliver",
]

TERM_AHEAD_MAX = 1 << 32  # a message's term may be at most this far beyond ours
TERM_MAX = 1 << 62  # absolute: far below 2**64, so a campaign's term + 1 always fits on disk
INDEX_MAX = 1 << 62  # log indexes, commits and hints
CONTEXT_BYTES_MAX = 64  # read-index contexts are 8 bytes, a hand-off's is b"transfer"
ENTRIES_PER_MESSAGE_MAX = 1 << 16  # entries in one APPEND (the leader sends <= 256 by default)

_RESPONSES = (MsgType.PRE_VOTE_RESP, MsgType.VOTE_RESP, MsgType.APPEND_RESP)
_INT_FIELDS = ("frm", "to", "term", "log_term", "index", "commit", "reject_hint")


class PeerMessageRejected(ValueError):
    """A peer message refused before it reached the Raft core. ``reason`` is a short code
    (counted per replica in ``status()["peer_dropped"]``); the text says what was wrong."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _int(what: str, v, lo: int, hi: int, reason: str = "out_of_range") -> int:
    if type(v) is not int:
        raise PeerMessageRejected("bad_type", f"{what} is {type(v).__name__}, expected int")
    if not lo <= v <= hi:
        raise PeerMessageRejected(reason, f"{what}={v} is outside [{lo}, {hi}]")
    return v


def _conf(what: str, voters, learners) -> None:
    for name, ids in (("voters", voters), ("learners", learners)):
        if type(ids) is not tuple or len(ids) > CONF_MEMBERS_MAX:
            raise PeerMessageRejected("bad_conf", f"{what} {name} must be a tuple of at most "
                                                  f"{CONF_MEMBERS_MAX} ids")
        for x in ids:
            _int(f"{what} {name[:-1]}", x, 1, PEER_ID_MAX, "bad_conf")
    try:
        got = decode_conf(encode_conf(voters, learners))
    except ValueError as e:
        raise PeerMessageRejected("bad_conf", f"{what}: {e}") from None
    if len(got[0]) != len(voters) or len(got[1]) != len(learners):
        raise PeerMessageRejected("bad_conf", f"{what}: repeated member ids")


def check_message(m, *, peer_id: int, self_id: int, members: Collection[int], term: int,
                  validate_snapshot: Callable[[bytes], object] | None = None) -> Message:
    """``m`` if a message from authenticated peer ``peer_id`` may reach this replica's Raft
    core (current ``term``, current ``members``); PeerMessageRejected saying why otherwise."""
    if type(m) is not Message:
        raise PeerMessageRejected("bad_type", f"expected a Message, got {type(m).__name__}")
    if type(m.type) is not MsgType:
        raise PeerMessageRejected("bad_type", f"type {m.type!r} is not a MsgType")
    for name in _INT_FIELDS:
        _int(name, getattr(m, name), 0, INDEX_MAX if name not in ("frm", "to") else PEER_ID_MAX,
             "term_out_of_range" if name == "term" else "out_of_range")
    if m.frm != peer_id:
        raise PeerMessageRejected("impersonation", f"frm={m.frm} on the connection "
                                                   f"authenticated as replica {peer_id}")
    if m.frm == self_id or m.frm not in members:
        raise PeerMessageRejected("not_member", f"replica {m.frm} is not a current member "
                                                f"(members {sorted(members)})")
    if m.to != self_id:
        raise PeerMessageRejected("misdirected", f"to={m.to}, this is replica {self_id}")
    _int("term", m.term, 0, min(TERM_MAX, term + TERM_AHEAD_MAX), "term_out_of_range")
    _int("log_term", m.log_term, 0, m.term)
    if type(m.reject) is not bool:
        raise PeerMessageRejected("bad_type", f"reject is {type(m.reject).__name__}, expected bool")
    if m.reject and m.type not in _RESPONSES:
        raise PeerMessageRejected("bad_shape", f"{m.type.name} cannot carry reject")
    if type(m.context) is not bytes or len(m.context) > CONTEXT_BYTES_MAX:
        raise PeerMessageRejected("bad_shape", f"context must be at most {CONTEXT_BYTES_MAX} bytes")
    _check_entries(m)
    _check_snapshot(m, validate_snapshot)
    return m


def _check_entries(m: Message) -> None:
    if type(m.entries) is not tuple:
        raise PeerMessageRejected("bad_type", f"entries is {type(m.entries).__name__}, expected tuple")
    if not m.entries:
        return
    if m.type is not MsgType.APPEND:
        raise PeerMessageRejected("bad_shape", f"{m.type.name} cannot carry entries")
    if len(m.entries) > ENTRIES_PER_MESSAGE_MAX:
        raise PeerMessageRejected("out_of_range", f"{len(m.entries)} entries; at most "
                                                  f"ENTRIES_PER_MESSAGE_MAX={ENTRIES_PER_MESSAGE_MAX}")
    _int("last entry index", m.index + len(m.entries), 1, INDEX_MAX)
    prev_term = m.log_term
    for i, e in enumerate(m.entries):
        if type(e) is not Entry:
            raise PeerMessageRejected("bad_type", f"entry {i} is {type(e).__name__}, expected Entry")
        _int(f"entry {i} index", e.index, m.index + 1 + i, m.index + 1 + i, "bad_shape")
        _int(f"entry {i} term", e.term, max(1, prev_term), m.term, "bad_shape")
        prev_term = e.term
        if type(e.kind) is not str or e.kind not in ENTRY_KINDS:
            raise PeerMessageRejected("bad_shape", f"entry {i} kind {e.kind!r} not in {ENTRY_KINDS}")
        if type(e.data) is not bytes:
            raise PeerMessageRejected("bad_type", f"entry {i} data is {type(e.data).__name__}")
        if e.kind == "conf":
            try:
                voters, learners = decode_conf(e.data)
            except ValueError as err:
                raise PeerMessageRejected("bad_conf", f"entry {i}: {err}") from None
            _conf(f"entry {i}", voters, learners)


def _check_snapshot(m: Message, validate_snapshot) -> None:
    s = m.snapshot
    if m.type is not MsgType.SNAPSHOT:
        if s is not None:
            raise PeerMessageRejected("bad_shape", f"{m.type.name} cannot carry a snapshot")
        return
    if type(s) is not Snapshot:
        raise PeerMessageRejected("bad_shape", "SNAPSHOT without a snapshot")
    _int("snapshot index", s.index, 1, INDEX_MAX)
    _int("snapshot term", s.term, 1, m.term)
    _conf("snapshot", s.voters, s.learners)
    if type(s.data) is not bytes:
        raise PeerMessageRejected("bad_type", f"snapshot data is {type(s.data).__name__}")
    if validate_snapshot is not None:
        try:
            validate_snapshot(s.data)
        except Exception as e:  # whatever the state machine says: not a snapshot it can load
            raise PeerMessageRejected("bad_snapshot", f"snapshot data does not restore: "
                                                      f"{type(e).__name__}: {e}"[:300]) from None


def admit(payload, *, peer_id: int, self_id: int, members: Collection[int], term: int,
          validate_snapshot: Callable[[bytes], object] | None = None) -> Message:
    """Decode and check one peer frame; PeerMessageRejected if it must be dropped."""
    try:
        m = decode_message(payload)
    except ValueError as e:
        raise PeerMessageRejected("malformed", str(e)[:300]) from None
    return check_message(m, peer_id=peer_id, self_id=self_id, members=members, term=term,
                         validate_snapshot=validate_snapshot)


def deliver(node, payload, *, peer_id: int, members: Collection[int],
            validate_snapshot: Callable[[bytes], object] | None = None,
            on_drop: Callable[[str, str], None] | None = None) -> str | None:
    """Admit one frame and step ``node`` (a ``RaftNode``) with it. Returns None when the
    message was stepped, else the reason it was dropped (also given to ``on_drop`` with a
    description). Never raises: a step that fails on an admitted message (a gap in these
    checks) is reported as ``step_failed``."""
    try:
        m = admit(payload, peer_id=peer_id, self_id=node.id, members=members, term=node.term,
                  validate_snapshot=validate_snapshot)
    except PeerMessageRejected as e:
        reason, detail = e.reason, str(e)
    except Exception as e:  # a decoder bug must not stop the replica either
        reason, detail = "malformed", f"{type(e).__name__}: {e}"[:300]
    else:
        try:
            node.step(m)
            return None
        except Exception as e:
            reason, detail = "step_failed", f"{m.type.name} from {m.frm}: {type(e).__name__}: {e}"[:300]
    if on_drop is not None:
        on_drop(reason, detail)
    return reason

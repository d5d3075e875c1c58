"""The Raft peer port's pure checks: the mutual HMAC handshake (``nuwa.core.peer_auth``) and the
admission of every peer message before the Raft core sees it (``nuwa.core.peer_guard``).

Property: whatever a peer sends -- bytes of any shape, any field of any type or size --
``deliver`` never raises, drops anything it does not admit without touching the node, and
whatever it does admit leaves a node whose state can be persisted and recovered, and whose
next campaign still fits on disk (a term of 2**64-1 once made a replica unrestartable)."""

from __future__ import annotations

import random
import secrets

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nuwa.core import peer_auth as A
from nuwa.core import peer_guard as G
from nuwa.core.codec import (
    encode_entry,
    encode_hard_state,
    encode_message,
    encode_snapshot,
)
from nuwa.core.raft import Entry, HardState, MemoryStorage, Message, MsgType, RaftNode, Role, Snapshot
from nuwa.core.raft_types import encode_conf
from nuwa.core.tree import Tree

SECRET = bytes(range(32))
MEMBERS = {2, 3}
U64_MAX = (1 << 64) - 1


# ------------------------------------------------------------------ handshake


def _handshake(secret_dialer: bytes, secret_listener: bytes, dialer: int = 2, listener: int = 1):
    na, nb = secrets.token_bytes(32), secrets.token_bytes(32)
    hello = A.hello(dialer, na)
    got_id, got_na = A.parse_hello(hello)
    ch = A.challenge(secret_listener, listener, got_id, got_na, nb)
    nb_seen = A.open_challenge(secret_dialer, ch, dialer, listener, na)
    pr = A.proof(secret_dialer, dialer, listener, na, nb_seen)
    A.check_proof(secret_listener, pr, got_id, listener, got_na, nb)
    return hello, ch, pr


def test_a_handshake_with_the_same_secret_succeeds_both_ways():
    _handshake(SECRET, SECRET)


def test_a_wrong_secret_fails_on_either_side():
    other = secrets.token_bytes(32)
    with pytest.raises(A.PeerAuthFailed, match="did not prove"):
        _handshake(other, SECRET)  # the dialer sees the listener's MAC fail first
    # A listener facing a dialer with the wrong secret: the dialer's proof fails.
    na, nb = secrets.token_bytes(32), secrets.token_bytes(32)
    pr = A.proof(other, 2, 1, na, nb)
    with pytest.raises(A.PeerAuthFailed):
        A.check_proof(SECRET, pr, 2, 1, na, nb)


def test_a_recorded_handshake_replayed_fails_both_ways():
    hello, ch, pr = _handshake(SECRET, SECRET)
    # Replayed at a listener: it draws a fresh nonce, so the recorded proof no longer fits.
    dialer, na = A.parse_hello(hello)
    nb2 = secrets.token_bytes(32)
    A.challenge(SECRET, 1, dialer, na, nb2)
    with pytest.raises(A.PeerAuthFailed):
        A.check_proof(SECRET, pr, dialer, 1, na, nb2)
    # Replayed at a dialer: its nonce is fresh, so the recorded challenge's MAC fails.
    with pytest.raises(A.PeerAuthFailed):
        A.open_challenge(SECRET, ch, 2, 1, secrets.token_bytes(32))


def test_a_mac_cannot_be_reflected_to_the_other_role():
    na, nb = secrets.token_bytes(32), secrets.token_bytes(32)
    ch = A.challenge(SECRET, 1, 2, na, nb)
    listener_mac = ch[-32:]
    with pytest.raises(A.PeerAuthFailed):
        A.check_proof(SECRET, listener_mac, 2, 1, na, nb)


def test_the_listener_must_be_the_replica_dialled():
    na, nb = secrets.token_bytes(32), secrets.token_bytes(32)
    ch = A.challenge(SECRET, 3, 2, na, nb)  # replica 3 answers at replica 1's address
    with pytest.raises(A.PeerAuthFailed, match="but replica 3 answered"):
        A.open_challenge(SECRET, ch, 2, 1, na)


@given(st.binary(max_size=100))
def test_hello_parsing_refuses_anything_but_a_hello(raw):
    try:
        rid, nonce = A.parse_hello(raw)
    except A.PeerAuthFailed:
        return
    assert 1 <= rid <= A.PEER_ID_MAX and len(nonce) == 32 and A.hello(rid, nonce) == raw


def test_secrets_must_be_32_bytes():
    for bad in (b"", b"x" * 31, b"x" * 33, "x" * 32, None):
        with pytest.raises(ValueError, match="32 random bytes"):
            A.check_secret(bad)


# ------------------------------------------------------------------ message admission


def _follower() -> tuple[RaftNode, MemoryStorage]:
    """Replica 1 of {1, 2, 3}, following leader 2 in term 2, with three entries committed."""
    storage = MemoryStorage()
    node = RaftNode(1, [1, 2, 3], storage, random.Random(1), election_ticks=10)
    ents = (Entry(2, 1, b"", "noop"), Entry(2, 2, b"a"), Entry(2, 3, b"b"))
    node.step(Message(MsgType.APPEND, 2, 1, 2, entries=ents, commit=3))
    _persist(node, storage)
    assert node.role is Role.FOLLOWER and node.term == 2 and node.log.committed == 3
    return node, storage


def _persist(node: RaftNode, storage: MemoryStorage) -> None:
    """What the shell does with a Ready -- through the codec, as the WAL would."""
    while node.has_ready():
        rd = node.ready()
        if rd.snapshot is not None:
            encode_snapshot(rd.snapshot)
            storage.apply_snapshot(rd.snapshot)
        for e in rd.entries:
            encode_entry(e)
        if rd.entries:
            storage.append(rd.entries)
        if rd.hard_state is not None:
            encode_hard_state(rd.hard_state)
            storage.set_hard_state(rd.hard_state)
        for m in rd.messages:
            encode_message(m)
        node.advance(rd)


def _state(node: RaftNode) -> tuple:
    return (node.term, node.vote, node.role, node.lead, node.log.committed,
            node.log.last_index(), node.log.last_term(), node.has_ready(), node.voters,
            node.learners)


def _check_delivery(payload) -> str | None:
    node, storage = _follower()
    before = _state(node)
    reason = G.deliver(node, payload, peer_id=2, members=MEMBERS, validate_snapshot=Tree.restore)
    assert reason != "step_failed", "a message passed the checks but broke the Raft step"
    if reason is not None:
        assert _state(node) == before, f"a dropped message ({reason}) changed the replica"
        return reason
    assert node.term <= G.TERM_MAX
    _persist(node, storage)  # everything it produced can be written...
    again = RaftNode(1, [1, 2, 3], storage, random.Random(2), election_ticks=10)
    encode_hard_state(HardState(again.term + 1, 1, again.log.committed))  # ...and campaigned on
    for _ in range(40):  # a restarted replica campaigns without overflowing its term
        again.tick()
    _persist(again, storage)
    return None


_ints = st.one_of(st.integers(0, 8), st.sampled_from([2, 3, 2**31, 2**32, 2**32 + 2, 2**62,
                                                     2**62 + 1, 2**63, U64_MAX]))


@st.composite
def _entries(draw, index: int, term: int, _mostly):
    n = draw(st.integers(0, 4))
    out = []
    for i in range(n):
        kind = draw(st.sampled_from(["normal", "normal", "noop", "conf"]))
        data = (draw(st.sampled_from([encode_conf([1, 2, 3], []), encode_conf([1, 2], [3]),
                                      encode_conf([1, 2, 3], [4]), b"v=;l=", b"v=1,1;l=",
                                      b"junk"]))
                if kind == "conf" else draw(st.binary(max_size=8)))
        lo = max(1, term - 1)
        out.append(Entry(draw(_mostly(st.integers(lo, max(lo, term)))),
                         draw(_mostly(st.just(index + 1 + i))), data, kind))
    return tuple(out)


@st.composite
def _messages(draw, extremes: bool = True):
    """Messages a peer could send; with ``extremes``, fields also take huge values."""

    def _mostly(small):
        return st.one_of(small, _ints) if extremes else small

    mtype = draw(st.sampled_from(list(MsgType) + [MsgType.APPEND] * 4 + [MsgType.SNAPSHOT] * 2))
    term = draw(_mostly(st.integers(1, 4)))
    index = draw(_mostly(st.integers(0, 5)))
    snapshot = None
    if draw(st.integers(0, 9)) > (1 if mtype is MsgType.SNAPSHOT else 8):
        snapshot = Snapshot(draw(_mostly(st.integers(1, 9))), draw(_mostly(st.integers(1, 3))),
                            draw(st.sampled_from([(1, 2, 3), (1, 2, 3), (1, 2), (), (1, 1), (0, 1)])),
                            draw(st.sampled_from([Tree().snapshot(), Tree().snapshot(), b"",
                                                  b"garbage"])),
                            draw(st.sampled_from([(), (), (4,), (1,)])))
    return Message(
        mtype, draw(st.sampled_from([2] * 6 + [3, 9, 1, 0])),
        draw(st.sampled_from([1] * 6 + [2, 0])), term,
        log_term=draw(_mostly(st.integers(0, min(term, 3)))), index=index,
        entries=draw(_entries(index, term, _mostly)) if draw(st.booleans()) else (),
        commit=draw(_mostly(st.integers(0, 6))), reject=draw(st.integers(0, 3)) == 0,
        reject_hint=draw(_mostly(st.integers(0, 4))), snapshot=snapshot,
        context=draw(st.sampled_from([b"", b"", b"transfer", b"\0" * 8, b"x" * 65])))


def _encodable(m: Message) -> bytes | None:
    try:
        return encode_message(m)
    except (ValueError, TypeError):
        return None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_messages(), _messages(extremes=False)), st.data())
def test_any_well_encoded_message_is_dropped_untouched_or_handled_safely(m, data):
    payload = _encodable(m)
    if payload is None:
        return
    if data.draw(st.booleans()):  # damage it: flip a byte, or cut it short
        cut = data.draw(st.integers(0, len(payload)))
        if data.draw(st.booleans()) and cut < len(payload):
            payload = payload[:cut] + bytes([payload[cut] ^ data.draw(st.integers(1, 255))]) \
                + payload[cut + 1:]
        else:
            payload = payload[:cut]
    _check_delivery(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_reach_the_raft_core(raw):
    assert _check_delivery(raw) is not None or len(raw) >= 60


_anything = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=3),
                      st.binary(max_size=3), _ints, st.integers(-3, -1), st.just(2),
                      st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({
    "type": st.one_of(st.sampled_from(list(MsgType)), _anything),
    "frm": st.one_of(st.just(2), _anything), "to": st.one_of(st.just(1), _anything),
    "term": st.one_of(st.just(2), _anything), "log_term": st.one_of(st.just(2), _anything),
    "index": st.one_of(st.just(3), _anything), "entries": st.one_of(st.just(()), _anything),
    "commit": st.one_of(st.just(3), _anything), "reject": st.one_of(st.just(False), _anything),
    "reject_hint": st.one_of(st.just(0), _anything),
    "snapshot": st.one_of(st.none(), _anything), "context": st.one_of(st.just(b""), _anything),
}))
def test_fields_of_any_type_are_refused_before_the_raft_core(fields):
    """Fields the codec would never produce (wrong types, negatives, floats, bools for ints):
    the checks refuse them, or they were valid after all and the step is safe."""
    node, storage = _follower()
    before = _state(node)
    m = Message(**fields)
    try:
        G.check_message(m, peer_id=2, self_id=1, members=MEMBERS, term=node.term)
    except G.PeerMessageRejected:
        assert _state(node) == before
        return
    node.step(m)
    _persist(node, storage)


@pytest.mark.parametrize("payload", [None, 7, {"type": 7}, "text", [b"x"], bytearray(b"\x02")])
def test_payloads_that_are_not_bytes_are_dropped(payload):
    node, _ = _follower()
    assert G.deliver(node, payload, peer_id=2, members=MEMBERS) == "malformed"


# ------------------------------------------------------------------ the named cases


def _deliver(m: Message, node=None, peer_id=2):
    node = node or _follower()[0]
    before = _state(node)
    reason = G.deliver(node, encode_message(m), peer_id=peer_id, members=MEMBERS,
                       validate_snapshot=Tree.restore)
    if reason is not None:
        assert _state(node) == before
    return reason, node


def test_a_heartbeat_with_term_2_64_minus_1_is_not_adopted():
    reason, node = _deliver(Message(MsgType.HEARTBEAT, 2, 1, U64_MAX))
    assert reason == "term_out_of_range" and node.term == 2


def test_a_term_far_ahead_is_refused_and_one_near_is_adopted():
    assert _deliver(Message(MsgType.HEARTBEAT, 2, 1, 2 + G.TERM_AHEAD_MAX + 1))[0] == \
        "term_out_of_range"
    reason, node = _deliver(Message(MsgType.HEARTBEAT, 2, 1, 7))
    assert reason is None and node.term == 7


def test_frm_must_be_the_authenticated_peer_and_a_member():
    m = Message(MsgType.APPEND, 3, 1, 2, log_term=2, index=3,
                entries=(Entry(2, 4, b"forged"),), commit=4)
    reason, node = _deliver(m, peer_id=2)  # authenticated as 2, claims to be 3
    assert reason == "impersonation" and node.log.last_index() == 3
    assert _deliver(Message(MsgType.HEARTBEAT, 9, 1, 2), peer_id=9)[0] == "not_member"
    assert _deliver(Message(MsgType.HEARTBEAT, 2, 3, 2))[0] == "misdirected"


def test_entries_must_follow_the_previous_index_with_sane_terms():
    base = dict(log_term=2, index=3, commit=3)
    for ents, why in [((Entry(2, 5, b"x"),), "bad_shape"),          # a gap
                      ((Entry(3, 4, b"x"),), "bad_shape"),          # beyond the message term
                      ((Entry(1, 4, b"x"),), "bad_shape"),          # older than log_term
                      ((Entry(2, 4, b"v=1,1;l=", "conf"),), "bad_conf")]:
        assert _deliver(Message(MsgType.APPEND, 2, 1, 2, entries=ents, **base))[0] == why
    assert _deliver(Message(MsgType.HEARTBEAT, 2, 1, 2, entries=(Entry(2, 1, b""),)))[0] == "bad_shape"


def test_a_snapshot_that_does_not_restore_is_refused():
    snap = Snapshot(9, 2, (1, 2, 3), b"not a tree")
    assert _deliver(Message(MsgType.SNAPSHOT, 2, 1, 2, snapshot=snap))[0] == "bad_snapshot"
    good = Snapshot(9, 2, (1, 2, 3), Tree().snapshot())
    reason, node = _deliver(Message(MsgType.SNAPSHOT, 2, 1, 2, snapshot=good))
    assert reason is None and node.log.committed == 9

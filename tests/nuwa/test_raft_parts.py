"""Unit tests of the Raft core's parts that stand on their own: read-index rounds
(``nuwa.core.raft_read``), membership-change decisions (``nuwa.core.raft_conf``) and the
message sanity gate (``nuwa.core.raft_types.well_formed``). Table-driven; the whole node is
tested in ``test_raft.py`` and the simulators."""

from __future__ import annotations

import pytest

from nuwa.core.raft_conf import changed_config, check_conf_request, latest_config
from nuwa.core.raft_read import ReadAnswer, ReadRounds
from nuwa.core.raft_types import (CONF_MEMBERS_MAX, ConfChangeRefused, Entry, Message, MsgType,
                                  ProposalDropped, Snapshot, encode_conf, well_formed)

# ------------------------------------------------------------------ read rounds


def test_a_round_answers_once_a_quorum_of_voters_acknowledged_it():
    r = ReadRounds(pending_reads_max=10)
    ctx = r.start_round(7, leader=1, requester=1, context=b"a")
    rid = r.round_of(ctx)
    assert r.ack(rid, 9, voters=(1, 2, 3), quorum=2) == []  # 9 is no voter: not counted
    assert r.ack(rid, 2, voters=(1, 2, 3), quorum=2) == [ReadAnswer(1, 7, b"a")]
    assert len(r) == 0
    assert r.ack(rid, 3, voters=(1, 2, 3), quorum=2) == []  # late ack of a finished round


def test_a_later_round_confirms_every_earlier_one_in_order():
    r = ReadRounds(pending_reads_max=10)
    r.start_round(5, 1, 1, b"first")
    r.start_round(6, 1, 2, b"second")
    third = r.round_of(r.start_round(6, 1, 1, b"third"))
    fourth = r.start_round(9, 1, 1, b"fourth")
    assert r.latest_round_context() == fourth  # a periodic heartbeat carries the newest
    got = r.ack(third, 3, (1, 2, 3), 2)
    assert [a.context for a in got] == [b"first", b"second", b"third"]
    assert len(r) == 1  # the fourth still waits


def test_pending_reads_are_bounded_and_clear_empties_them():
    r = ReadRounds(pending_reads_max=2)
    r.wait_for_commit(1, b"x")
    r.start_round(1, 1, 1, b"y")
    with pytest.raises(ProposalDropped):
        r.check_room()
    assert r.take_waiting_for_commit() == [(1, b"x")]
    r.check_room()
    r.clear()
    assert len(r) == 0 and r.latest_round_context() == b""
    with pytest.raises(ValueError):
        ReadRounds(pending_reads_max=0)


def test_a_smaller_configuration_confirms_rounds_its_quorum_already_acknowledged():
    r = ReadRounds(pending_reads_max=10)
    rid = r.round_of(r.start_round(4, 1, 1, b"a"))
    r.ack(rid, 2, voters=(1, 2, 3, 4, 5), quorum=3)  # 2 of 5: not yet
    assert len(r) == 1
    assert r.recount(1, voters=(1, 2, 3), quorum=2) == [ReadAnswer(1, 4, b"a")]


@pytest.mark.parametrize("context, want", [(b"", None), (b"abc", None),
                                           ((5).to_bytes(8, "big"), 5)])
def test_round_of_reads_only_round_contexts(context, want):
    assert ReadRounds.round_of(context) == want

# ------------------------------------------------------------------ membership changes


@pytest.mark.parametrize("voters, learners, op, member, want", [
    ((1, 2, 3), (), "add_learner", 4, ({1, 2, 3}, {4})),
    ((1, 2, 3), (4,), "promote", 4, ({1, 2, 3, 4}, set())),
    ((1, 2, 3), (4,), "remove", 3, ({1, 2}, {4})),
    ((1, 2, 3), (4,), "remove", 4, ({1, 2, 3}, set())),
])
def test_valid_changes_make_the_expected_configuration(voters, learners, op, member, want):
    assert changed_config(voters, learners, op, member, leader=1) == want


@pytest.mark.parametrize("voters, learners, op, member, why", [
    ((1, 2, 3), (), "grow", 4, "unknown membership change"),
    ((1, 2, 3), (), "add_learner", 0, "replica id >= 1"),
    ((1, 2, 3), (), "add_learner", "4", "replica id >= 1"),
    ((1, 2, 3), (), "add_learner", 2, "already a member"),
    ((1, 2, 3), (), "promote", 4, "not a learner"),
    ((1, 2, 3), (), "remove", 9, "not a member"),
    ((1, 2, 3), (), "remove", 1, "cannot remove itself"),
    ((2,), (1,), "remove", 2, "last voter"),
    (tuple(range(1, CONF_MEMBERS_MAX + 1)), (), "add_learner", 999, "CONF_MEMBERS_MAX"),
])
def test_invalid_changes_are_refused_with_the_reason(voters, learners, op, member, why):
    with pytest.raises(ConfChangeRefused, match=why):
        changed_config(voters, learners, op, member, leader=1)


def test_the_request_check_refuses_before_any_state_is_looked_at():
    check_conf_request("promote", 3)
    with pytest.raises(ConfChangeRefused):
        check_conf_request("promote", -1)


def test_the_latest_conf_entry_wins_committed_or_not():
    entries = [Entry(1, 1, b"", "noop"), Entry(1, 2, encode_conf({1, 2, 3}, {4}), "conf"),
               Entry(2, 3, b"x"), Entry(2, 4, encode_conf({1, 2, 3, 4}, ()), "conf"),
               Entry(2, 5, b"y")]
    assert latest_config((1, 2, 3), (), entries) == ((1, 2, 3, 4), (), 4, 2)
    assert latest_config((1, 2, 3), (), entries[:3]) == ((1, 2, 3), (4,), 2, 1)
    assert latest_config((1,), (), []) == ((1,), (), 0, 0)

# ------------------------------------------------------------------ message sanity


def _m(**kw) -> Message:
    base = dict(type=MsgType.HEARTBEAT, frm=2, to=1, term=3)
    base.update(kw)
    return Message(**base)


@pytest.mark.parametrize("m, ok", [
    (_m(), True),
    (_m(to=3), False),                        # not for us
    (_m(frm=1), False),                       # from ourselves
    (_m(frm=0), False),
    (_m(term=-1), False),
    (_m(commit=-1), False),
    (_m(type=MsgType.APPEND, index=4, log_term=2,
        entries=(Entry(3, 5, b""), Entry(3, 6, b""))), True),
    (_m(type=MsgType.APPEND, index=4, entries=(Entry(3, 6, b""),)), False),   # a gap
    (_m(type=MsgType.APPEND, index=4, entries=(Entry(4, 5, b""),)), False),   # newer term
    (_m(type=MsgType.APPEND, index=4, entries=(Entry(3, 5, b"", "odd"),)), False),
    (_m(type=MsgType.APPEND, index=4, log_term=3, entries=(Entry(2, 5, b""),)), False),
    (_m(type=MsgType.SNAPSHOT), False),
    (_m(type=MsgType.SNAPSHOT, snapshot=Snapshot(3, 1, (1, 2), b"")), True),
    ("not a message", False),
])
def test_well_formed(m, ok):
    assert well_formed(m, 1) is ok

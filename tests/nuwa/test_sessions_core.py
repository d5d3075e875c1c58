"""Unit tests of session expiry's policy (``nuwa.core.sessions.SessionTimers``): deadlines
in the leader's ticks, who expires when, and what a new leader, a refused close and a late
keep-alive do. Table-driven, plus a Hypothesis property: a session is never due sooner
than its TTL after it was opened, renewed, or its leader took over."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nuwa.core.sessions import SessionTimers

TICK_S = 0.02


def leading(sessions=(), now=0) -> SessionTimers:
    t = SessionTimers(TICK_S)
    t.lead(sessions, now)
    return t


@pytest.mark.parametrize("ttl_s, now, want", [
    (1.0, 0, 51),      # 50 ticks of 20 ms, and one more: a tick only ever comes late
    (1.0, 100, 151),
    (0.03, 0, 3),      # a part of a tick counts as a whole one
    (0.02, 7, 9),
])
def test_a_deadline_is_at_least_the_ttl_of_ticks_away(ttl_s, now, want):
    assert SessionTimers(TICK_S).deadline(ttl_s, now) == want


def test_tick_s_must_be_positive():
    with pytest.raises(ValueError):
        SessionTimers(0)


def test_only_a_leader_has_due_sessions():
    t = SessionTimers(TICK_S)
    t.opened(7, 1.0, now=0)  # followers follow the log too
    assert t.due(1000) == []
    t.lead([(7, 1.0)], now=1000)
    assert t.due(1051) == [] and t.due(1052) == [(7, 1051)]
    t.follow()
    assert t.due(5000) == []


def test_a_new_leader_gives_every_session_a_full_ttl():
    t = SessionTimers(TICK_S)
    t.opened(1, 1.0, now=0)   # about to expire under the old leader...
    t.lead([(1, 1.0), (2, 2.0)], now=50)
    assert t.deadlines == {1: 101, 2: 151}  # ...but the new one starts afresh
    assert t.due(101) == [] and t.due(102) == [(1, 101)]


def test_the_log_opens_and_closes_timers():
    t = leading()
    t.opened(3, 1.0, now=10)
    assert t.deadlines == {3: 61}
    t.closed(3)
    t.closed(3)  # closing twice (expired, and closed by its client) is harmless
    assert len(t) == 0


@pytest.mark.parametrize("now, close_proposed, want_ok, want_deadline", [
    (30, False, True, 30 + 51),    # in time: renewed to a full TTL from now
    (61, False, True, 61 + 51),    # at the deadline: still in time
    (62, False, False, 61),        # after it: expired (its close is about to be proposed)
    (30, True, False, None),       # its close is proposed: expired, whatever the time
])
def test_a_keep_alive_renews_unless_the_session_has_expired(now, close_proposed, want_ok,
                                                            want_deadline):
    t = leading([(5, 1.0)], now=10)  # deadline 61
    if close_proposed:
        t.closing(5)
    assert t.keep_alive(5, 1.0, now) is want_ok
    assert t.deadlines.get(5) == want_deadline


def test_before_its_first_tick_a_new_leader_only_renews():
    t = SessionTimers(TICK_S)  # a leader whose timers do not run yet
    assert t.keep_alive(9, 1.0, now=500) is True
    assert t.deadlines == {9: 551}


def test_a_refused_close_is_due_again_while_leading():
    t = leading([(4, 1.0)], now=0)
    [(sid, deadline)] = t.due(60)
    t.closing(sid)
    assert t.due(61) == []
    t.close_refused(sid, deadline)       # Raft appended nothing: try again
    assert t.due(61) == [(4, 51)]
    t.closing(4)
    t.follow()
    t.close_refused(4, 51)               # refused after we lost leadership: not ours
    assert 4 not in t.deadlines


def test_a_refused_close_does_not_undo_a_renewal_meanwhile():
    t = leading([(4, 1.0)], now=0)
    t.closing(4)
    t.opened(4, 1.0, now=70)  # e.g. re-applied after a snapshot: the log is the truth
    t.close_refused(4, 51)
    assert t.deadlines[4] == 121


@settings(max_examples=300, deadline=None)
@given(ttl_ticks=st.integers(1, 200), steps=st.lists(st.tuples(
    st.sampled_from(["tick", "keepalive", "lead", "follow"]), st.integers(1, 50)), max_size=60))
def test_no_session_is_due_sooner_than_its_ttl_after_its_last_renewal(ttl_ticks, steps):
    """Whatever the interleaving of ticks, keep-alives and leader changes, a session comes
    due only more than ttl_s after the last time it was opened, renewed or handed a full TTL
    by a new leader (the promise to its holder)."""
    ttl_s = ttl_ticks * TICK_S
    t = SessionTimers(TICK_S)
    now = 0
    t.opened(1, ttl_s, now)
    renewed = now
    for what, n in steps:
        if what == "tick":
            now += n
        elif what == "keepalive":
            if t.keep_alive(1, ttl_s, now):
                renewed = now
        elif what == "lead" and not t.leading:
            t.lead([(1, ttl_s)], now)
            renewed = now
        elif what == "follow":
            t.follow()
        for sid, _ in t.due(now):
            assert (now - renewed) * TICK_S > ttl_s, (now, renewed)
            assert now - renewed > math.ceil(ttl_ticks)
            t.closing(sid)
            return

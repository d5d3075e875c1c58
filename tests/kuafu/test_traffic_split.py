"""Kuafu's traffic split and its no-resend rule (kuafu.core.routing), pure: endpoints of a
canary declare their share of the calls and get it; a call that may have run is never sent
again unless it is idempotent."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kuafu.core import routing as R
from kuafu.errors import BadRequest


def ep(name, version="1", share=None, inflight=0) -> R.Endpoint:
    e = R.Endpoint(name, "svc", "p", "tcp://h:1", version=version, share=share)
    e.inflight = inflight
    return e


def shares(cands, n=20_000, seed=7) -> dict:
    rng = random.Random(seed)
    out: dict = {}
    for _ in range(n):
        e = R.choose(cands, rng)
        out[e.version] = out.get(e.version, 0) + 1
    return {k: v / n for k, v in out.items()}


# ------------------------------------------------------------------ weighted routing

@pytest.mark.parametrize("percent", [1.0, 10.0, 33.3, 90.0])
def test_a_canary_gets_its_share_however_many_replicas_each_side_has(percent):
    cands = [ep(f"s{i}") for i in range(5)] + [ep("c", "2", percent)]
    assert shares(cands)["2"] == pytest.approx(percent / 100, abs=0.015)
    cands = [ep("s")] + [ep(f"c{i}", "2", percent) for i in range(4)]
    assert shares(cands)["2"] == pytest.approx(percent / 100, abs=0.015)


def test_without_shares_the_choice_is_the_old_one_draw_for_draw():
    cands = [ep(f"e{i}", inflight=i % 3) for i in range(6)]
    a, b = random.Random(3), random.Random(3)
    for _ in range(200):
        x, y = b.sample(cands, 2)
        assert R.choose(cands, a) is (y if y.inflight < x.inflight else x)


def test_when_the_canary_is_out_of_reach_the_stable_version_takes_every_call():
    assert shares([ep("s1"), ep("s2")]) == {"1": 1.0}
    # ...and the other way round: only the canary left (the stable ones all tried).
    assert shares([ep("c1", "2", 10.0), ep("c2", "2", 10.0)]) == {"2": 1.0}


def test_two_declared_groups_and_the_rest():
    cands = [ep("s")] + [ep("a", "2", 10.0), ep("b", "3", 30.0)]
    got = shares(cands)
    assert got["2"] == pytest.approx(0.10, abs=0.015)
    assert got["3"] == pytest.approx(0.30, abs=0.015)
    assert got["1"] == pytest.approx(0.60, abs=0.015)


def test_shares_over_100_leave_nothing_to_the_rest_and_split_by_weight():
    cands = [ep("s")] + [ep("a", "2", 60.0), ep("b", "3", 60.0)]
    got = shares(cands)
    assert "1" not in got and got["2"] == pytest.approx(0.5, abs=0.02)


def test_power_of_two_choices_still_works_inside_a_group():
    cands = [ep("s1", inflight=9), ep("s2", inflight=0), ep("c", "2", 10.0)]
    rng = random.Random(1)
    picks = [R.choose(cands, rng).name for _ in range(2000)]
    assert "s1" not in picks  # the busy one always loses to its idle peer


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["1", "2", "3"]),
                          st.one_of(st.none(), st.floats(0.1, 99.9))), min_size=1, max_size=8),
       st.integers(0, 2**32))
def test_choose_always_returns_a_candidate(spec, seed):
    cands = [ep(f"e{i}", v, s) for i, (v, s) in enumerate(spec)]
    rng = random.Random(seed)
    for _ in range(20):
        assert R.choose(cands, rng) in cands


# ------------------------------------------------------------------ declared shares

@pytest.mark.parametrize("value,expected", [
    (None, None), ("", None), ("10", 10.0), (10, 10.0), ("0.5", 0.5), (99.9, 99.9),
])
def test_shares(value, expected):
    assert R.check_share(value) == expected


@pytest.mark.parametrize("value", ["0", 0, "100", 100, -1, "nan", "inf", float("nan"), True,
                                   "ten", [10], {"a": 1}])
def test_bad_shares_are_refused(value):
    with pytest.raises(BadRequest, match="share"):
        R.check_share(value)


@pytest.mark.parametrize("value", ["a b", "x" * (R.ENDPOINT_VERSION_CHARS_MAX + 1), 7, "v/1"])
def test_bad_versions_are_refused(value):
    with pytest.raises(BadRequest, match="version"):
        R.check_version(value)


def test_a_published_canary_record_reads_back_with_its_share():
    e = R.Endpoint("p1~3", "svc", "p1", "tcp://h:1", None, ["get"], "n1", "bob", "2", 10.0)
    back = R.endpoint_from_record("svc", "p1~3", e.record("p1", "n1"), "p9")
    assert (back.version, back.share) == ("2", 10.0)
    # An old proxy's record (no version, no share) is an ordinary endpoint.
    old = json.dumps({"proxy": "tcp://h:1", "proxy_id": "p1"}).encode()
    assert (R.endpoint_from_record("svc", "x", old, "p9").share) is None


@pytest.mark.parametrize("bad", [{"share": "lots"}, {"share": 250}, {"version": "a b"}])
def test_a_damaged_share_in_a_record_drops_the_endpoint(bad):
    rec = json.dumps({"proxy": "tcp://h:1", "proxy_id": "p1", **bad}).encode()
    assert R.endpoint_from_record("svc", "x", rec, "p9") is None


# ------------------------------------------------------------------ the no-resend rule

@pytest.mark.parametrize("sent,idem,retryable,answered,not_run,expected", [
    (False, False, True, False, False, True),    # never written: goes elsewhere
    (True, False, True, False, True, True),      # the server said it did not run it
    (True, False, True, False, False, False),    # may have run, not idempotent: NEVER again
    (True, True, True, False, False, True),      # may have run, idempotent: resent
    (True, True, True, True, False, False),      # a reply began: never
    (False, True, True, True, False, False),
    (False, False, False, False, False, False),  # in pieces, not kept whole
    (True, True, False, False, True, False),
])
def test_may_resend(sent, idem, retryable, answered, not_run, expected):
    assert R.may_resend(sent=sent, idempotent=idem, retryable=retryable, answered=answered,
                        not_run=not_run) is expected


@settings(max_examples=200, deadline=None)
@given(st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_a_non_idempotent_call_that_may_have_run_is_never_resent(sent, retryable, answered,
                                                                  not_run):
    may_have_run = sent and not not_run
    if may_have_run:
        assert not R.may_resend(sent=sent, idempotent=False, retryable=retryable,
                                answered=answered, not_run=not_run)


def test_backups_are_only_for_idempotent_calls():
    assert R.backup_delay({"ms": 5}, False, True, lambda p: 0.1) is None
    assert R.backup_delay({"ms": 5}, True, True, lambda p: None) == 0.005


# ------------------------------------------------------------------ who says a call is idempotent

@pytest.mark.parametrize("method,caller,expected", [
    ("get", False, True),      # declared idempotent: always
    ("get", True, True),
    ("pay", True, False),      # declared never: not even when the caller says so
    ("pay", False, False),
    ("other", False, False),   # undeclared: the safe default...
    ("other", True, True),     # ...unless the caller says so
])
def test_the_servers_declaration_wins(method, caller, expected):
    assert R.call_idempotent(method, caller, {"get"}, {"pay"}) is expected


def test_declarations_travel_with_the_endpoint_record():
    e = R.Endpoint("p1~1", "svc", "p1", "tcp://h:1", None, ["get"], "n1", None, never=["pay"])
    back = R.endpoint_from_record("svc", "p1~1", e.record("p1", "n1"), "p9")
    assert back.idem == {"get"} and back.never == {"pay"}
    bad = json.dumps({"proxy": "tcp://h:1", "proxy_id": "p1", "never": "pay"}).encode()
    assert R.endpoint_from_record("svc", "x", bad, "p9") is None  # fail closed


def test_the_method_decorator_records_three_states():
    import kuafu
    from kuafu.io.server import Service

    class S:
        @kuafu.method(idempotent=True)
        def get(self, m):
            return m

        @kuafu.method(idempotent=False)
        def pay(self, m):
            return m

        @kuafu.method
        def other(self, m):
            return m

    svc = Service.build("s", S(), 1, 0)
    assert svc.idempotent == {"get"} and svc.never == {"pay"}
    with pytest.raises(TypeError, match="expected True, False or None"):
        kuafu.method(idempotent="yes")

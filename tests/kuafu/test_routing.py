"""Kuafu's routing decisions (kuafu.core.routing), without sockets, Nuwa or a clock: the
endpoint table that Nuwa watch events build, the choice of an endpoint with a seeded rng,
who may attach a service name, the bounded miss cache and backup timing."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kuafu.core import routing as R
from kuafu.errors import BadRequest, Overloaded, Unavailable


def record(proxy_id="p2", proxy="tcp://10.0.0.2:7000", **extra) -> bytes:
    return json.dumps({"proxy": proxy, "proxy_id": proxy_id, "node": "n2",
                       "idempotent": ["get"], "owner": "alice", **extra}).encode()


def event(kind: str, path: str, value: bytes | None = None) -> dict:
    return {"type": kind, "path": path, "value": value}


# ------------------------------------------------------------------ service names

@pytest.mark.parametrize("name,ok", [
    ("echo", True), ("a-b_c.d", True), ("x" * R.SERVICE_NAME_CHARS_MAX, True),
    ("", False), (".hidden", False), ("a/b", False), ("a b", False), (None, False), (7, False),
    ("x" * (R.SERVICE_NAME_CHARS_MAX + 1), False), ("../etc", False),
])
def test_service_names(name, ok):
    if ok:
        assert R.check_service_name(name) == name
    else:
        with pytest.raises(BadRequest, match="service name"):
            R.check_service_name(name)


# ------------------------------------------------------------------ the endpoint table

@pytest.mark.parametrize("value,proxy_id,expected", [
    (record(), "p1", "p2"),
    (record(), "p2", None),                       # our own: in the local table
    (b"not json", "p1", None),
    (json.dumps([1, 2]).encode(), "p1", None),
    (record(proxy=""), "p1", None),               # no address to reach it at
])
def test_endpoint_records(value, proxy_id, expected):
    ep = R.endpoint_from_record("svc", "e1", value, proxy_id)
    assert (ep.proxy_id if ep else None) == expected
    if ep:
        assert (ep.address, ep.node, ep.idem, ep.owner) == ("tcp://10.0.0.2:7000", "n2",
                                                             {"get"}, "alice")


def test_a_published_record_reads_back_as_the_same_endpoint():
    ep = R.Endpoint("p1~1", "svc", "p1", "tcp://h:1", object(), ["a", "b"], "n1", "bob")
    back = R.endpoint_from_record("svc", "p1~1", ep.record("p1", "n1"), "other")
    assert (back.name, back.address, back.idem, back.node, back.owner) == \
        ("p1~1", "tcp://h:1", {"a", "b"}, "n1", "bob")


@pytest.mark.parametrize("events,expected", [
    ([event("created", "/services/svc/e1", record())], {"svc": {"e1"}}),
    ([event("created", "/services/svc/", b"")], {}),                       # a directory
    ([event("created", "/services/svc/e1", record()),
      event("deleted", "/services/svc/e1")], {}),
    ([event("created", "/services/svc/e1", record()),
      event("created", "/services/svc/e2", record()),
      event("deleted", "/services/svc/e1")], {"svc": {"e2"}}),
    ([event("deleted", "/services/nope/e1")], {}),
    ([event("created", "/services/svc/e1", record(proxy_id="me"))], {}),   # our own
    ([event("created", "/services/svc/e1", b"garbage")], {}),
    ([event("created", "/services/a/e1", record()),
      event("changed", "/services/b/e2", record())], {"a": {"e1"}, "b": {"e2"}}),
])
def test_watch_events_build_the_remote_table(events, expected):
    t = R.EndpointTable("me")
    for ev in events:
        t.apply(ev)
    assert {s: set(eps) for s, eps in t.remote.items()} == expected


def test_a_changed_endpoint_keeps_its_requests_in_flight():
    t = R.EndpointTable("me")
    t.apply(event("created", "/services/svc/e1", record()))
    t.remote["svc"]["e1"].inflight = 5
    t.apply(event("changed", "/services/svc/e1", record(idempotent=["put"])))
    assert t.remote["svc"]["e1"].inflight == 5 and t.remote["svc"]["e1"].idem == {"put"}


def test_a_lookup_adds_to_what_the_watch_said():
    t = R.EndpointTable("me")
    t.apply(event("created", "/services/svc/e1", record()))
    watched = t.remote["svc"]["e1"]
    t.merge_found("svc", {"e1": R.Endpoint("e1", "svc", "p2", "x"),
                          "e2": R.Endpoint("e2", "svc", "p2", "x")})
    assert t.remote["svc"]["e1"] is watched and set(t.remote["svc"]) == {"e1", "e2"}


def test_local_endpoints_come_and_go():
    t = R.EndpointTable("me")
    a = R.Endpoint("me~1", "svc", "me", "tcp://me:1", conn=object())
    t.add_local(a)
    assert t.by_name == {"me~1": a} and t.all("svc") == [a] and t.known("svc") == 1
    assert t.remove_local("me~1") is a and t.remove_local("me~1") is None
    assert t.local == {} and t.all() == []


@pytest.mark.parametrize("tried,pinned,down,expected", [
    (set(), None, {}, {"me~1", "e2", "e3"}),
    ({"e2"}, None, {}, {"me~1", "e3"}),
    (set(), None, {"tcp://b:1": 11.0}, {"me~1", "e2"}),     # e3's proxy is down until 11
    (set(), None, {"tcp://b:1": 10.0}, {"me~1", "e2", "e3"}),  # down until now: back
    (set(), "me~1", {}, {"me~1"}),                           # another proxy chose ours
    ({"me~1"}, "me~1", {}, set()),
    (set(), "e2", {}, set()),                                # pinned to one not ours
])
def test_candidates(tried, pinned, down, expected):
    t = R.EndpointTable("me")
    t.add_local(R.Endpoint("me~1", "svc", "me", "tcp://me:1", conn=object()))
    t.apply(event("created", "/services/svc/e2", record(proxy="tcp://a:1")))
    t.apply(event("created", "/services/svc/e3", record(proxy="tcp://b:1")))
    got = t.candidates("svc", tried, pinned, down, now=10.0)
    assert {e.name for e in got} == expected


def test_capacity_bounds_refuse_with_overloaded(monkeypatch):
    monkeypatch.setattr(R, "ENDPOINTS_PER_SERVICE_MAX", 2)
    t = R.EndpointTable("me")
    t.check_capacity("svc", 0)
    with pytest.raises(Overloaded, match="ENDPOINTS_PER_CONNECTION_MAX"):
        t.check_capacity("svc", R.ENDPOINTS_PER_CONNECTION_MAX)
    for i in range(2):
        t.add_local(R.Endpoint(f"me~{i}", "svc", "me", "x", conn=object()))
    with pytest.raises(Overloaded, match="ENDPOINTS_PER_SERVICE_MAX"):
        t.check_capacity("svc", 0)
    t.check_capacity("other", 0)


# ------------------------------------------------------------------ choosing

def eps(loads):
    out = []
    for i, n in enumerate(loads):
        e = R.Endpoint(f"e{i}", "svc", "p", "x")
        e.inflight = n
        out.append(e)
    return out


def test_choose_nothing_or_the_only_one():
    assert R.choose([], random.Random(1)) is None
    (one,) = eps([9])
    assert R.choose([one], random.Random(1)) is one


def test_the_same_seed_makes_the_same_choices():
    rng1, rng2, pool = random.Random(42), random.Random(42), eps([0] * 8)
    assert [R.choose(pool, rng1).name for _ in range(50)] == \
        [R.choose(pool, rng2).name for _ in range(50)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=2, max_size=12), st.integers(0, 2**32))
def test_two_choices_never_pick_the_busiest_of_a_spread(loads, seed):
    """The choice is the less loaded of two distinct candidates: never strictly busier than
    every other endpoint, unless all are equally loaded."""
    pool = eps(loads)
    got = R.choose(pool, random.Random(seed))
    assert got in pool
    others = [e.inflight for e in pool if e is not got]
    assert got.inflight <= max(others)


def test_load_spreads_over_idle_endpoints():
    pool, rng = eps([0, 0, 0, 0]), random.Random(3)
    seen = {R.choose(pool, rng).name for _ in range(200)}
    assert seen == {"e0", "e1", "e2", "e3"}


def test_an_idle_endpoint_wins_against_a_busy_one():
    pool, rng = eps([10, 0]), random.Random(5)
    assert {R.choose(pool, rng).name for _ in range(50)} == {"e1"}


@pytest.mark.parametrize("pinned,tried,known,expected", [
    ("p~1", 0, 0, "endpoint 'p~1' of 'svc' is not on this proxy any more"),
    (None, 3, 3, "all 3 endpoints of 'svc' tried failed"),
    (None, 0, 2, "no reachable endpoint of 'svc' (2 known)"),
    (None, 0, 0, "no endpoint of service 'svc' is registered"),
])
def test_no_endpoint_reasons(pinned, tried, known, expected):
    assert R.no_endpoint_reason("svc", pinned, tried, known) == expected


# ------------------------------------------------------------------ misses and lookups

def test_a_miss_lasts_its_ttl():
    m = R.MissCache(ttl_s=0.5)
    m.note("svc", now=10.0)
    assert m.missing("svc", 10.4) and not m.missing("svc", 10.5)
    m.sweep(10.49)
    assert len(m) == 1
    m.sweep(10.5)
    assert len(m) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text("abcdefgh", min_size=1, max_size=3), max_size=200),
       st.integers(1, 20))
def test_the_miss_cache_is_bounded_and_forgets_the_oldest(names, kept_max):
    m = R.MissCache(kept_max=kept_max)
    evicted = 0
    for i, n in enumerate(names):
        evicted += m.note(n, now=float(i))
        assert len(m) <= kept_max
    distinct = list(dict.fromkeys(reversed(names)))  # most recent first
    assert set(m.until) == set(distinct[:kept_max])
    assert evicted >= len(set(names)) - kept_max


def test_the_miss_bound_is_read_when_a_miss_is_noted(monkeypatch):
    m = R.MissCache()
    monkeypatch.setattr(R, "MISSES_KEPT_MAX", 2)
    assert [m.note(s, 0.0) for s in "abc"] == [0, 0, 1]
    assert list(m.until) == ["b", "c"]


@pytest.mark.parametrize("tried,pinned,known,missed,looked_up,expected", [
    (False, None, False, False, False, True),
    (True, None, False, False, False, False),     # it found endpoints before, and they failed
    (False, "p~1", False, False, False, False),   # another proxy chose an endpoint of ours
    (False, None, True, False, False, False),     # the watch knows endpoints
    (False, None, False, True, False, False),     # Nuwa said none a moment ago
    (False, None, False, False, True, False),     # asked once already
])
def test_when_a_call_asks_nuwa(tried, pinned, known, missed, looked_up, expected):
    t, m = R.EndpointTable("me"), R.MissCache()
    if known:
        t.apply(event("created", "/services/svc/e1", record()))
    if missed:
        m.note("svc", now=10.0)
    assert R.may_look_up(t, m, "svc", tried=tried, pinned=pinned, looked_up=looked_up,
                         now=10.1) is expected


# ------------------------------------------------------------------ backups

def test_latencies_are_bounded_per_service_and_in_services():
    lat = R.Latencies(services_max=2, kept=5)
    for i in range(10):
        lat.record("a", i / 100)
    assert len(lat.by_service["a"]) == 5
    lat.record("b", 1.0)
    lat.record("a", 0.5)  # a is now the most recently used
    lat.record("c", 1.0)
    assert set(lat.by_service) == {"a", "c"}


def test_a_percentile_needs_enough_samples():
    lat = R.Latencies()
    for i in range(R.BACKUP_SAMPLES_MIN - 1):
        lat.record("a", 0.01 * i)
    assert lat.percentile("a", 50) is None and lat.percentile("nope", 50) is None
    lat.record("a", 1.0)
    assert lat.percentile("a", 50) == pytest.approx(0.10)
    assert lat.percentile("a", 99.9) == 1.0


@pytest.mark.parametrize("bk,idem,retryable,p95,expected", [
    (None, True, True, 0.2, None),
    ({"ms": 20}, False, True, 0.2, None),          # not idempotent: never twice
    ({"ms": 20}, True, False, 0.2, None),          # in pieces: not kept whole
    ({"ms": 20}, True, True, None, 0.02),
    ({"p": 95}, True, True, None, None),           # too few samples yet
    ({"p": 95}, True, True, 0.2, 0.2),
    ({"ms": 500, "p": 95}, True, True, 0.2, 0.5),  # the later of the two
    ({"ms": 5, "p": 95}, True, True, 0.2, 0.2),
    ({"ms": -1}, True, True, 0.2, None),
    ({"ms": True}, True, True, 0.2, None),
    ({"ms": 4e6}, True, True, 0.2, None),
    ({"p": 100}, True, True, 0.2, None),
    ({"p": 0}, True, True, 0.2, None),
    ("p95", True, True, 0.2, None),
])
def test_backup_delay(bk, idem, retryable, p95, expected):
    assert R.backup_delay(bk, idem, retryable, lambda p: p95) == expected


# ------------------------------------------------------------------ who owns a name

@dataclass
class Who:
    user: str
    admin: bool = False
    scope: dict | None = None


ALICE, ADMIN = Who("alice"), Who("root", admin=True)
ALICE_SVC = Who("alice", scope={"kind": "service", "id": "svc"})
ALICE_OTHER = Who("alice", scope={"kind": "service", "id": "other"})
ADMIN_SCOPED = Who("root", admin=True, scope={"kind": "service", "id": "other"})


@pytest.mark.parametrize("who,owner,expected", [
    (ADMIN, "alice", "alice"),
    (ADMIN, None, "root"),                 # the owner record is being written
    (ALICE_SVC, "alice", "alice"),         # the service's replicas
    (ALICE_SVC, None, "alice"),
    (ALICE, "alice", None),                # a login token of the owner: not a replica
    (ALICE_SVC, "bob", None),              # a token scoped to it, of someone else
    (ALICE_OTHER, "alice", None),
    (ADMIN_SCOPED, "alice", None),         # a scoped token acts only for its scope
])
def test_a_registered_service_is_served_by_its_replicas_and_administrators(who, owner,
                                                                           expected):
    got = R.registered_owner(who, "svc", {"owner": owner})
    if expected is None:
        assert isinstance(got, R.Refusal) and "registered Fuxi service" in got.why
    else:
        assert got == expected


@pytest.mark.parametrize("who,refused", [
    (ALICE, False), (ADMIN, False), (ALICE_SVC, False), (ALICE_OTHER, True),
    (Who("j", scope={"kind": "job", "id": "7"}), False),
])
def test_a_service_token_attaches_only_its_service(who, refused):
    assert (R.scope_refusal(who, "svc") is not None) is refused


@pytest.mark.parametrize("who,policy,manage,refused", [
    (ALICE, "signed-in", False, False),
    (ALICE, "granted", False, True),
    (ALICE, "granted", True, False),
    (ADMIN, "granted", False, False),
    (ADMIN_SCOPED, "granted", False, True),
])
def test_claiming_a_free_name(who, policy, manage, refused):
    asked = []

    def may_manage():
        asked.append(1)
        return manage
    refusal = R.claim_refusal(who, "svc", policy, may_manage)
    assert (refusal is not None) is refused
    if refused:
        assert "claim_policy='granted'" in refusal.why
    if policy == "signed-in" or who is ADMIN:
        assert asked == []  # the ACL is asked only when it decides


@pytest.mark.parametrize("who,claim,serves", [
    (ALICE, "alice", True), (ADMIN, "alice", True), (Who("bob"), "alice", False),
    (ADMIN_SCOPED, "alice", False),
])
def test_a_claimed_name(who, claim, serves):
    assert R.claimer_may_serve(who, "svc", claim) is serves
    assert "claimed by 'alice'" in R.claimed_refusal("alice").why


@pytest.mark.parametrize("who,refused", [
    (ALICE, False), (ADMIN, False), (Who("bob"), True), (ADMIN_SCOPED, True),
])
def test_releasing_a_claim(who, refused):
    assert (R.release_refusal(who, "svc", "alice") is not None) is refused


@pytest.mark.parametrize("value,expected", [
    (b'{"user": "alice", "groups": []}', "alice"), (b"", None), (b"[1]", None),
    (b'{"groups": []}', None),
])
def test_owner_records(value, expected):
    assert R.owner_from_record(value) == expected


@pytest.mark.parametrize("value", [b"", b"[]", b'{"user": 3}', b"{"])
def test_a_damaged_claim_record_fails_closed(value):
    with pytest.raises(Unavailable, match="damaged"):
        R.claimer_from_record("svc", value, "/kuafu/claims/")
    assert R.claimer_from_record("svc", b'{"user": "alice"}', "/c/") == "alice"

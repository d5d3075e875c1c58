"""Hot replicas in Kuafu routing (``kuafu.core.hotroute``, the ``avoid`` hook of
``routing.choose``), pure and through a live in-process proxy (no Ray)."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time

import pytest

import kuafu
from base import events
from kuafu.core import hotroute, routing
from kuafu.core.hotroute import HOT_CHECK_S, HOT_SAMPLES_MIN, HotEndpoints
from kuafu.io.hotspots import HOT_CHANGES
from kuafu.io.loops import LoopThread
from kuafu.io.proxy import ProxyCore
from tests.kuafu.services import Svc


def _ep(name):
    return routing.Endpoint(name, "svc", "p", "unix:///x")


def test_choose_leaves_out_avoided_endpoints_but_never_all():
    a, b, c = _ep("a"), _ep("b"), _ep("c")
    rng = random.Random(1)
    assert {routing.choose([a, b, c], rng, frozenset({"c"})).name for _ in range(200)} == {"a", "b"}
    assert routing.choose([c], rng, frozenset({"c"})) is c  # only the hot one: still served
    assert routing.choose([], rng, frozenset({"c"})) is None
    assert {routing.choose([a, b, c], rng).name for _ in range(200)} == {"a", "b", "c"}


def _feed(h: HotEndpoints, svc: str, lat: dict, n: int = HOT_SAMPLES_MIN) -> None:
    for _ in range(n):
        for ep, s in lat.items():
            h.record(svc, ep, s)


def test_flagged_after_enough_samples_then_cleared_as_it_recovers():
    h = HotEndpoints()
    _feed(h, "svc", {"a": 0.002, "b": 0.003, "slow": 0.2}, HOT_SAMPLES_MIN - 1)
    assert h.judge("svc", 0.0) == frozenset()  # too few replies yet
    _feed(h, "svc", {"a": 0.002, "b": 0.003, "slow": 0.2}, 1)
    assert h.judge("svc", 0.1) == frozenset()  # judged again only after HOT_CHECK_S
    assert h.judge("svc", HOT_CHECK_S) == {"slow"}
    [c] = h.changes()
    assert c["change"] == "flagged" and c["endpoint"] == "slow" and c["latency_s"] > 0.1
    rng = random.Random(7)
    avoided = sum(bool(h.avoid("svc", HOT_CHECK_S, rng)) for _ in range(1000))
    assert 900 < avoided < 1000  # the probe share still reaches it
    _feed(h, "svc", {"a": 0.002, "b": 0.003, "slow": 0.003}, 30)
    assert h.judge("svc", 2 * HOT_CHECK_S) == frozenset()
    assert [c["change"] for c in h.changes()] == ["cleared"]
    assert h.snapshot()["svc"]["slow"]["hot"] is False


def test_gone_endpoints_are_forgotten_and_garbage_ignored():
    h = HotEndpoints()
    _feed(h, "svc", {"a": 0.002, "b": 0.002, "slow": 0.2})
    assert h.judge("svc", 0.0) == {"slow"}
    h.record("svc", "a", float("nan"))
    h.record("svc", "a", -1.0)
    assert h.snapshot()["svc"]["a"]["samples"] == HOT_SAMPLES_MIN
    assert h.judge("svc", 1.0, lambda: {"a", "b"}) == frozenset()  # slow left: not hot
    assert "slow" not in h.snapshot()["svc"]
    assert h.judge("other", 0.0) == frozenset()


def test_services_tracked_are_bounded():
    h = HotEndpoints(services_max=3)
    for i in range(10):
        h.record(f"s{i}", "a", 0.01)
    assert list(h.services) == ["s7", "s8", "s9"]


@pytest.fixture
def proxy():
    d = tempfile.mkdtemp(prefix="kfh-", dir="/tmp")
    lt = LoopThread("test-hot-proxy")
    core = ProxyCore("th", uds=os.path.join(d, "p.sock"), hello_timeout_s=2.0,
                     partial_timeout_s=2.0, idle_timeout_s=5.0, rng=random.Random(3))
    lt.run(core.start(), 10)
    try:
        yield core, lt
    finally:
        lt.run(core.stop(), 10)
        lt.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_a_slow_replica_is_flagged_gets_less_traffic_and_is_let_back(proxy):
    """Sequential calls (nothing in flight, so power of two choices alone would split them
    evenly): once the proxy has seen the slow replica's replies, new calls steer away from
    it; an event and a metric say so; when it answers fast again the flag clears."""
    core, lt = proxy
    uds = f"unix://{core.uds}"
    slow, fast = kuafu.attach({"svc": Svc("slow")}, uds), kuafu.attach({"svc": Svc("fast")}, uds)
    seen = events.LOG.last_seq()
    flagged_before = HOT_CHANGES.value(change="flagged")
    try:
        with kuafu.connect(uds, service="svc") as c:
            tags = [c.call("lag", "0.05") for _ in range(120)]
            first, rest = tags[:40], tags[40:]
            assert "slow" in first
            assert rest.count("slow") <= 12, rest.count("slow")  # ~5% probes, not ~50%
            hot = lt.call(lambda: core.stats()["hot"], 5)["svc"]
            [(name, st)] = [(e, v) for e, v in hot.items() if v["hot"]]  # one: the slow one
            assert st["mean_s"] > 0.03 and all(v["mean_s"] < 0.02 for e, v in hot.items()
                                               if e != name), hot
            evs = [e for e in events.LOG.since(seen) if e.kind == "hot_replica"]
            assert evs and evs[0].fields["service"] == "svc", evs
            assert HOT_CHANGES.value(change="flagged") > flagged_before
            # It recovers: "lag 0" is fast everywhere; probes bring its mean down.
            for _ in range(600):
                c.call("lag", "0")
            time.sleep(HOT_CHECK_S + 0.1)  # the next call judges the service again
            c.call("lag", "0")
            hot = lt.call(lambda: core.stats()["hot"], 5)["svc"]
            assert not any(v["hot"] for v in hot.values()), hot
            assert [e for e in events.LOG.since(seen) if e.kind == "hot_replica_cleared"]
    finally:
        slow.stop(1)
        fast.stop(1)


def test_rule_constants_are_sane():
    r = hotroute.REPLICA_LATENCY
    assert r.floor == hotroute.HOT_LATENCY_FLOOR_S and r.clear_factor < r.factor

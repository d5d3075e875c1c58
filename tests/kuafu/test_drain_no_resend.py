"""A drained server never makes the proxy resend a call that may have run (over real
sockets, without Ray): calls it received finish there; calls still waiting at the proxy for
room toward it go to another server unsent; none fails, none runs twice."""

from __future__ import annotations

import time

import kuafu
from kuafu.io import forward
from tests.kuafu.test_rpc import _attach, proxy, sockdir  # noqa: F401 - fixtures


def _wait(pred, timeout_s=10.0):
    deadline = time.time() + timeout_s
    while not pred():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_a_drain_sends_the_calls_queued_for_it_elsewhere_unsent(proxy, monkeypatch):  # noqa: F811
    monkeypatch.setattr(forward, "SERVER_REQUESTS_IN_FLIGHT_MAX", 2)  # the rest queue here
    core, lt = proxy
    uds = f"unix://{core.uds}"
    a = _attach(uds, "a")
    b = None
    try:
        with kuafu.connect(uds, service="svc") as c:
            calls = [c.call_async("sleep", "0.5") for _ in range(8)]  # NOT idempotent
            _wait(lambda: lt.call(lambda: len(core.forwarder.routes), 5) == 8)
            b = _attach(uds, "b")
            a.stop(5)  # unregister, finish the two it received, close
            results = [x.result(10) for x in calls]
        assert sorted(results) == ["a"] * 2 + ["b"] * 6
        counters = lt.call(lambda: dict(core.counters), 5)
        assert counters["redirected"] == 6 and counters["errors"] == 0
        assert b.stats()["svc"]["served"] == 6
    finally:
        if b is not None:
            b.stop(1)
        a.stop(1)


def test_a_non_idempotent_call_lost_in_flight_fails_and_is_not_resent(proxy):  # noqa: F811
    core, lt = proxy
    uds = f"unix://{core.uds}"
    a, b = _attach(uds, "a"), _attach(uds, "b")
    try:
        with kuafu.connect(uds, service="svc") as c:
            calls = [c.call_async("sleep", "1") for _ in range(6)]
            _wait(lambda: lt.call(lambda: len(core.forwarder.routes), 5) == 6)
            before = lt.call(lambda: core.counters["retries"], 5)
            b.loop.call_soon_threadsafe(b.server.proxy.abort)  # b's link breaks mid-call
            lost = 0
            for x in calls:
                try:
                    assert x.result(10) == "a"
                except kuafu.Unavailable as e:
                    assert e.maybe_executed  # it may have run: the caller is told, not retried
                    lost += 1
            assert lost > 0
            assert lt.call(lambda: core.counters["retries"], 5) == before
    finally:
        a.stop(1)
        b.stop(1)

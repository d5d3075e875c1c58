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
    received = []  # every request frame a's server got
    start = a.server._start

    def spy(conn, f):
        received.append(f.header.get("m"))
        start(conn, f)

    a.server._start = spy
    try:
        with kuafu.connect(uds, service="svc") as c:
            calls = [c.call_async("sleep", "0.5") for _ in range(8)]  # NOT idempotent
            _wait(lambda: lt.call(lambda: len(core.forwarder.routes), 5) == 8)
            b = _attach(uds, "b")
            a.stop(5)  # unregister, finish the two it received, close
            results = [x.result(10) for x in calls]
        assert sorted(results) == ["a"] * 2 + ["b"] * 6
        # The draining server got only the two it had before it unregistered: the six that
        # waited at the proxy were never written to it (so none could be lost in flight).
        assert received == ["sleep"] * 2
        counters = lt.call(lambda: dict(core.counters), 5)
        assert counters["errors"] == 0 and counters["retries"] == 6
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


class Pay:
    """A method declared never idempotent, next to an undeclared one."""

    def __init__(self):
        self.runs = 0

    @kuafu.method(idempotent=False)
    async def pay(self, m):
        import asyncio

        self.runs += 1
        await asyncio.sleep(float(m))
        return "paid"


def test_a_method_declared_never_idempotent_is_not_resent_even_if_the_caller_says_so(
        proxy):  # noqa: F811
    core, lt = proxy
    uds = f"unix://{core.uds}"
    pa, pb = Pay(), Pay()
    a, b = kuafu.attach({"svc": pa}, uds), kuafu.attach({"svc": pb}, uds)
    try:
        with kuafu.connect(uds, service="svc") as c:
            calls = [c.call_async("pay", "1", idempotent=True) for _ in range(6)]
            _wait(lambda: pa.runs + pb.runs == 6)
            b.loop.call_soon_threadsafe(b.server.proxy.abort)
            lost = 0
            for x in calls:
                try:
                    assert x.result(10) == "paid"
                except kuafu.Unavailable as e:
                    assert e.maybe_executed and e.no_resend and "never idempotent" in str(e)
                    lost += 1
            assert lost == pb.runs > 0
            time.sleep(0.3)
            assert pa.runs + pb.runs == 6  # neither the proxy nor the client sent one again
    finally:
        a.stop(1)
        b.stop(1)

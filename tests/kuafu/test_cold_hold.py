"""Calls to a service scaled to zero, held at a real proxy over real sockets (no Ray): the
proxy is told the service sleeps (what the service manager does), calls wait instead of
failing, and go -- each exactly once, non-idempotent ones too -- when a server attaches;
over HELD_CALLS_MAX, past COLD_CALL_WAIT_S or the caller's deadline: a typed error at once,
through Kuafu's binary protocol and the HTTP front door (503 with Retry-After)."""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest

import kuafu
from tests.kuafu.test_gateway import Door, post
from tests.kuafu.test_rpc import _attach, proxy, sockdir  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)


def _asleep(core, lt, svc="svc", ttl_s=30.0) -> dict:
    return lt.call(lambda: core.cold({svc: ttl_s}), 5)


def _wait(pred, timeout_s=10.0):
    deadline = time.time() + timeout_s
    while not pred():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_held_calls_go_once_each_when_a_server_attaches(proxy):  # noqa: F811
    core, lt = proxy
    uds = f"unix://{core.uds}"
    assert _asleep(core, lt) == {}  # nothing held yet: no wake wanted
    door = Door(core, lt)
    a = None
    try:
        with kuafu.connect(uds, service="svc") as c, \
                concurrent.futures.ThreadPoolExecutor(4) as pool:
            calls = [c.call_async("sleep", "0.01", timeout_s=30) for _ in range(20)]  # NOT idem
            http = [pool.submit(post, door.svc("svc", "who"), b'""') for _ in range(4)]
            _wait(lambda: lt.call(lambda: core.counters["cold_held"], 5) == 24)
            time.sleep(0.3)
            assert not any(x.done() for x in calls) and not any(f.done() for f in http)
            assert _asleep(core, lt) == {"svc": 24}  # one entry for the service: one wake
            a = _attach(uds, "a")
            assert [x.result(10) for x in calls] == ["a"] * 20
            for f in http:
                status, body, _ = f.result(30)
                assert status == 200 and json.loads(body) == "a", body
        st = a.stats()["svc"]
        assert st["served"] == 24 and st["failed"] == 0  # each exactly once
        counters = lt.call(lambda: dict(core.counters), 5)
        assert counters["retries"] == 0 and counters["errors"] == 0
        assert _asleep(core, lt) == {}
    finally:
        door.close()
        if a is not None:
            a.stop(1)


def test_past_the_bound_the_wait_or_the_deadline_a_typed_error_at_once(proxy):  # noqa: F811
    core, lt = proxy
    uds = f"unix://{core.uds}"
    _asleep(core, lt)
    lt.call(lambda: setattr(core.forwarder.cold, "held_max", 3), 5)
    door = Door(core, lt)
    try:
        with kuafu.connect(uds, service="svc") as c:
            held = [c.call_async("sleep", "0", timeout_s=30) for _ in range(3)]
            _wait(lambda: lt.call(lambda: core.counters["cold_held"], 5) == 3)
            t0 = time.time()
            with pytest.raises(kuafu.Unavailable, match="HELD_CALLS_MAX=3") as e:
                c.call("sleep", "0", timeout_s=30)
            assert not e.value.maybe_executed and time.time() - t0 < 2
            status, body, headers = post(door.svc("svc", "who"), b'""')
            assert status == 503 and headers.get("Retry-After") == "1", (status, body)
            assert "HELD_CALLS_MAX" in json.loads(body)["error"]["message"]
            for x in held:
                x.cancel()
            _wait(lambda: lt.call(lambda: core.forwarder.cold.wanted(), 5) in ({}, {"svc": 0})
                  or lt.call(lambda: len(core.forwarder.inbound), 5) == 0)
            # A caller whose deadline comes before any replica: TimedOut, not sent.
            t0 = time.time()
            with pytest.raises(kuafu.TimedOut, match="woke from zero .held at the proxy.; not sent"):
                c.call("sleep", "0", timeout_s=0.5)
            assert time.time() - t0 < 3
            # COLD_CALL_WAIT_S (here 0.5 s) before a longer deadline: Unavailable, not sent.
            lt.call(lambda: setattr(core.forwarder.cold, "wait_s", 0.5), 5)
            t0 = time.time()
            with pytest.raises(kuafu.Unavailable, match="COLD_CALL_WAIT_S=0.5s; not sent"):
                c.call("sleep", "0", timeout_s=30)
            assert time.time() - t0 < 3
    finally:
        door.close()


def test_a_service_not_asleep_still_fails_at_once(proxy):  # noqa: F811
    """Negative control: without the manager's word nothing is held."""
    core, lt = proxy
    with kuafu.connect(f"unix://{core.uds}", service="svc") as c:
        t0 = time.time()
        with pytest.raises(kuafu.Unavailable):
            c.call("sleep", "0", timeout_s=30)
        assert time.time() - t0 < 2
    assert lt.call(lambda: core.counters["cold_held"], 5) == 0
    # and the word runs out: after its ttl nothing is held either
    _asleep(core, lt, ttl_s=0.2)
    time.sleep(0.3)
    with kuafu.connect(f"unix://{core.uds}", service="svc") as c:
        with pytest.raises(kuafu.Unavailable):
            c.call("sleep", "0", timeout_s=30)
    assert lt.call(lambda: core.counters["cold_held"], 5) == 0

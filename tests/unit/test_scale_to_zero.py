"""Scale to zero (issue 20 part 1): the autoscaler's idle rule and wake (fuxi.core.autoscale)
and the calls a Kuafu proxy holds for a service at zero (kuafu.core.coldhold), as scenarios
and as properties over random traces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core.autoscale import Autoscaler, ReplicaLoad, awake_floor
from fuxi.core.service_spec import service_spec_from_dict
from kuafu.core.coldhold import ASLEEP_TTL_S_MAX, ColdHolds

BASE = {"name": "svc", "class": "jobs.services.echo:Echo"}
IDLE = [ReplicaLoad(0.0, calls=0)]
BUSY = [ReplicaLoad(1.0, calls=3)]


def _policy(**kw) -> dict:
    block = dict({"target_in_flight": 2, "min_replicas": 0}, **kw)
    if block["min_replicas"] == 0:
        block.setdefault("scale_to_zero_after_s", 10)
    doc = dict(BASE, autoscaling=block)
    return service_spec_from_dict(doc).to_doc()["autoscaling"]


def test_min_replicas_0_is_accepted_with_a_default_idle_delay():
    doc = service_spec_from_dict(dict(BASE, replicas=0, autoscaling={
        "target_in_flight": 2, "min_replicas": 0})).to_doc()
    assert doc["replicas"] == 0 and doc["autoscaling"]["scale_to_zero_after_s"] == 300.0


def test_idle_for_the_delay_goes_to_zero_with_its_reason_and_not_before():
    p, a = _policy(), Autoscaler()
    assert a.step(p, 1, IDLE, 0.0) is None
    assert a.step(p, 1, IDLE, 9.9) is None
    d = a.step(p, 1, IDLE, 10.0)
    assert (d.before, d.after) == (1, 0)
    assert "scaled to zero: no call for 10.0s (scale_to_zero_after_s 10)" in d.reason
    assert a.view(p, 0)["scaled_to_zero"] is True
    assert a.step(p, 0, [], 500.0) is None  # nothing but a wake brings it back


def test_the_load_alone_never_takes_the_last_replica_away():
    p, a = _policy(scale_down_delay_s=0, scale_to_zero_after_s=1000), Autoscaler()
    a.step(p, 3, BUSY, 0.0)
    counts, current = [], 3
    for t in range(1, 100):
        d = a.step(p, current, [ReplicaLoad(0.0, calls=1)] * current, float(t))
        current = d.after if d else current
        counts.append(current)
    assert min(counts) == 1  # calls still finish: the in-flight rule stops at one


def test_a_call_restarts_the_idle_timer():
    p, a = _policy(), Autoscaler()
    a.step(p, 1, IDLE, 0.0)
    assert a.step(p, 1, BUSY, 8.0) is None
    assert a.step(p, 1, IDLE, 17.0) is None  # 9 s since the call
    assert a.step(p, 1, IDLE, 18.0).after == 0


def test_wake_asks_for_one_replica_at_once_and_restarts_the_timer():
    p, a = _policy(), Autoscaler()
    d = a.wake(p, 0, 5.0, "3 calls held at 1 Kuafu proxies")
    assert (d.before, d.after) == (0, 1) and "woken from zero: 3 calls held" in d.reason
    assert a.wake(p, 1, 6.0, "again") is None  # already wanted: no second decision
    assert a.step(p, 1, [], 15.9) is None      # the wake restarted the idle timer
    assert a.wake(_policy(max_replicas=3), 0, 1.0, "x").after == 1


def test_scale_to_zero_never_applies_with_min_replicas_above_zero():
    p = service_spec_from_dict(dict(BASE, autoscaling={"target_in_flight": 2,
                                                       "min_replicas": 2})).to_doc()["autoscaling"]
    a = Autoscaler()
    for t in range(0, 2000, 50):
        d = a.step(p, 2, IDLE * 2, float(t))
        assert d is None
    assert a.wake(p, 2, 1.0, "x") is None and awake_floor(p) == 2


EVENT = st.one_of(
    st.tuples(st.just("idle"), st.floats(0.01, 30)),
    st.tuples(st.just("busy"), st.floats(0.01, 30), st.floats(0.1, 40)),
    st.tuples(st.just("wake"), st.floats(0.01, 30)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENT, max_size=60), st.integers(0, 3), st.integers(1, 6),
       st.floats(1, 50))
def test_never_below_min_wake_gives_at_least_one_and_zero_only_after_idle(events, lo, hi,
                                                                           after):
    hi = max(hi, lo, 1)
    p = _policy(min_replicas=lo, max_replicas=hi, scale_up_delay_s=1, scale_down_delay_s=2,
                **({"scale_to_zero_after_s": after} if lo == 0 else {}))
    a, now, current, last_call = Autoscaler(), 0.0, max(lo, 1), 0.0
    a.step(p, current, [ReplicaLoad(0.0)] * current, now)
    for ev in events:
        now += ev[1]
        if ev[0] == "wake":
            d = a.wake(p, current, now, "held")
            last_call = now
            if current == 0:
                assert d is not None and d.after >= 1
        else:
            busy = ev[0] == "busy"
            loads = [ReplicaLoad(ev[2] / max(current, 1) if busy else 0.0,
                                 calls=1 if busy else 0)] * current
            if busy and current:
                last_call = now
            d = a.step(p, current, loads, now)
            if d is not None and d.after == 0:
                assert lo == 0 and now - last_call >= after - 1e-9  # idle long enough
        if d is not None:
            assert d.before == current
            current = d.after
        assert current >= lo and current <= hi
        assert current >= 1 or lo == 0


def test_held_calls_are_bounded_per_service_and_released_in_order():
    h = ColdHolds(held_max=3, wait_s=5.0)
    h.set_asleep({"svc": 5.0}, 0.0)
    assert h.is_asleep("svc", 4.9) and not h.is_asleep("svc", 5.0)
    assert not h.is_asleep("other", 0.0)
    for k in "abc":
        assert h.hold("svc", k, 1.0) is None
    why = h.hold("svc", "d", 1.0)
    assert "HELD_CALLS_MAX=3" in why and "scaled to zero" in why
    assert h.wanted() == {"svc": 3}  # one wake wanted for the service, however many wait
    # a call that ended (cancelled, its deadline) frees its place
    assert h.hold("svc", "d", 1.0, live=lambda k: k != "a") is None
    assert h.release("svc") == ["b", "c", "d"]
    assert h.wanted() == {} and h.release("svc") == []


def test_held_calls_past_the_wait_expire_and_the_service_stops_wanting_a_wake():
    h = ColdHolds(wait_s=5.0)
    h.hold("svc", "a", 0.0)
    h.hold("svc", "b", 3.0)
    assert h.expired(4.9) == []
    assert h.expired(5.0) == ["a"] and h.wanted() == {"svc": 1}
    assert h.expired(8.0) == ["b"] and h.wanted() == {}
    h.hold("svc", "c", 0.0)
    assert h.expired(1.0, live=lambda k: False) == [] and h.wanted() == {}


@pytest.mark.parametrize("garbage", [
    [("svc", 1)], {"svc": -1}, {"svc": ASLEEP_TTL_S_MAX + 1}, {"svc": True}, {3: 1.0},
    {"svc": "5"}, "svc",
])
def test_garbage_asleep_words_are_refused_naming_what_was_expected(garbage):
    h = ColdHolds()
    with pytest.raises(ValueError, match="expected"):
        h.set_asleep(garbage, 0.0)
    assert h.asleep == {}


def test_the_services_kept_asleep_and_holding_are_bounded():
    h = ColdHolds(services_max=2)
    h.set_asleep({"a": 1.0, "b": 1.0}, 0.0)
    with pytest.raises(ValueError, match="COLD_SERVICES_MAX"):
        h.set_asleep({"c": 1.0}, 0.5)
    h.set_asleep({"c": 1.0}, 2.0)  # the others' words ran out: room again
    assert set(h.asleep) == {"c"}
    assert h.hold("a", 1, 0.0) is None and h.hold("b", 2, 0.0) is None
    assert "COLD_SERVICES_MAX" in h.hold("c", 3, 0.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["hold", "release", "expire", "end"]),
                          st.floats(0, 3)), max_size=80))
def test_every_held_call_ends_exactly_once(ops):
    """Each held call is released, expired, refused or ended by its caller -- one of them,
    once -- and no service holds more than the bound."""
    h = ColdHolds(held_max=4, wait_s=5.0)
    now, n, ended, outcome = 0.0, 0, set(), {}
    for op, dt in ops:
        now += dt
        live = lambda k: k not in ended  # noqa: E731
        if op == "hold":
            n += 1
            outcome[n] = [] if h.hold("svc", n, now, live) is None else ["refused"]
        elif op == "release":
            for k in h.release("svc"):
                outcome[k].append("released")
        elif op == "expire":
            for k in h.expired(now, live):
                outcome[k].append("expired")
        elif outcome:
            ended.add(max(outcome))
        assert all(len(q) <= 4 for q in h.held.values())
    for k in h.release("svc"):
        outcome[k].append("released")
    for k, what in outcome.items():
        assert len(what) == 1 if k not in ended else len(what) <= 1, (k, what)


class _Proxy:
    """A stand-in for a Kuafu proxy actor's ``cold`` method (the real one is exercised in
    tests/kuafu/test_cold_hold.py and on Ray in test_scale_to_zero_ray.py)."""

    def __init__(self, answer):
        self.answer, self.told = answer, []
        outer = self

        class _Method:
            def remote(self, asleep, cred):
                async def go():
                    outer.told.append(dict(asleep))
                    if isinstance(outer.answer, Exception):
                        raise outer.answer
                    return outer.answer
                return go()
        self.cold = _Method()


def test_the_manager_tells_the_proxies_before_the_last_replica_goes_and_wakes_on_held_calls():
    import asyncio
    import time

    from fuxi.io.store import MemoryStore
    from fuxi.shells.offloop import AsyncStore, OffLoop
    from fuxi.shells.services import ServiceManager

    async def go():
        mgr = ServiceManager("c", "ns", AsyncStore(MemoryStore(), OffLoop("t", 1)), False)
        spec = service_spec_from_dict(dict(BASE, autoscaling={
            "target_in_flight": 2, "min_replicas": 0, "scale_to_zero_after_s": 5})).to_doc()
        await mgr.register(spec)
        core = mgr.cores["svc"]
        t = time.time()
        mgr._autoscale(core, IDLE, t)
        mgr._autoscale(core, IDLE, t + 6)
        assert core.spec["replicas"] == 1 and "svc" in mgr._zeroing  # not before the proxies
        down = _Proxy(RuntimeError("unreachable"))
        mgr._proxies, mgr._proxies_at = {"n1": down}, time.time()
        await mgr._cold_poll_once(time.time())
        assert core.spec["replicas"] == 1 and down.told == [{"svc": 5.0}]  # nobody heard it
        mgr._autoscale(core, IDLE, t + 12)
        up = _Proxy({})
        mgr._proxies = {"n1": up}
        await mgr._cold_poll_once(time.time())
        assert core.spec["replicas"] == 0 and up.told == [{"svc": 5.0}]
        assert "autoscaled 1 -> 0 replicas: scaled to zero: no call for" in core.events[-1]
        assert mgr.status("svc")["autoscaling"]["scaled_to_zero"] is True
        up.answer = {"svc": 3, "garbage-not-registered": 9}
        await mgr._cold_poll_once(time.time())
        assert core.spec["replicas"] == 1
        assert core.events[-1].endswith("autoscaled 0 -> 1 replicas: woken from zero: 3 calls "
                                        "held at 1 Kuafu proxies")
        await mgr._cold_poll_once(time.time())  # still held while it starts: no second wake
        assert core.spec["replicas"] == 1 and sum("woken" in e for e in core.events) == 1

    asyncio.run(go())

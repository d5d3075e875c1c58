"""The autoscaler's pure policy (fuxi.core.autoscale) and the spec's autoscaling block: bounds,
delays, the cap per step and no flapping, as properties over random load traces."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core.autoscale import Autoscaler, ReplicaLoad, recommend, replica_load
from fuxi.core.service_spec import service_spec_from_dict
from fuxi.errors import SpecError

BASE = {"name": "svc", "class": "jobs.services.echo:Echo"}


def _policy(**kw) -> dict:
    doc = dict(BASE, autoscaling=dict({"target_in_flight": 2}, **kw))
    return service_spec_from_dict(doc).to_doc()["autoscaling"]


def _loads(total: float, n: int) -> list[ReplicaLoad]:
    return [ReplicaLoad(total / n, calls=10) for _ in range(n)]


def _run(policy: dict, trace: list[tuple[float, float]], start: int):
    """Drive an autoscaler over (time, total in flight) steps; returns (decisions, counts)."""
    a, current, decisions, counts = Autoscaler(), start, [], []
    for now, total in trace:
        d = a.step(policy, current, _loads(total, max(current, 1)), now)
        if d is not None:
            assert d.before == current
            decisions.append(d)
            current = d.after
        counts.append(current)
    return decisions, counts


policies = st.fixed_dictionaries({
    "target_in_flight": st.floats(0.5, 20),
    "min_replicas": st.integers(1, 4),
    "max_replicas": st.integers(4, 12),
    "scale_up_delay_s": st.floats(0, 10),
    "scale_down_delay_s": st.floats(0, 30),
    "max_change_per_step": st.integers(1, 5),
}).map(lambda kw: _policy(**kw))
traces = st.lists(st.tuples(st.floats(0.1, 3.0), st.floats(0, 200)), min_size=1, max_size=60).map(
    lambda steps: [(sum(dt for dt, _ in steps[:i + 1]), load) for i, (_, load) in enumerate(steps)])


@settings(max_examples=150, deadline=None)
@given(policies, traces, st.integers(1, 12))
def test_every_decision_respects_bounds_cap_and_delay(policy, trace, start):
    start = min(max(start, policy["min_replicas"]), policy["max_replicas"])
    decisions, counts = _run(policy, trace, start)
    lo, hi, cap = policy["min_replicas"], policy["max_replicas"], policy["max_change_per_step"]
    assert all(lo <= c <= hi for c in counts)
    lo_ = policy["min_replicas"]
    prev_at = -math.inf

    def want(t):
        return min(max(math.ceil(loads[t] / policy["target_in_flight"] - 1e-9), lo_), hi)
    loads = dict(trace)
    for d in decisions:
        assert 1 <= abs(d.after - d.before) <= cap
        up = d.after > d.before
        delay = policy["scale_up_delay_s" if up else "scale_down_delay_s"]
        # The streak: the steps since the last change, up to this one, that all wanted this
        # way without a break. It began a full delay before the change, after the last one.
        streak = []
        for t in reversed([t for t, _ in trace if prev_at < t <= d.at]):
            if not ((want(t) > d.before) if up else (want(t) < d.before)):
                break
            streak.insert(0, t)
        assert streak and streak[-1] == d.at, d
        assert streak[0] <= d.at - delay + 1e-9, (streak, d, delay)
        # It never overshoots what every step of the streak wanted.
        wants = [want(t) for t in streak]
        assert (d.after <= min(wants)) if up else (d.after >= max(wants))
        prev_at = d.at


@settings(max_examples=200, deadline=None)
@given(policies, st.floats(0, 200), st.integers(1, 12))
def test_a_steady_load_settles_on_its_count_and_stays(policy, load, start):
    start = min(max(start, policy["min_replicas"]), policy["max_replicas"])
    trace = [(i * 1.0, load) for i in range(400)]
    decisions, counts = _run(policy, trace, start)
    goal = min(max(math.ceil(load / policy["target_in_flight"] - 1e-9), policy["min_replicas"]),
               policy["max_replicas"])
    assert counts[-1] == goal
    # Monotone on the way there: a steady load never makes it turn back (no flapping).
    directions = {d.after > d.before for d in decisions}
    assert len(directions) <= 1


@settings(max_examples=200, deadline=None)
@given(st.floats(0.5, 10), st.integers(2, 8))
def test_a_load_wobbling_around_a_boundary_changes_nothing(target, n):
    """Load alternating just above and just below n replicas' worth never moves the count
    when the delays are longer than one step."""
    policy = _policy(target_in_flight=target, min_replicas=1, max_replicas=10,
                     scale_up_delay_s=2.0, scale_down_delay_s=2.0)
    trace = [(i * 1.0, n * target * (1.2 if i % 2 else 0.8)) for i in range(200)]
    decisions, counts = _run(policy, trace, n)
    assert decisions == [] and set(counts) == {n}


def test_up_waits_its_delay_and_is_capped_then_measures_again():
    policy = _policy(target_in_flight=2, min_replicas=1, max_replicas=10, scale_up_delay_s=4,
                     scale_down_delay_s=10, max_change_per_step=2)
    a = Autoscaler()
    assert a.step(policy, 1, _loads(16, 1), 0.0) is None      # wants 8: the streak starts
    assert a.step(policy, 1, _loads(16, 1), 2.0) is None
    d = a.step(policy, 1, _loads(16, 1), 4.0)
    assert (d.before, d.after) == (1, 3) and "16.0 calls in flight" in d.reason
    assert "wanted >= 8 for 4.0s" in d.reason
    assert a.step(policy, 3, _loads(16, 3), 6.0) is None      # a new streak: a full delay
    assert a.step(policy, 3, _loads(16, 3), 9.0) is None
    assert a.step(policy, 3, _loads(16, 3), 10.0).after == 5
    view = a.view(policy, 5)
    assert view["last"]["to"] == 5 and view["target"] == "2 in flight per replica"


def test_down_waits_longer_and_a_spike_restarts_the_wait():
    policy = _policy(target_in_flight=2, min_replicas=1, max_replicas=10, scale_up_delay_s=1,
                     scale_down_delay_s=10, max_change_per_step=4)
    a = Autoscaler()
    assert a.step(policy, 6, _loads(2, 6), 0.0) is None
    assert a.step(policy, 6, _loads(2, 6), 8.0) is None
    assert a.step(policy, 6, _loads(12, 6), 9.0) is None       # wants 6 again: streak broken
    assert a.step(policy, 6, _loads(2, 6), 10.0) is None
    assert a.step(policy, 6, _loads(2, 6), 19.0) is None
    d = a.step(policy, 6, _loads(6, 6), 20.0)                  # the largest wish of the streak
    assert (d.before, d.after) == (6, 3) and "wanted <= 3 for 10.0s" in d.reason


def test_outside_the_bounds_is_corrected_at_once_and_no_data_holds():
    policy = _policy(target_in_flight=2, min_replicas=2, max_replicas=4)
    a = Autoscaler()
    d = a.step(policy, 7, _loads(0, 7), 0.0)
    assert (d.after, "outside" in d.reason) == (4, True)
    assert a.step(policy, 1, [], 1.0).after == 2
    assert recommend(policy, 3, []) == (3, "no ready replica reported its load")


def test_latency_target_uses_the_worst_replica_that_served_calls():
    policy = service_spec_from_dict(dict(BASE, autoscaling={
        "target_latency_ms": 100, "latency_percentile": "p99", "max_replicas": 10})
    ).to_doc()["autoscaling"]
    loads = [ReplicaLoad(1, 10, 20, 250), ReplicaLoad(1, 10, 20, 90),
             ReplicaLoad(0, 0, 900, 900)]  # no calls this period: its latency is stale
    n, why = recommend(policy, 3, loads)
    assert n == 8 and "worst p99 250.0 ms" in why  # ceil(3 * 250 / 100)
    assert recommend(policy, 3, [ReplicaLoad(0, 0, 5, 5)])[0] == 1  # idle: the minimum


def test_replica_load_from_two_kuafu_samples():
    a = {"running": 0, "queued": 0, "served": 10, "failed": 0, "busy_s": 1.0}
    b = {"running": 1, "queued": 0, "served": 30, "failed": 2, "busy_s": 9.0,
         "p50_ms": 3.0, "p99_ms": 7.0}
    x = replica_load(a, b, 2.0)
    assert (x.in_flight, x.calls, x.p99_ms) == (4.0, 22, 7.0)
    assert replica_load(None, b, 0.0).in_flight == 1.0         # first sample: what runs now
    # One caller's call running at this replica now does not count twice on top of the mean.
    assert replica_load(a, dict(b, running=3), 2.0).in_flight == 4.0
    long_calls = dict(a, running=9, queued=3)  # none finished: calls longer than the period
    assert replica_load(a, long_calls, 2.0).in_flight == 12.0


@pytest.mark.parametrize("block,words", [
    ({}, "exactly one target"),
    ({"target_in_flight": 2, "target_latency_ms": 50}, "exactly one target"),
    ({"target_in_flight": 2, "min_replicas": 5, "max_replicas": 3}, "min_replicas 5 > max_replicas 3"),
    ({"target_in_flight": 2, "min_replicas": 1, "scale_to_zero_after_s": 10},
     "applies only with min_replicas 0"),
    ({"target_in_flight": 2, "min_replicas": 0, "scale_to_zero_after_s": 0.5},
     "scale_to_zero_after_s"),
    ({"target_in_flight": 2, "min_replicas": 0, "scale_to_zero_after_s": "soon"},
     "expected a number"),
    ({"target_in_flight": 2, "min_replicas": 0, "scale_to_zero_after_s": 1e9},
     "scale_to_zero_after_s"),
    ({"target_in_flight": "many"}, "expected a number"),
    ({"target_in_flight": True}, "expected a number"),
    ({"target_in_flight": -1}, "greater than 0"),
    ({"target_in_flight": float("inf")}, "finite"),
    ({"target_in_flight": 2, "max_replicas": 100_000}, "max_replicas"),
    ({"target_in_flight": 2, "scale_up_delay_s": -1}, "scale_up_delay_s"),
    ({"target_in_flight": 2, "max_change_per_step": 0}, "max_change_per_step"),
    ({"target_latency_ms": 5, "latency_percentile": "p90"}, "latency_percentile"),
    ({"target_in_flight": 2, "targte": 3}, "unknown field"),
])
def test_bad_autoscaling_blocks_are_refused_in_one_clear_line(block, words):
    with pytest.raises(SpecError) as e:
        service_spec_from_dict(dict(BASE, autoscaling=block))
    assert words in str(e.value)
    lines = [ln for ln in str(e.value).splitlines() if ln.strip().startswith("-")]
    assert len(lines) == 1 and "autoscaling" in lines[0]


def test_autoscaling_garbage_types_and_the_start_count():
    with pytest.raises(SpecError, match="autoscaling"):
        service_spec_from_dict(dict(BASE, autoscaling=[1, 2]))
    spec = service_spec_from_dict(dict(BASE, replicas=9, autoscaling={
        "target_in_flight": 2, "min_replicas": 2, "max_replicas": 5})).to_doc()
    assert spec["replicas"] == 5  # the start count is brought within min..max
    assert service_spec_from_dict(BASE).to_doc()["autoscaling"] is None


def test_a_decision_is_a_core_event_of_kind_service_autoscaled_and_shows_in_status(capsys):
    from cli.service import _show
    from fuxi.core.servicecore import ServiceCore
    from fuxi.shells.clusterlog import SERVICE_EVENT_KINDS

    spec = service_spec_from_dict(dict(BASE, autoscaling={"target_in_flight": 2})).to_doc()
    core = ServiceCore(spec)
    a = Autoscaler()
    policy = spec["autoscaling"]
    d = None
    for t in range(0, 8):
        d = a.step(policy, 1, _loads(7, 1), float(t)) or d
    assert d is not None and (d.before, d.after) == (1, 3)  # capped at 2 a step
    core.scale(d.after, d.at, d.reason)
    assert core.spec["replicas"] == 3
    text = core.events[-1].partition(" ")[2]
    assert text.startswith("autoscaled 1 -> 3 replicas: 7.0 calls in flight")
    assert next(k for words, k in SERVICE_EVENT_KINDS if words in text) == "service_autoscaled"
    core.scale(2, 9.0)  # by hand: the old wording and kind
    assert core.events[-1].endswith("scaled to 2 replicas")
    st = {"name": "svc", "version": "1", "ready": 3, "desired": 3, "removing": False,
          "rollout": "", "requests": 5, "errors": 0, "requests_per_s": 1.0, "p99_ms_max": 2.0,
          "replicas": [], "events": [], "autoscaling": a.view(policy, 3)}
    _show(st)
    out = capsys.readouterr().out
    assert "autoscaling: target 2 in flight per replica, 1..4 replicas; current 3" in out
    assert "last decision: 1 -> 3: 7.0 calls in flight" in out


def test_the_manager_refuses_a_manual_scale_and_an_upgrade_keeps_the_autoscaled_count():
    """The service manager shell's API on a memory store (no Ray is started)."""
    import asyncio

    from fuxi.errors import BadInput
    from fuxi.io.store import MemoryStore
    from fuxi.shells.offloop import AsyncStore, OffLoop
    from fuxi.shells.services import ServiceManager

    async def go():
        mgr = ServiceManager("c", "ns", AsyncStore(MemoryStore(), OffLoop("t", 1)), False)
        spec = service_spec_from_dict(dict(BASE, autoscaling={
            "target_in_flight": 2, "min_replicas": 1, "max_replicas": 6})).to_doc()
        await mgr.register(spec)
        core = mgr.cores["svc"]
        mgr._autoscale(core, _loads(20, 1), 0.0)
        mgr._autoscale(core, _loads(20, 1), 6.0)
        assert core.spec["replicas"] == 3  # 1 + max_change_per_step after the 5 s delay
        with pytest.raises(BadInput, match="is autoscaled .1..6 replicas"):
            await mgr.scale("svc", 2)
        v2 = service_spec_from_dict(dict(BASE, version="2", autoscaling={
            "target_in_flight": 2, "min_replicas": 1, "max_replicas": 2})).to_doc()
        st = await mgr.upgrade(v2)
        assert st["desired"] == 2 and st["autoscaling"]["max"] == 2  # kept, within new bounds
        plain = service_spec_from_dict(dict(BASE, version="3", replicas=5)).to_doc()
        st = await mgr.upgrade(plain)  # autoscaling off again: the spec's count, by hand after
        assert st["desired"] == 5 and st["autoscaling"] is None
        mgr._autoscale(core, _loads(20, 1), 20.0)
        assert "svc" not in mgr.autoscalers
        assert (await mgr.scale("svc", 1))["desired"] == 1

    asyncio.run(go())

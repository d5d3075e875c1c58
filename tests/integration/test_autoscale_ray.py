"""Autoscaling on the two-node cluster (issue 20 part 1): a load ramp, rising then falling,
against an autoscaled echo service. The replicas follow the load, never before the configured
delays, and no call fails on the way up or down."""

from __future__ import annotations

import re
import threading
import time

import pytest

from tests.integration.servicehelpers import remove_service, service_status, wait_service

pytestmark = pytest.mark.ray

CLUSTER = "test"
NAME = "svc-auto"
CALL_S = 0.1          # each call of the load sleeps this long at the replica
UP_DELAY_S, DOWN_DELAY_S = 2.0, 6.0
FOLLOW_TIMEOUT_S = 120.0  # generous: replicas start on a shared 2-core machine


def _spec(target: dict | None = None) -> dict:
    from fuxi.core.service_spec import service_spec_from_dict

    return service_spec_from_dict({
        "name": NAME, "class": "jobs.services.echo:Echo", "replicas": 1,
        "resources": {"cpu": 0}, "drain_grace_s": 5.0,
        "health_check": {"period_s": 1.0, "timeout_s": 5.0, "failure_threshold": 3},
        "autoscaling": {**(target or {"target_in_flight": 2}), "min_replicas": 1,
                        "max_replicas": 4, "scale_up_delay_s": UP_DELAY_S,
                        "scale_down_delay_s": DOWN_DELAY_S,
                        "max_change_per_step": 2}}).to_doc()


class Ramp:
    """Closed-loop callers, each keeping one `sleep` call in flight; added and removed one by
    one while running. Counts every call and every failure."""

    def __init__(self, method: str = "sleep"):
        self.method = method
        self.ok = 0
        self.failures: list[str] = []
        self.workers: list[tuple[threading.Thread, threading.Event]] = []
        self.lock = threading.Lock()

    def _run(self, stop: threading.Event) -> None:
        import kuafu

        with kuafu.connect(f"nuwa://{CLUSTER}/{NAME}") as c:
            while not stop.is_set():
                try:
                    assert c.call(self.method, str(CALL_S).encode(), timeout_s=30) == b"slept"
                    with self.lock:
                        self.ok += 1
                except Exception as e:  # noqa: BLE001 - counted
                    with self.lock:
                        self.failures.append(repr(e))

    def set(self, n: int) -> None:
        while len(self.workers) < n:
            stop = threading.Event()
            t = threading.Thread(target=self._run, args=(stop,), daemon=True)
            t.start()
            self.workers.append((t, stop))
        while len(self.workers) > n:
            t, stop = self.workers.pop()
            stop.set()
            t.join(60)


def _status(master) -> dict:
    return service_status(master, NAME)


def _until(master, pred, what: str) -> dict:
    return wait_service(master, NAME, pred, what, FOLLOW_TIMEOUT_S, poll_s=0.3)


def _remove(master) -> None:
    remove_service(master, NAME)


def _decisions(st: dict) -> list[tuple[float, int, int]]:
    out = []
    for line in st["events"]:
        m = re.match(r"^(\d+\.\d+) autoscaled (\d+) -> (\d+) replicas: ", line)
        if m:
            out.append((float(m[1]), int(m[2]), int(m[3])))
    return out


def _settled(n: int):
    return lambda st: (st["desired"] == n and st["ready"] == n and st["starting"] == 0
                       and st["draining"] == 0)


def test_a_load_ramp_is_followed_up_and_down_within_the_delays_and_no_call_fails(client,
                                                                                  kuafu_net):
    import ray

    from fuxi.errors import BadInput

    master = client.master
    ray.get(master.service_register.remote(_spec()), timeout=30)
    ramp = Ramp()
    try:
        _until(master, _settled(1), "one replica at the start")
        with pytest.raises(BadInput, match="autoscaled"):
            ray.get(master.service_scale.remote(NAME, 3), timeout=30)
        ramp.set(1)  # ~1 call in flight: one replica is enough (target 2 per replica)
        time.sleep(UP_DELAY_S + 4)
        st = _status(master)
        assert st["desired"] == 1 and _decisions(st) == [], st["events"][-5:]
        assert st["autoscaling"]["recommended"] == 1

        rise = time.time()
        ramp.set(8)  # ~8 in flight: ceil(8 / 2) = 4 replicas (the maximum)
        st = _until(master, _settled(4), "scaled up to 4 under 8 callers")
        ups = [d for d in _decisions(st) if d[0] >= rise - 1]
        assert ups and all(b < a for _, b, a in ups), ups  # only up while it rises
        assert all(a - b <= 2 for _, b, a in ups), ups      # max_change_per_step
        assert ups[0][0] - rise >= UP_DELAY_S - 0.1, ups    # not before its delay
        time.sleep(DOWN_DELAY_S)  # the load holds: the count holds (no flapping)
        st = _status(master)
        assert st["desired"] == 4 and [d for d in _decisions(st) if d[0] >= rise - 1] == ups

        fall = time.time()
        ramp.set(1)
        st = _until(master, _settled(1), "scaled down to 1 after the load fell")
        downs = [d for d in _decisions(st) if d[0] >= fall]
        assert downs and all(b > a for _, b, a in downs), downs
        assert downs[0][0] - fall >= DOWN_DELAY_S - 0.1, downs
        assert st["autoscaling"]["last"]["to"] == 1
        assert "calls in flight" in st["autoscaling"]["last"]["reason"]
        time.sleep(1.0)
        ramp.set(0)
        assert ramp.failures == [], ramp.failures[:5]
        assert ramp.ok > 100
    finally:
        ramp.set(0)
        _remove(master)


def test_a_latency_target_scales_up_when_calls_queue_and_back_when_they_do_not(client,
                                                                               kuafu_net):
    """The other kind of target: the worst replica's p50 latency. `serial` calls queue at a
    replica, so six callers on one replica see ~0.6 s against a 250 ms target."""
    import ray

    master = client.master
    ray.get(master.service_register.remote(
        _spec({"target_latency_ms": 250, "latency_percentile": "p50"})), timeout=30)
    ramp = Ramp("serial")
    try:
        _until(master, _settled(1), "one replica at the start")
        ramp.set(1)  # ~100 ms per call, under the target: one replica is enough
        time.sleep(UP_DELAY_S + 4)
        st = _status(master)
        assert st["desired"] == 1 and _decisions(st) == [], st["events"][-5:]

        rise = time.time()
        ramp.set(6)
        st = _until(master, lambda st: st["desired"] >= 2 and st["ready"] == st["desired"],
                    "scaled up while calls queue")
        ups = [d for d in _decisions(st) if d[0] >= rise - 1]
        assert ups and ups[0][0] - rise >= UP_DELAY_S - 0.1, ups
        assert "worst p50" in st["autoscaling"]["last"]["reason"], st["autoscaling"]
        time.sleep(UP_DELAY_S + 3)  # it may still rise (the latency it judges lags)
        _until(master, lambda st: st["ready"] == st["desired"] and st["starting"] == 0,
               "the rise settled")

        fall = time.time()
        ramp.set(1)  # one caller: no queue anywhere, ~100 ms against 250 ms
        st = _until(master, _settled(1), "back to one replica once nothing queues")
        downs = [d for d in _decisions(st) if d[0] >= fall and d[2] < d[1]]
        assert downs and downs[0][0] - fall >= DOWN_DELAY_S - 0.1, downs
        ramp.set(0)
        assert ramp.failures == [], ramp.failures[:5]
    finally:
        ramp.set(0)
        _remove(master)

"""The service reconcile core against a simulated cluster: rolling upgrades keep their
bounds, failures are replaced with backoff, a bad version rolls back, scaling converges."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core.service_spec import ServiceSpec
from fuxi.core.servicecore import DRAINING, FAILED, READY, STARTING, ServiceCore

NODES = {"n1": 2.0, "n2": 2.0, "n3": 2.0}


def spec(version="1", replicas=3, max_unavailable=0, max_surge=1, **kw) -> dict:
    return ServiceSpec.model_validate({
        "name": "svc", "class": "m:C", "version": version, "replicas": replicas,
        "rollout": {"max_unavailable": max_unavailable, "max_surge": max_surge}, **kw}).to_doc()


class Sim:
    """Runs plan() and plays the shell: started replicas become ready unless their version
    is bad; drained and killed replicas stop."""

    def __init__(self, core: ServiceCore, bad_versions=()):
        self.core, self.bad, self.now = core, set(bad_versions), 0.0
        self.max_live = 0
        self.min_ready_seen: list[int] = []

    def step(self) -> None:
        self.now += 1.0
        for a in self.core.plan(self.now, NODES):
            if a.kind == "drain" or a.kind == "kill":
                self.core.stopped(a.rid, self.now)
        for r in list(self.core.replicas.values()):
            if r.state == STARTING:
                if r.version in self.bad:
                    self.core.start_failed(r.rid, "boom", self.now)
                else:
                    self.core.ready(r.rid, self.now)
        live = [r for r in self.core.replicas.values() if r.state in (STARTING, READY)]
        self.max_live = max(self.max_live, len(live))
        self.min_ready_seen.append(sum(r.state == READY for r in live))

    def run(self, steps=60) -> None:
        for _ in range(steps):
            self.step()

    def ready_versions(self) -> list[str]:
        return sorted(r.version for r in self.core.replicas.values() if r.state == READY)


def test_starts_spreads_and_scales():
    core = ServiceCore(spec(replicas=3))
    sim = Sim(core)
    sim.run(5)
    assert sim.ready_versions() == ["1"] * 3
    assert sorted(r.node for r in core.replicas.values()) == ["n1", "n2", "n3"]
    core.scale(5, sim.now)
    sim.run(5)
    assert len(sim.ready_versions()) == 5
    core.scale(1, sim.now)
    sim.run(5)
    assert sim.ready_versions() == ["1"]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(0, 3), st.integers(0, 3))
def test_rolling_upgrade_keeps_its_bounds(n, max_unavailable, max_surge):
    if max_unavailable == 0 and max_surge == 0:
        max_surge = 1
    core = ServiceCore(spec("1", n, max_unavailable, max_surge))
    sim = Sim(core)
    sim.run(10)
    sim.max_live, sim.min_ready_seen = 0, []
    core.upgrade(spec("2", n, max_unavailable, max_surge), sim.now)
    sim.run(4 * n + 10)
    assert sim.ready_versions() == ["2"] * n
    assert core.rollout["state"] == "done"
    assert sim.max_live <= n + max_surge
    assert min(sim.min_ready_seen) >= n - max_unavailable


def test_a_failing_version_rolls_back_and_the_old_one_stays_available():
    core = ServiceCore(spec("1", 3))
    sim = Sim(core, bad_versions={"2"})
    sim.run(5)
    core.upgrade(spec("2", 3), sim.now)
    sim.run(30)
    assert core.version == "1" and core.rollout["state"] == "rolled_back"
    assert "version 2" in core.rollout["reason"]
    assert sim.ready_versions() == ["1"] * 3
    assert min(sim.min_ready_seen) >= 3  # max_unavailable 0: never fewer than 3 ready


def test_unhealthy_replicas_are_replaced_with_backoff():
    core = ServiceCore(spec("1", 2))
    sim = Sim(core)
    sim.run(3)
    victim = next(iter(core.replicas))
    for _ in range(3):  # failure_threshold = 3
        core.health(victim, False, "timeout", sim.now)
    assert core.replicas[victim].state == FAILED
    acts = core.plan(sim.now, NODES)
    assert [a.kind for a in acts].count("kill") == 1
    core.stopped(victim, sim.now)
    # The replacement waits out the backoff (0.5 s after the first failure).
    assert not [a for a in core.plan(sim.now, NODES) if a.kind == "start"]
    assert [a.kind for a in core.plan(sim.now + 1, NODES)] == ["start"]


def test_crash_loops_back_off_exponentially():
    core = ServiceCore(spec("1", 1))
    sim = Sim(core, bad_versions={"1"})
    starts = []
    for t in range(200):
        now = t * 0.5
        for a in core.plan(now, NODES):
            if a.kind == "start":
                starts.append(now)
                core.start_failed(a.rid, "boom", now)
            elif a.kind == "kill":
                core.stopped(a.rid, now)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[0] <= 1.0 and max(gaps) >= 16.0  # 0.5, 1, 2, ... capped at 30 s


def test_died_and_drained_replicas_and_removal():
    core = ServiceCore(spec("1", 2))
    sim = Sim(core)
    sim.run(3)
    rid = next(iter(core.replicas))
    core.died(rid, "node lost", sim.now)
    assert rid not in core.replicas and any("died: node lost" in e for e in core.events)
    assert "kill" not in [a.kind for a in core.plan(sim.now, NODES)]  # nothing left to kill
    sim.run(5)
    assert len(sim.ready_versions()) == 2
    core.remove(sim.now)
    acts = core.plan(sim.now, NODES)
    assert sorted(a.kind for a in acts) == ["drain", "drain"]
    assert all(r.state == DRAINING for r in core.replicas.values())
    for a in acts:
        core.stopped(a.rid, sim.now)
    assert core.gone


def test_desired_state_round_trips():
    core = ServiceCore(spec("1", 2))
    core.upgrade(spec("2", 2), 1.0)
    back = ServiceCore.from_desired(core.desired_doc())
    assert back.spec == core.spec and back.previous == core.previous
    back.adopt("svc-7", "1", "n1", 2.0)
    assert back.seq == 7 and back.replicas["svc-7"].state == STARTING

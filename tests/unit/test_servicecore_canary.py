"""A canary in the service reconcile core: it runs beside the stable version with its share,
promote rolls the service to it, rollback (by command or after failures) drains it."""

from __future__ import annotations

import pytest

from fuxi.core.servicecore import READY, ROLLBACK_AFTER_FAILURES, ServiceCore
from tests.unit.test_servicecore import Sim, spec


def settled(replicas=4) -> Sim:
    sim = Sim(ServiceCore(spec("1", replicas=replicas)))
    sim.run(30)
    return sim


def by_track(core: ServiceCore) -> dict:
    out: dict = {}
    for r in core.replicas.values():
        out.setdefault((r.version, r.share, r.state), 0)
        out[(r.version, r.share, r.state)] += 1
    return out


def test_a_canary_runs_beside_the_stable_version_with_its_share():
    sim = settled(4)
    sim.core.start_canary(spec("2", replicas=4), 10, sim.now)
    sim.run(10)
    assert by_track(sim.core) == {("1", None, READY): 4, ("2", 10.0, READY): 1}
    assert sim.core.canary_replicas_wanted() == 1
    # The replica's start carries its share: the replica registers it with Kuafu.
    doc = ServiceCore.from_desired(sim.core.desired_doc())
    assert doc.canary["percent"] == 10.0 and doc.canary["spec"]["version"] == "2"


def test_the_canary_follows_the_stable_count_and_a_new_percent_replaces_it():
    sim = settled(4)
    sim.core.start_canary(spec("2"), 60, sim.now)
    sim.run(10)
    assert by_track(sim.core)[("2", 60.0, READY)] == 3  # ceil(4 * 60%)
    sim.core.start_canary(spec("2"), 20, sim.now)
    sim.run(10)
    assert by_track(sim.core) == {("1", None, READY): 4, ("2", 20.0, READY): 1}


def test_promote_rolls_every_replica_to_the_canary_version():
    sim = settled(3)
    sim.core.start_canary(spec("2", replicas=1), 10, sim.now)
    sim.run(10)
    sim.min_ready_seen = []
    sim.core.promote_canary(sim.now)
    assert sim.core.canary is None and sim.core.version == "2"
    sim.run(40)
    assert by_track(sim.core) == {("2", None, READY): 3}  # the canary's replica was replaced
    assert sim.core.rollout["state"] == "done"
    assert min(sim.min_ready_seen) >= 3  # max_unavailable 0: never fewer ready than asked


def test_rollback_drains_the_canary_only():
    sim = settled(3)
    sim.core.start_canary(spec("2"), 10, sim.now)
    sim.run(10)
    sim.core.rollback_canary(sim.now)
    sim.run(5)
    assert by_track(sim.core) == {("1", None, READY): 3}
    assert sim.core.version == "1" and sim.core.canary is None


def test_a_failing_canary_rolls_itself_back():
    sim = settled(2)
    sim.bad = {"2"}
    sim.core.start_canary(spec("2"), 10, sim.now)
    sim.run(60)
    assert sim.core.canary is None
    assert by_track(sim.core) == {("1", None, READY): 2}
    assert any(f"{ROLLBACK_AFTER_FAILURES} of its replicas failed" in e
               for e in sim.core.events)


def test_removing_the_service_drains_its_canary_too():
    sim = settled(2)
    sim.core.start_canary(spec("2"), 50, sim.now)
    sim.run(10)
    sim.core.remove(sim.now)
    sim.run(10)
    assert sim.core.gone


@pytest.mark.parametrize("version,percent,match", [
    ("1", 10, "needs a new version"),
    ("2", 0, "expected a number"),
    ("2", 100, "expected a number"),
    ("2", float("nan"), "expected a number"),
    ("2", True, "expected a number"),
    ("2", "10", "expected a number"),
])
def test_bad_canaries_are_refused(version, percent, match):
    sim = settled(2)
    with pytest.raises(ValueError, match=match):
        sim.core.start_canary(spec(version), percent, sim.now)
    assert sim.core.canary is None


def test_no_canary_to_promote_or_roll_back_and_none_during_a_rollout():
    sim = settled(2)
    with pytest.raises(ValueError, match="no canary to promote"):
        sim.core.promote_canary(sim.now)
    with pytest.raises(ValueError, match="no canary to roll back"):
        sim.core.rollback_canary(sim.now)
    sim.core.upgrade(spec("2", replicas=2), sim.now)
    with pytest.raises(ValueError, match="rolling"):
        sim.core.start_canary(spec("3"), 10, sim.now)
    bad = dict(spec("3"), name="other")
    sim.run(30)
    with pytest.raises(ValueError, match="named 'other'"):
        sim.core.start_canary(bad, 10, sim.now)


def test_a_restarted_master_adopts_the_canary_replicas_as_canaries():
    sim = settled(2)
    sim.core.start_canary(spec("2"), 10, sim.now)
    sim.run(10)
    doc = sim.core.desired_doc()
    found = [(r.rid, r.version, r.node, r.share) for r in sim.core.replicas.values()]
    again = ServiceCore.from_desired(doc)
    for rid, version, node, share in found:
        again.adopt(rid, version, node, sim.now, share)
    for r in again.replicas.values():
        again.ready(r.rid, sim.now)
    # Nothing to start or drain: the adopted canary counts as the canary.
    assert [a.kind for a in again.plan(sim.now + 1, {"n1": 2.0, "n2": 2.0, "n3": 2.0})] == []


def test_a_canary_on_a_leaving_node_moves_once_its_replacement_is_ready():
    sim = settled(2)
    sim.core.start_canary(spec("2"), 10, sim.now)
    sim.run(10)
    (canary,) = [r for r in sim.core.replicas.values() if r.share is not None]
    acts = sim.core.plan(sim.now + 1, {"n1": 2.0, "n2": 2.0, "n3": 2.0},
                         leaving=frozenset({canary.node}))
    starts = [a for a in acts if a.kind == "start" and a.spec.get("traffic_share") == 10.0]
    assert len(starts) == 1 and starts[0].node != canary.node
    assert not any(a.kind == "drain" and a.rid == canary.rid for a in acts)  # not yet
    sim.core.ready(starts[0].rid, sim.now + 1)
    acts = sim.core.plan(sim.now + 2, {"n1": 2.0, "n2": 2.0, "n3": 2.0},
                         leaving=frozenset({canary.node}))
    assert any(a.kind == "drain" and a.rid == canary.rid for a in acts)

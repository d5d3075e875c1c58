"""A JobMaster's sync carries its blacklist and failures per node, which FuxiMaster aggregates
across jobs into the cluster-level blacklist. A hostile (or broken) JobMaster sending garbage
-- wrong types, unknown nodes, huge lists, absurd counts -- gets a clear BadInput before
anything changes, and whatever it claims it cannot exclude a node for another job: one job
counts once per node, and its own exclusions are capped so it can still run.

Drives FuxiMaster.sync itself (the actor's method, on a stand-in for its state: the ledger,
the node view and the blacklist are the real ones)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from fuxi.core import blacklist as bl
from fuxi.core.blacklist import ClusterBlacklist, cap
from fuxi.core.slots import Ledger
from fuxi.errors import BadInput

NODES = {f"n{i}": {"CPU": 4.0} for i in range(4)}
DEMANDS = {"cpu=1": {"shape": {"CPU": 1.0}, "wanted": 8}}


def master(jobs=("evil", "good")):
    fake = SimpleNamespace(
        auth_enabled=False, ledger=Ledger(), jobmasters={j: object() for j in jobs}, demands={},
        priorities={}, submit_seq={j: i for i, j in enumerate(jobs)}, nodes=dict(NODES),
        blacklists=ClusterBlacklist())
    from fuxi.shells.adoption import Adoption

    fake.adoption = Adoption(False, set())  # a master that found no job to adopt
    from fuxi.shells.hotnodes import HotNodeWatch

    fake.agents = SimpleNamespace(hot=HotNodeWatch())  # no node judged hot
    from fuxi.shells.admission import Admissions

    fake.admissions = Admissions(None, None, running=lambda: fake.jobmasters,
                                 start=lambda *a: None, tasks=set())  # queues: default only

    async def refresh(force=False):
        return None

    fake._refresh_nodes = refresh
    fake._service_slots = lambda: []
    from fuxi.shells.leadership import Leadership

    fake.leadership = Leadership(fake, "FuxiMaster", ["FuxiMaster"], None, None)  # no election
    from fuxi.shells.drains import MasterDrains

    fake.drains = MasterDrains(fake)  # no node is draining
    return fake


def sync(m, job, avoid, failures, demands=DEMANDS):
    from fuxi.shells.master import FuxiMaster  # imports Ray, starts nothing

    fn = FuxiMaster.__ray_metadata__.modified_class.sync
    return asyncio.run(fn(m, job, 50, demands, [], avoid, node_failures=failures))


@pytest.mark.parametrize("avoid, failures, match", [
    (None, {}, "avoid_nodes: got NoneType"),
    ("n0", {}, "avoid_nodes: got str"),
    ([{"n0": 1}], {}, "is not a node id"),
    (["n0"] * (bl.NODE_REPORT_ENTRIES_MAX + 1), {}, "NODE_REPORT_ENTRIES_MAX"),
    ([], "n0", "node_failures: got str"),
    ([], {("n0",): 3}, "is not a node id"),
    ([], {"n0": "3"}, "expected an integer"),
    ([], {"n0": float("inf")}, "expected an integer"),
    ([], {"n0": 2**70}, "FAILURE_COUNT_MAX"),
    ([], {str(i): 1 for i in range(bl.NODE_REPORT_ENTRIES_MAX + 1)}, "NODE_REPORT_ENTRIES_MAX"),
])
def test_garbage_reports_are_refused_before_anything_changes(avoid, failures, match):
    m = master()
    with pytest.raises(BadInput, match=match):
        sync(m, "evil", avoid, failures)
    assert m.demands == {} and m.ledger.to_dict() == {"grants": {}}  # nothing granted
    assert m.blacklists.tallies == {} and m.blacklists.entries == {}


def test_unknown_nodes_are_ignored_and_keep_nothing():
    m = master()
    ghosts = [f"ghost-{i}" for i in range(bl.NODE_REPORT_ENTRIES_MAX)]
    reply = sync(m, "evil", ghosts, {g: 10 for g in ghosts})
    assert m.blacklists.tallies == {} and reply["excluded"] == []
    assert sum(g["n"] for g in reply["grants"]) == 8


def test_one_job_claiming_every_node_bad_excludes_nothing_for_another():
    m = master()
    for k in range(1, 30):  # ever larger totals, every node blacklisted by it
        reply = sync(m, "evil", sorted(NODES), {n: k * 1000 for n in NODES})
        assert len(reply["excluded"]) == cap(len(NODES))  # capped: it can still run
        assert all(g["node_id"] not in reply["excluded"] for g in reply["grants"])
    assert m.blacklists.view(0.0) == []  # no cluster-level entry from one job
    good = sync(m, "good", [], {})
    assert good["excluded"] == [] and sum(g["n"] for g in good["grants"]) == 8


def test_enough_distinct_jobs_exclude_a_node_for_everyone_and_grants_avoid_it():
    jobs = [f"j{i}" for i in range(bl.CLUSTER_FAILURE_JOBS_MIN)] + ["bystander"]
    m = master(jobs)
    for j in jobs[:-1]:
        sync(m, j, [], {"n2": bl.CLUSTER_FAILURES_PER_JOB_MIN}, demands={})
    [entry] = m.blacklists.view(0.0)
    assert entry["node"] == "n2" and entry["level"] == "cluster"
    reply = sync(m, "bystander", [], {})
    assert reply["excluded"] == ["n2"]
    assert reply["grants"] and all(g["node_id"] != "n2" for g in reply["grants"])
    assert m.ledger.used_on("n2") == {}

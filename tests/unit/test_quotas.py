"""Queues as quota groups (fuxi.shells.quotas, fuxi.shells.admission.checked_queues): the
configuration's checks, its mapping onto the scheduling core's groups, and FuxiMaster's sync
(slots.grant / apply_grants) with it: lending, caps and reclaim as the shell sees them."""

from __future__ import annotations

import math

import pytest

from fuxi.core import slots
from fuxi.errors import BadInput
from fuxi.shells import quotas
from fuxi.shells.admission import checked_queues
from cli.queue import parse_amounts

MIB = 1024 * 1024


# ------------------------------------------------------------------ configuration checks


@pytest.mark.parametrize("conf, field", [
    ({"min": {"cpus": 2}}, "unknown resource 'cpus'"),
    ({"min": {"CPU": 2}}, "unknown resource 'CPU'"),
    ({"max": {"custom:": 2}}, "unknown resource 'custom:'"),
    ({"max": {"custom:GPU": 2}}, "unknown resource 'custom:GPU'"),
    ({"max": {"custom:bad name": 2}}, "unknown resource 'custom:bad name'"),
    ({"min": {3: 2}}, "unknown resource '3'"),
    ({"min": {"cpu": -1}}, r"min\['cpu'\]: got '-1'"),
    ({"min": {"cpu": math.nan}}, r"min\['cpu'\]: got 'nan'"),
    ({"max": {"cpu": math.inf}}, r"max\['cpu'\]: got 'inf'"),
    ({"max": {"cpu": 1e300}}, r"max\['cpu'\]: got '1e\+300'"),
    ({"min": {"cpu": True}}, r"min\['cpu'\]: got 'True'"),
    ({"min": {"cpu": "2"}}, r"min\['cpu'\]: got '2'"),
    ({"min": {"cpu": 4}, "max": {"cpu": 2}}, r"min\['cpu'\]=4 is above max\['cpu'\]=2"),
    ({"min": [("cpu", 2)]}, "min: got .*expected a mapping of resources"),
    ({"max": "cpu=4"}, "max: got 'cpu=4', expected a mapping"),
    ({"min": {f"custom:r{i}": 1 for i in range(17)}}, "min: got 17 resources"),
    ({"weight": 0}, "weight: got '0'"),
    ({"weight": -2}, "weight: got '-2'"),
    ({"weight": math.inf}, "weight: got 'inf'"),
    ({"weight": math.nan}, "weight: got 'nan'"),
    ({"weight": True}, "weight: got 'True'"),
    ({"weight": "2"}, "weight: got '2'"),
    ({"weight": 1e9}, "weight: got '1000000000.0'"),
    ({"quota": {}}, "expected a mapping with at most the keys jobs_running_max, min, max, weight"),
])
def test_garbage_quota_is_refused_naming_the_field(conf, field):
    with pytest.raises(BadInput, match=field):
        checked_queues({"prod": conf})


def test_too_many_queues_with_a_quota_are_refused():
    many = {f"q{i}": {"weight": 2} for i in range(quotas.QUOTA_QUEUES_MAX + 1)}
    with pytest.raises(BadInput, match="carry a quota, expected at most QUOTA_QUEUES_MAX"):
        checked_queues(many)
    del many["q0"]
    assert len(checked_queues(many)) == quotas.QUOTA_QUEUES_MAX + 1  # and default


def test_a_checked_config_checks_again_unchanged_and_defaults_are_explicit():
    conf = checked_queues({"prod": {"min": {"cpu": 2, "memory_mb": 512}, "max": {"cpu": 4},
                                    "weight": 2, "jobs_running_max": 3},
                           "etl": None, "gpu": {"max": {"gpu": 1, "custom:accel": 2}}})
    assert conf["prod"] == {"jobs_running_max": 3, "min": {"cpu": 2.0, "memory_mb": 512.0},
                            "max": {"cpu": 4.0}, "weight": 2.0}
    assert conf["etl"] == conf["default"] == {"jobs_running_max": None, "min": {}, "max": None,
                                              "weight": 1.0}
    assert checked_queues(conf) == conf  # what the store holds reloads after a restart
    # The old stored form (limits only) still loads.
    assert checked_queues({"small": {"jobs_running_max": 1}})["small"]["max"] is None


def test_the_cli_flag_parser_refuses_garbage():
    assert parse_amounts("--min", ["cpu=2,memory_mb=10", "gpu=1"]) == {
        "cpu": 2.0, "memory_mb": 10.0, "gpu": 1.0}
    for bad in (["cpu"], ["=2"], ["cpu=two"], ["cpu=2=3"]):
        with pytest.raises(BadInput, match="--min: got .*expected RESOURCE=AMOUNT"):
            parse_amounts("--min", bad)
    with pytest.raises(BadInput, match="--max: got 17 resources"):
        parse_amounts("--max", [",".join(f"custom:r{i}=1" for i in range(17))])
    # nan parses as a float here; the master refuses it naming the field
    with pytest.raises(BadInput, match=r"min\['cpu'\]: got 'nan'"):
        checked_queues({"q": {"min": parse_amounts("--min", ["cpu=nan"])}})


# ------------------------------------------------------------------ mapping onto the core


def test_queues_map_to_core_groups_in_rays_vocabulary():
    conf = checked_queues({"prod": {"min": {"cpu": 2, "memory_mb": 3}, "max": {"custom:acc": 1},
                                    "weight": 3}, "plain": {"jobs_running_max": 2},
                           "light": {"weight": 0.5}})
    groups = quotas.core_groups(conf, {"n1": {"CPU": 2.0, "memory": 5.0}, "n2": {"CPU": 2.0}})
    assert set(groups) == {quotas.SHARED_GROUP, quotas.SERVICES_GROUP, "prod", "light"}
    assert groups[quotas.SERVICES_GROUP].min == {"CPU": 4.0, "memory": 5.0}  # the cluster
    assert groups["prod"].min == {"CPU": 2.0, "memory": 3.0 * MIB}
    assert groups["prod"].max == {"acc": 1.0} and groups["prod"].weight == 3.0
    assert groups["light"].max is None and groups["light"].weight == 0.5
    assert quotas.group_of(conf, "plain") == quotas.group_of(conf, "default") == quotas.SHARED_GROUP
    assert quotas.group_of(conf, "prod") == "prod"
    assert quotas.group_of(conf, "gone") == quotas.SHARED_GROUP  # a queue removed meanwhile
    assert quotas.from_ray({"CPU": 2.0, "memory": 3.0 * MIB, "acc": 1.0, "GPU": 0.0}) == {
        "cpu": 2.0, "memory_mb": 3.0, "custom:acc": 1.0}


NODES = {"n1": {"CPU": 2.0}, "n2": {"CPU": 2.0}}  # the integration cluster's shape
CONF = checked_queues({"gold": {"min": {"cpu": 3}}, "bronze": {"max": {"cpu": 3}}})
QUEUES = {"a": "gold", "b": "bronze", "c": "default"}


def _demands(wanted: dict[str, int], seq: dict[str, int] | None = None) -> list[slots.Demand]:
    jobs = {j: {"t": {"shape": {"CPU": 1.0}, "wanted": n}} for j, n in wanted.items()}
    seq = seq or {j: i for i, j in enumerate(wanted)}
    return quotas.demands(jobs, {j: 50 for j in wanted}, seq, QUEUES, CONF, "default")


def _sync(ledger: slots.Ledger, demands, job: str) -> slots.GrantPlan:
    plan = slots.grant(NODES, ledger, demands, job, quota_groups=quotas.core_groups(CONF))
    slots.apply_grants(ledger, NODES, plan, demands)
    return plan


def _held(ledger: slots.Ledger, job: str) -> int:
    return sum(sum(ledger.held(d).values()) for d in ledger.demands_of(job))


def test_a_borrower_is_capped_by_its_max_then_gives_back_the_guarantee():
    ledger = slots.Ledger()
    ds = _demands({"b": 10})
    assert {d.quota_group for d in ds} == {"bronze"}
    plan = _sync(ledger, ds, "b")
    # bronze borrows gold's idle guarantee, but never past its own max of 3 of the 4 CPUs
    assert plan.targets == {"b/t": 3} and _held(ledger, "b") == 3
    assert _sync(ledger, ds, "b").grants == () and _held(ledger, "b") == 3
    # gold's job arrives: its guarantee comes first, bronze's target drops to what is left
    ds = _demands({"b": 10, "a": 10})
    plan_a = _sync(ledger, ds, "a")
    assert plan_a.targets == {"a/t": 3} and _held(ledger, "a") == 1  # the one free CPU
    plan_b = slots.grant(NODES, ledger, ds, "b", quota_groups=quotas.core_groups(CONF))
    assert plan_b.targets == {"b/t": 1} and not plan_b.preempt  # batch drains; no kill
    # bronze's JobMaster hands back two slots as its workers go idle; gold takes them
    for node, n in list(ledger.held("b/t").items()):
        give = min(n, _held(ledger, "b") - 1)
        if give > 0:
            ledger.release("b/t", node, give)
    _sync(ledger, ds, "a")
    assert _held(ledger, "a") == 3 and _held(ledger, "b") == 1
    # bronze asking again gets nothing while gold holds its guarantee
    assert _sync(ledger, ds, "b").grants == ()
    # gold's job ends: bronze borrows again, up to its cap
    ledger.release_job("a")
    ds = _demands({"b": 10})
    assert _sync(ledger, ds, "b").targets == {"b/t": 3} and _held(ledger, "b") == 3


def test_without_quotas_the_mapping_is_the_old_single_group():
    ledger = slots.Ledger()
    ds = _demands({"c": 10, "b": 0})
    assert {d.quota_group for d in ds} == {quotas.SHARED_GROUP, "bronze"}
    _sync(ledger, ds, "c")
    assert _held(ledger, "c") == 4  # the default queue has no cap: all four CPUs


@pytest.mark.parametrize("job", ["c", "a"])  # a plain queue's job, a guaranteed queue's job
def test_services_keep_coming_before_batch_even_a_guarantee(job):
    ledger = slots.Ledger()
    ds = _demands({job: 10})
    _sync(ledger, ds, job)
    assert _held(ledger, job) == 4  # alone on the cluster: all of it (gold borrows past min)
    svc = slots.Demand("svc:web", "svc:web", 1000, 0, {"CPU": 1.0}, 2, quotas.SERVICES_GROUP)
    plan = slots.grant(NODES, ledger, ds + [svc], job, online_ids={"svc:web"},
                       quota_groups=quotas.core_groups(CONF, NODES))
    assert plan.targets == {f"{job}/t": 2} and plan.preempt  # the replica waits: batch stops
    # Without the services' own group, gold's guarantee would beat the replica.
    plan = slots.grant(NODES, ledger, ds + [svc], job, online_ids={"svc:web"},
                       quota_groups=quotas.core_groups(CONF) | {
                           quotas.SERVICES_GROUP: quotas.QuotaGroup(quotas.SERVICES_GROUP)})
    assert plan.targets[f"{job}/t"] == (3 if job == "a" else 2)


def test_usage_counts_per_queue_and_keeps_the_peak():
    ledger = slots.Ledger()
    ds = _demands({"b": 10, "a": 1})
    _sync(ledger, ds, "b")
    _sync(ledger, ds, "a")
    svc = slots.Demand("svc:x", "svc:x", 1000, 0, {"CPU": 0.5}, 1, quotas.SERVICES_GROUP)
    ledger.grant(svc, "n1", 1)  # services are in no queue
    usage = quotas.QuotaUsage()
    usage.observe(ledger, QUEUES, "default")
    assert usage.view("bronze") == {"used": {"cpu": 3.0}, "used_peak": {"cpu": 3.0}}
    assert usage.view("gold")["used"] == {"cpu": 1.0}
    assert usage.view("default") == {"used": {}, "used_peak": {}}
    ledger.release_job("b")
    usage.observe(ledger, QUEUES, "default")
    assert usage.view("bronze") == {"used": {}, "used_peak": {"cpu": 3.0}}


# ------------------------------------------------------------------ hard state


def test_a_quota_is_stored_with_the_queues_and_a_new_master_loads_it(tmp_path):
    """What ``configure`` writes to the store is what a restarted FuxiMaster's Admissions
    reads back (a FileStore, as a `fuxi up` cluster without Nuwa keeps it); a refused change
    writes nothing."""
    import asyncio

    from fuxi.io.store import FileStore
    from fuxi.shells.admission import CONFIG_KEY, Admissions
    from fuxi.shells.offloop import AsyncStore, OffLoop

    store = FileStore(str(tmp_path / "state"))
    loop_threads = OffLoop("test-store", 1)
    try:
        def admissions():
            return Admissions(AsyncStore(store, loop_threads), store.get(CONFIG_KEY),
                              running=lambda: (), start=lambda *a: None, tasks=set())

        async def configure(adm, queues):
            return await adm.configure(queues, None)

        first = admissions()
        asyncio.run(configure(first, {"prod": {"min": {"cpu": 2}, "max": {"cpu": 4},
                                               "weight": 2}}))
        with pytest.raises(BadInput, match="unknown resource 'cpus'"):
            asyncio.run(configure(first, {"prod": {"min": {"cpus": 2}}}))
        again = admissions()  # a FuxiMaster started after a restart
        assert again.queues == first.queues
        assert again.queues["prod"] == {"jobs_running_max": None, "min": {"cpu": 2.0},
                                        "max": {"cpu": 4.0}, "weight": 2.0}
        assert again.quota_groups({})["prod"].min == {"CPU": 2.0}
        view = again.view()["queues"]["prod"]
        assert (view["min"], view["max"], view["weight"], view["used"]) == (
            {"cpu": 2.0}, {"cpu": 4.0}, 2.0, {})
    finally:
        loop_threads.shutdown()


def test_a_hostile_stored_config_is_refused_at_load_naming_the_field():
    from fuxi.shells.admission import Admissions

    with pytest.raises(BadInput, match=r"queue 'prod' max\['cpu'\]: got 'nan'"):
        Admissions(None, {"queues": {"prod": {"max": {"cpu": math.nan}}}}, running=lambda: (),
                   start=lambda *a: None, tasks=set())

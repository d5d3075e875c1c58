"""Two quota groups competing on the shared two-node Ray cluster (4 CPUs): ``gold`` is
guaranteed 3 CPUs, ``bronze`` is capped at 3. While gold is idle, bronze borrows its
guarantee (up to its own cap, never all 4); when gold's job arrives, bronze's JobMaster gives
the slots back as its workers finish their instances, gold holds its guarantee within a
bounded wait, and both jobs give exactly the right output. Observed through FuxiMaster's
ledger (``queues()``: what each queue holds now and the most it ever held), not through
timing."""

from __future__ import annotations

import glob
import time

import pytest

from fuxi.errors import BadInput
from fuxi.core.reclaim import RECLAIM_GRACE_S, ReclaimClock
from tests.integration.jobhelpers import read_output

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

FNS = "tests.integration.taskfns"
BORROW_WAIT_S = 60.0  # bronze's job gets its workers (worker start-up on a loaded machine)
RECLAIM_WAIT_S = 90.0  # gold holds its guarantee: bronze's busy workers finish an instance
POLL_S = 0.1
CLUSTER_CPUS = 4.0  # conftest: two nodes of 2 CPUs
# The forced reclaim's grace, set in the live FuxiMaster (its Admissions' ReclaimClock) for one
# test instead of waiting RECLAIM_GRACE_S = 10 s; bronze's attempts outlast it by as long as
# gold's workers may take to start on a loaded machine.
TEST_GRACE_S = 3.0
START_MARGIN_S = 15.0


def _set_grace(client, grace_s: float) -> float:
    """Set the FuxiMaster's reclaim grace (validated as ReclaimClock validates it); returns
    the grace it held before."""
    import ray

    grace_s = ReclaimClock(grace_s).grace_s

    def apply(self, grace_s=grace_s):
        before, self.admissions.reclaim.grace_s = self.admissions.reclaim.grace_s, grace_s
        return before

    return ray.get(client.master.__ray_call__.remote(apply), timeout=30)


def spec(name: str, tmp_path, queue: str, instances: int, sleep_s: float) -> dict:
    return {"name": name, "queue": queue, "speculation": {"enabled": False},
            "params": {"dir": str(tmp_path / name), "sleep_s": sleep_s},
            "tasks": {"t": {"fn": f"{FNS}:sleepy", "instances": instances,
                            "output": str(tmp_path / name / "out")}}}


def cpu(view: dict, queue: str, key: str = "used") -> float:
    return view["queues"][queue][key].get("cpu", 0.0)


def watch_until(client, cond, timeout_s: float, seen: list) -> dict:
    """Poll the queues' view until ``cond(view)``; every view polled is kept in ``seen``."""
    deadline = time.monotonic() + timeout_s
    while True:
        view = client.queues()
        seen.append(view)
        if cond(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout_s}s; last view: {view['queues']}")
        time.sleep(POLL_S)


def test_two_quota_groups_lend_cap_and_reclaim(limits, tmp_path):
    client = limits
    view = client.configure_queues({"gold": {"min": {"cpu": 3}},
                                    "bronze": {"max": {"cpu": 3}, "weight": 2}})
    assert view["queues"]["gold"]["min"] == {"cpu": 3.0}
    assert view["queues"]["bronze"]["max"] == {"cpu": 3.0}
    assert view["queues"]["bronze"]["weight"] == 2.0
    seen: list[dict] = []
    bronze = client.submit(spec("bronze", tmp_path, "bronze", 16, 1.0))
    # Gold is idle: bronze borrows its guarantee, up to its own cap (one CPU stays free).
    watch_until(client, lambda v: cpu(v, "bronze") >= 3.0, BORROW_WAIT_S, seen)
    gold = client.submit(spec("gold", tmp_path, "gold", 6, 1.0))
    # Gold's job gets its guarantee back from the borrower within a bounded wait.
    at_guarantee = watch_until(client, lambda v: cpu(v, "gold") >= 3.0, RECLAIM_WAIT_S, seen)
    assert cpu(at_guarantee, "bronze") <= CLUSTER_CPUS - 3.0
    ends = {j: client.wait(j, timeout_s=120) for j in (bronze, gold)}
    assert all(s["state"] == "succeeded" for s in ends.values()), \
        {j: (s["state"], s.get("report")) for j, s in ends.items()}
    for view in seen:  # never more than the cap, never more than the cluster
        assert cpu(view, "bronze") <= 3.0, view["queues"]["bronze"]
        assert cpu(view, "bronze") + cpu(view, "gold") <= CLUSTER_CPUS
    final = client.queues()
    assert cpu(final, "bronze", "used_peak") == 3.0  # the ledger's high-water mark: the cap held
    assert cpu(final, "gold", "used_peak") == 3.0
    assert cpu(final, "bronze") == cpu(final, "gold") == 0.0  # all given back
    # Exactly the right output: every instance once (3 rows each), none lost to the reclaim.
    for name, n in (("bronze", 16), ("gold", 6)):
        t = read_output(str(tmp_path / name / "out"))
        got = sorted(t.column("instance").to_pylist())
        assert got == sorted(list(range(n)) * 3), (name, got)
        assert ends[bronze if name == "bronze" else gold]["tasks"]["t"]["succeeded"] == n


def test_a_guarantee_is_reclaimed_by_force_from_workers_that_never_go_idle(limits, tmp_path):
    """Bronze's three attempts each sleep far longer than the reclaim grace, so none of its
    workers would go idle before gold's job is done: gold holds its guarantee only because,
    after the grace (TEST_GRACE_S here), FuxiMaster's syncs said preempt and bronze's
    JobMaster stopped two busy workers. No bronze attempt has finished by then (counted on disk); the preempted
    instances run again, and both outputs are exact."""
    client = limits
    assert _set_grace(client, TEST_GRACE_S) == RECLAIM_GRACE_S
    try:
        _forced_reclaim(client, tmp_path, TEST_GRACE_S)
    finally:
        assert _set_grace(client, RECLAIM_GRACE_S) == TEST_GRACE_S


def _forced_reclaim(client, tmp_path, grace_s: float) -> None:
    client.configure_queues({"gold": {"min": {"cpu": 3}}, "bronze": {"max": {"cpu": 3}}})
    long_s = grace_s + START_MARGIN_S
    seen: list[dict] = []
    bronze = client.submit(spec("bronze", tmp_path, "bronze", 3, long_s))
    bronze_dir = str(tmp_path / "bronze")
    watch_until(client, lambda v: cpu(v, "bronze") >= 3.0, BORROW_WAIT_S, seen)
    watch_until(client, lambda v: len(glob.glob(f"{bronze_dir}/run-*")) >= 3, BORROW_WAIT_S,
                seen)  # all three attempts are running, none will end for long_s
    gold = client.submit(spec("gold", tmp_path, "gold", 3, long_s))
    watch_until(client, lambda v: cpu(v, "gold") >= 3.0, grace_s + BORROW_WAIT_S, seen)
    assert glob.glob(f"{bronze_dir}/done-*") == [], "a bronze attempt ended: not a forced reclaim"
    st = client.status(bronze)
    assert st["preempted_attempts"] >= 2, st
    ends = {j: client.wait(j, timeout_s=long_s * 4 + 60) for j in (bronze, gold)}
    assert all(s["state"] == "succeeded" for s in ends.values()), \
        {j: (s["state"], s.get("report")) for j, s in ends.items()}
    for name in ("bronze", "gold"):
        got = sorted(read_output(str(tmp_path / name / "out")).column("instance").to_pylist())
        assert got == sorted(list(range(3)) * 3), (name, got)
    assert ends[bronze]["tasks"]["t"]["failed"] == 0  # preempted attempts are no failures
    for view in seen:
        assert cpu(view, "bronze") + cpu(view, "gold") <= CLUSTER_CPUS


def test_a_quota_survives_in_the_config_and_garbage_is_refused(limits):
    client = limits
    for queues, msg in [
        ({"q": {"min": {"cpus": 1}}}, "unknown resource 'cpus'"),
        ({"q": {"min": {"cpu": -1}}}, r"min\['cpu'\]: got '-1'"),
        ({"q": {"min": {"cpu": 4}, "max": {"cpu": 2}}}, "is above max"),
        ({"q": {"weight": 0}}, "weight: got '0'"),
        ({"q": {"max": {"cpu": float("inf")}}}, r"max\['cpu'\]: got 'inf'"),
        ({"q": {"max": "all"}}, "expected a mapping of resources"),
    ]:
        with pytest.raises(BadInput, match=msg):
            client.configure_queues(queues)
    assert "q" not in client.queues()["queues"]  # nothing half-applied
    client.configure_queues({"q": {"min": {"cpu": 1, "memory_mb": 64}, "weight": 3}})
    q = client.queues()["queues"]["q"]
    assert (q["min"], q["max"], q["weight"]) == ({"cpu": 1.0, "memory_mb": 64.0}, None, 3.0)

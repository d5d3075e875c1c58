"""The scheduling core driven by the issue-16 simulator (``bench/bench_scheduler.py``) at a
small size: ~50 nodes, 50 jobs, 2,000 instances with failures, stragglers and their backups,
node preferences and four quota groups (guarantees, a cap, lending, reclaim).

What it checks is what the 5,000-node run needs and once lacked: every run *ends*, with every
instance done, the books consistent (checked every few events), and nothing left held. It never looks
at speed. Seeds 3, 4 and 7 of this size never ended before the fix in ``quota.borrowed``
(reclaim revoking and re-granting between two groups below their guarantees); the simulator
now stops such a round with an error (``ROUND_GRANTS_PER_SLOT_MAX``) instead of spinning.
Replay one seed with ``SCHED_SEED=3 pytest tests/sim/test_scheduler_simulation.py``.
"""

from __future__ import annotations

import os

import pytest

from bench.bench_scheduler import Sim, parse
from fuxi.core.sched import RESOURCE_TOLERANCE, scheduler

pytestmark = pytest.mark.timeout(120)  # a backstop only: the simulator bounds each round

SEEDS = [int(os.environ["SCHED_SEED"])] if os.environ.get("SCHED_SEED") else list(range(10))
CHECK_EVERY = 5  # events between full checks of the books (every event: 2.5x the time)
SIZE = ["--nodes", "50", "--jobs", "50", "--instances", "2000", "--baseline-nodes", "0"]


def run(seed: int) -> Sim:
    return Sim(parse(SIZE + ["--seed", str(seed), "--check-every", str(CHECK_EVERY)])).run()


@pytest.fixture(scope="module")
def runs() -> dict[int, Sim]:
    return {seed: run(seed) for seed in SEEDS}


@pytest.mark.parametrize("seed", SEEDS)
def test_every_instance_is_done_and_nothing_is_left_held(runs, seed):
    sim = runs[seed]
    r = sim.result()
    assert r["instances_finished"] == r["instances"] == 2000, f"seed={seed}"
    assert all(sim.inst_done.values()), f"seed={seed}"
    assert sim.waiting_n == 0 and not any(sim.running.values()), f"seed={seed}"
    s = sim.s
    # every slot given back: nodes empty, groups using nothing, no demand holding or wanting
    for node in s.index.nodes.values():
        assert node.workers == 0, f"seed={seed}: {node.node_id} holds {node.workers}"
        for k, total in node.total.items():
            assert abs(node.free.get(k, 0.0) - total) < 1e-6, f"seed={seed}: {node.node_id} {k}"
    for name, used in s.group_used.items():
        assert all(abs(v) < 1e-6 for v in used.values()), f"seed={seed}: {name} uses {used}"
    for d in s.demands.values():
        assert d.held_total == 0 and d.wanted == 0, f"seed={seed}: {d.did}"
    # every grant was for an attempt that waited, every attempt that ran was granted once
    assert r["decisions"] == sum(sim.local.values()) >= r["instances"]
    assert 0 < r["cpu_utilisation_any_pending"] <= 1.0 + 1e-9


def test_the_runs_exercise_failures_backups_and_reclaim(runs):
    """A sweep that never reclaimed, failed or raced a backup would prove little."""
    if os.environ.get("SCHED_SEED"):
        pytest.skip("one seed replayed: the sweep's coverage is not in question")
    results = [sim.result() for sim in runs.values()]
    assert sum(r["failures"] for r in results) > 0
    assert sum(r["backups"] for r in results) > 0 and sum(r["backups_won"] for r in results) > 0
    assert sum(1 for r in results if r["revocations"] > 0) >= 3  # reclaim happens in several
    assert sum(r["node_local"] > 0 for r in results) == len(results)


def pre_fix_borrowed(group, used, needs) -> bool:
    """The rule before the fix: any resource beyond the guarantee counts, named or not."""
    return any(v > group.min.get(k, 0.0) + RESOURCE_TOLERANCE for k, v in used.items())


@pytest.mark.parametrize("seed", [4, 7])  # 3 fails too, later and slower
def test_negative_control_the_pre_fix_reclaim_rule_is_caught(monkeypatch, seed):
    """With the old rule put back, the same runs do not end: the simulator's round bound
    stops them and says why (so this test file would have caught the 5,000-node hang)."""
    monkeypatch.setattr(scheduler, "borrowed", pre_fix_borrowed)
    with pytest.raises(AssertionError, match="revoking and re-granting without end"):
        Sim(parse(SIZE + ["--seed", str(seed)])).run()

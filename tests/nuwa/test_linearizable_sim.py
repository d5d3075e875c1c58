"""Linearizability of Nuwa's put / get / cas under the simulator's faults.

Simulated clients (``sim_clients``) talk to a 3- or 5-replica Raft group (``sim_raft``) that
drops, delays, duplicates and reorders messages, partitions, crashes and restarts replicas
with and without their disks. Every replica applies the log to its own ``nuwa.core.tree.Tree``.
Each run's whole client history (invoke / ok / fail / unknown) must be linearizable against
the key-value model (``nuwa.linearizability``); "could not decide" fails too.

Every seed builds a different run; a failure names its seed and the replay command
``NUWA_SEED=123 python -m pytest tests/nuwa/test_linearizable_sim.py -q``. ``NUWA_SEEDS=5000``
widens the sweep (default 200: even seeds run 3 replicas, odd seeds 5).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from nuwa.core.raft import RaftNode
from tests.nuwa.sim_clients import Broken, ClientSim, SimBug, simulate_clients
from tests.nuwa.sim_raft import InvariantError

SEEDS = ([int(os.environ["NUWA_SEED"])] if os.environ.get("NUWA_SEED")
         else list(range(int(os.environ.get("NUWA_SEEDS", "200")))))
CHECK_TIME_LIMIT_S = 10.0
NEGATIVE_CONTROL_SEEDS = 10


def replay(seed: int) -> str:
    return f"NUWA_SEED={seed} python -m pytest {ClientSim.replay_test} -q"


def run(seed: int, broken: Broken = Broken.NONE) -> ClientSim:
    try:
        return simulate_clients(seed, broken=broken)
    except SimBug as err:
        raise AssertionError(f"{err}\nreplay: {replay(seed)}") from None
    # A sim_raft InvariantError already carries the seed, replay command and recent trace.


@pytest.mark.parametrize("seed", SEEDS)
def test_client_history_is_linearizable_under_faults(seed):
    sim = run(seed)
    result = sim.check(CHECK_TIME_LIMIT_S)
    where = (f"seed={seed} n={sim.n}, {len(sim.history)} ops by {len(sim.clients)} clients; "
             f"replay: {replay(seed)}")
    assert not result.timed_out, f"checker could not decide ({where}): {result.explanation}"
    assert result.ok, f"not linearizable ({where}):\n{result.explanation}"


def test_same_seed_same_history():
    a, b = simulate_clients(11), simulate_clients(11)
    assert a.history.ops() == b.history.ops() and a.stats == b.stats


def _outcomes(sim: ClientSim) -> Counter:
    out: Counter = Counter()
    for op in sim.history.ops():
        out[(op.kind, op.status)] += 1
        if op.kind == "cas" and op.status == "ok":
            out[("cas", op.result)] += 1
    return out


def test_the_sweep_exercises_every_outcome():
    """Without this, a workload that only ever timed out would pass trivially."""
    if os.environ.get("NUWA_SEED"):
        pytest.skip("single-seed replay")
    total: Counter = Counter()
    for seed in range(20):
        sim = run(seed)
        total.update(_outcomes(sim))
        total.update(sim.client_stats)
    for what in [("get", "ok"), ("put", "ok"), ("cas", True), ("cas", False),
                 ("put", "unknown"), ("cas", "unknown"), ("put", "fail"), ("cas", "fail"),
                 "pauses", "tree_restores", "follower_reads", "resets", "leadership_lost", "timeouts",
                 "retries"]:
        assert total[what] > 0, f"no {what} in 20 seeds: {dict(total)}"
    acknowledged = total[("get", "ok")] + total[("put", "ok")] + total[("cas", "ok")]
    assert acknowledged > 20 * 50, f"too few acknowledged ops: {dict(total)}"


@pytest.mark.parametrize("broken", [Broken.LOCAL_READS, Broken.ACK_BEFORE_COMMIT])
def test_the_check_catches_a_broken_service(broken):
    """Negative control: serving reads from the local tree without a read index, or
    acknowledging a put when proposed instead of when applied, must be reported as not
    linearizable (a definite verdict, not a timeout) on one of a handful of seeds."""
    if os.environ.get("NUWA_SEED"):
        pytest.skip("single-seed replay")
    for seed in range(NEGATIVE_CONTROL_SEEDS):
        result = run(seed, broken).check(CHECK_TIME_LIMIT_S)
        if not result.ok and not result.timed_out:
            assert "not linearizable" in result.explanation
            return
    pytest.fail(f"{broken.value}: {NEGATIVE_CONTROL_SEEDS} seeds and every history passed")


def test_paused_leaders_exercise_the_read_index_round(monkeypatch):
    """A Raft leader that answers read_index from its commit index without a heartbeat round
    (so a deposed leader that still thinks it leads answers too) must be caught. Without
    process pauses the simulator almost never has such a leader; with them, the simulator's
    read-floor invariant fires within a few seeds. (The history check alone rarely sees it:
    the stale window must also hold a read of a key written and acknowledged meanwhile.)"""
    if os.environ.get("NUWA_SEED"):
        pytest.skip("single-seed replay")

    def read_without_quorum_round(self, frm, context):
        if not self._committed_in_term():
            self.reads.wait_for_commit(frm, context)
            return
        self._answer_read(frm, self.log.committed, context)

    monkeypatch.setattr(RaftNode, "_leader_read", read_without_quorum_round)
    for seed in range(200):  # the first hit is at seed 46 (about 1 in 18 seeds)
        try:
            simulate_clients(seed)
        except InvariantError as err:
            assert "stale read" in str(err) and f"seed={seed}" in str(err)
            return
    pytest.fail("200 seeds with a read index that skips the quorum round and no stale read")

"""The scheduling core decides exactly what it decided before its speed-ups (issue 16 part 2).

Every grant (demand, node, locality, and its count when not 1) and revocation (demand, node,
count, reason) of the 50-node simulator run is hashed in order. ``PINNED``: the simulator
driving the core one slot per call (``--unbatched``); recorded with the core as it was
before the perf16 branch (commit 29f4366: one heap of victims, no fit cache) and unchanged
by the batch16 branch (batched grants, cached group facts, lazy claims in the free index):
``decide(now)`` of one slot still decides exactly that. ``PINNED_BATCHED``: the default,
batched driver (``ask_at``, ``decide(now, 64)``, ``release(done=True)``), which decides
differently on purpose (grants of many slots), recorded with branch batch16's core; it pins
what the batched protocol decides from now on. A change that *means* to decide differently
updates them on purpose, saying why in its commit. Negative controls: victims read
oldest-first move an unbatched hash, and batches without their fairness cap move a batched
one, and slot reuse that ignores waiting rivals moves a heartbeat one, so this file can
fail. ``PINNED_HEARTBEAT``: the default driver since heartbeats (ends sent once per 0.05 s
heartbeat, ``reuse`` of a finished slot for the job's next instance; branch sched).
"""

from __future__ import annotations

import hashlib

import pytest

from bench.bench_scheduler import Sim, parse
from fuxi.core.sched import batch, held
from fuxi.core.sched.scheduler import Scheduler

pytestmark = pytest.mark.timeout(120)

SIZE = ["--nodes", "50", "--jobs", "50", "--instances", "2000", "--baseline-nodes", "0"]
UNBATCHED = ["--unbatched"]
PER_EVENT = ["--heartbeat-s", "0"]  # the batched driver as it was before heartbeats
# seed -> (sha256 of the decisions, first 16 hex digits; grants; revocations), pre-perf16 core
PINNED = {
    0: ("de23595a47bcf820", 2140, 34),
    4: ("03aab8b5560a99b8", 2320, 240),
    5: ("463c19a69ddfa9e4", 2325, 232),
    9: ("ed3fe9f97b845868", 2220, 115),
}
# seed -> (hash, slots granted, revocations), the batched driver, branch batch16's core
PINNED_BATCHED = {
    0: ("ff1562792ecc72f9", 2128, 34),
    4: ("a2d197fc52cb88d1", 2311, 209),
    5: ("235a54997a72b214", 2339, 247),
    9: ("6307efadb26413f2", 2212, 113),
}

# seed -> (hash, slots decided, revocations), the default driver: heartbeats of 0.05 s, slot
# reuse (kept slots hash as grants of locality "reuse"); branch sched's core
PINNED_HEARTBEAT = {
    0: ("ac6d9cefeedff7c7", 2132, 34),
    4: ("5faf482c3e7a04f8", 2294, 206),
    5: ("1ff8cc13f2231c0d", 2337, 250),
    9: ("ffa708d9b675d6b9", 2191, 103),
}


class Traced(Sim):
    def __init__(self, args):
        super().__init__(args)
        self.trace = hashlib.sha256()

    def granted(self, g):
        n = f"x{g.n}" if g.n != 1 else ""  # one-slot grants hash as they always did
        self.trace.update(f"G{g.demand_id},{g.node_id},{g.locality}{n};".encode())
        super().granted(g)

    def revoked(self, r):
        self.trace.update(f"R{r.demand_id},{r.node_id},{r.n},{r.reason};".encode())
        super().revoked(r)


def traced(seed: int, extra=UNBATCHED) -> tuple[str, int, int]:
    sim = Traced(parse(SIZE + list(extra) + ["--seed", str(seed)])).run()
    r = sim.result()
    return sim.trace.hexdigest()[:16], r["decisions"], r["revocations"]


@pytest.mark.parametrize("seed", sorted(PINNED))
def test_decisions_are_those_of_the_core_before_its_speed_ups(seed):
    assert traced(seed) == PINNED[seed], f"seed={seed}: the core decides differently now"


def test_negative_control_another_victim_order_moves_the_hash(monkeypatch):
    def oldest_first(self):
        live = self._live
        for prio in self._victim_prios:
            for seq in list(self._victims[prio]):
                if seq in live:
                    yield seq, live[seq]

    monkeypatch.setattr(Scheduler, "_victim_order", oldest_first)
    got = traced(4)
    assert got[0] != PINNED[4][0], "a different reclaim order left the trace unchanged"


@pytest.mark.parametrize("seed", sorted(PINNED_BATCHED))
def test_batched_decisions_are_pinned(seed):
    assert traced(seed, PER_EVENT) == PINNED_BATCHED[seed], f"seed={seed}: batched decisions moved"


def test_negative_control_batches_without_their_fairness_cap_move_the_hash(monkeypatch):
    monkeypatch.setattr(batch, "_fair_cap", lambda s, d, key, n: n)
    got = traced(4, PER_EVENT)
    assert got[0] != PINNED_BATCHED[4][0], "batches without the fairness cap left the trace"


@pytest.mark.parametrize("seed", sorted(PINNED_HEARTBEAT))
def test_heartbeat_and_reuse_decisions_are_pinned(seed):
    assert traced(seed, ()) == PINNED_HEARTBEAT[seed], f"seed={seed}: heartbeat decisions moved"


def test_negative_control_reuse_that_ignores_rivals_moves_the_hash(monkeypatch):
    monkeypatch.setattr(held.HeldSlots, "_keepable", lambda self, d, node, n: min(n, d.pending))
    got = traced(4, ())
    assert got[0] != PINNED_HEARTBEAT[4][0], "reuse without its rules left the trace unchanged"

"""The scheduling core decides exactly what it decided before its speed-ups (issue 16 part 2).

Every grant (demand, node, locality) and revocation (demand, node, count, reason) of the
50-node simulator run is hashed in order; the hashes below were recorded with the core as it
was before the perf16 branch (commit 29f4366: one heap of victims, no fit cache) and must not
move. A change that *means* to decide differently updates them on purpose, saying why in its
commit. A negative control reads the victims oldest-first instead and must move the hash of a
run with reclaims, so this file can fail.
"""

from __future__ import annotations

import hashlib

import pytest

from bench.bench_scheduler import Sim, parse
from fuxi.core.sched.scheduler import Scheduler

pytestmark = pytest.mark.timeout(120)

SIZE = ["--nodes", "50", "--jobs", "50", "--instances", "2000", "--baseline-nodes", "0", "--unbatched"]
# seed -> (sha256 of the decisions, first 16 hex digits; grants; revocations), pre-perf16 core
PINNED = {
    0: ("de23595a47bcf820", 2140, 34),
    4: ("03aab8b5560a99b8", 2320, 240),
    5: ("463c19a69ddfa9e4", 2325, 232),
    9: ("ed3fe9f97b845868", 2220, 115),
}


class Traced(Sim):
    def __init__(self, args):
        super().__init__(args)
        self.trace = hashlib.sha256()

    def granted(self, g):
        self.trace.update(f"G{g.demand_id},{g.node_id},{g.locality};".encode())
        super().granted(g)

    def revoked(self, r):
        self.trace.update(f"R{r.demand_id},{r.node_id},{r.n},{r.reason};".encode())
        super().revoked(r)


def traced(seed: int) -> tuple[str, int, int]:
    sim = Traced(parse(SIZE + ["--seed", str(seed)])).run()
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

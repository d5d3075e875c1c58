"""JobCore at scale (issue 16): what one completion, one tick and one ``status()`` cost.

    python -m bench.bench_jobcore [--sizes 10000,100000] [--workers 1000] [--nodes 100]
                                  [--completions 2000] [--no-baseline] [--seed 1]

Pure code, no Ray: the bench drives ``fuxi.core.jobcore.JobCore`` the way the JobMaster does
(slots granted, workers started, a worker's report of its attempt started, then finished) for
one task of N instances on ``--workers`` workers spread over ``--nodes`` nodes, with
speculation on and a few stragglers (their first attempts never finish, so backups run).

For each N it first runs half the instances to completion (so the tick has many finished
instances to not look at), then times ``--completions`` completion cycles (a finish report,
which dispatches the next attempt, plus the report that it started; each worker finishes
about every 2 s of simulated time), the ticks among them (every 20 ms of simulated time, as
the JobMaster ticks; while filling, every second) and 200 ``status()`` calls. In the same run it does the same with the JobCore of commit
``BASELINE_COMMIT`` (before the incremental indexes), loaded from git into a temporary
package, for the ratio; ``--no-baseline`` skips it (it takes minutes at 100k). One JSON
object per size is printed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine

BASELINE_COMMIT = "3a924bd"
# The modules the old core was made of that have changed since (the rest are imported as they are).
BASELINE_MODULES = ("jobcore", "jobtypes", "speculation")
SK = "CPU=1"
CPU1 = {"CPU": 1.0}
STRAGGLERS = 5
TICK_S = 0.02  # as fuxi.shells.jobmaster ticks (on the simulated clock here)
FILL_TICK_S = 1.0  # while filling, tick less often: the scanning core's 100k ticks would take minutes
STATUS_CALLS = 200


def load_baseline(tmp: Path):
    """The old ``fuxi.core.jobcore`` (and the old modules it used) as package ``oldcore``."""
    root = Path(__file__).resolve().parents[1]
    pkg = tmp / "oldcore"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in BASELINE_MODULES:
        src = subprocess.run(["git", "-C", str(root), "show", f"{BASELINE_COMMIT}:fuxi/core/{name}.py"],
                             check=True, capture_output=True, text=True).stdout
        for other in BASELINE_MODULES:
            src = src.replace(f"fuxi.core.{other}", f"oldcore.{other}")
        (pkg / f"{name}.py").write_text(src)
    sys.path.insert(0, str(tmp))
    return importlib.import_module("oldcore.jobcore")


class Driver:
    """Plays workers and the shell: each worker runs its queue FIFO; finishing one attempt is
    one report, its successor starting is another."""

    def __init__(self, jc, n: int, workers: int, nodes: int, seed: int):
        from fuxi.core.plan import JobPlan, TaskPlan
        from fuxi.core.speculation import SpeculationPolicy

        self.jc = jc
        self.rng = random.Random(seed)
        task = TaskPlan(name="a", fn="m:f", num_instances=n, inputs=((),) * n, shape=dict(CPU1),
                        max_retries=2, timeout_s=1e9, upstream=(), downstream=(), output=None)
        plan = JobPlan(name="bench", tasks=(task,), speculation=SpeculationPolicy())
        self.now = 0.0
        self.core = jc.JobCore("j", plan, now=0.0,
                               limits=jc.JobLimits(workers_max=workers, idle_release_s=1e9))
        self.queues: dict[str, list] = {}
        self.slow: set = set()  # attempts that never finish on their own
        wids = []
        for i in range(workers):
            for sw in self.core.slots_granted(SK, CPU1, f"node{i % nodes}", 1, 0.0):
                wids.append(sw.worker_id)
                self.queues[sw.worker_id] = []
        for wid in wids:
            self.apply(self.core.worker_started(wid, 0.0))
        self.wids = wids
        for wid in wids:
            self.start_head(wid)
        self.turn = 0
        self.mean_s = 2.0
        self.step_s = self.mean_s / workers  # each worker finishes about every 2 s

    def apply(self, acts) -> None:
        for a in acts:
            if isinstance(a, self.jc.Push):
                q = self.queues[a.worker_id]
                keys = [s.key for s in a.attempts]
                if a.front:
                    q[0:0] = keys
                else:
                    q.extend(keys)
            elif isinstance(a, self.jc.StopAttempt):
                q = self.queues.get(a.worker_id, [])
                if a.key in q:
                    q.remove(a.key)
                    self.start_head(a.worker_id)

    def start_head(self, wid: str) -> None:
        q = self.queues[wid]
        if q:
            self.apply(self.core.worker_report(wid, [(q[0], 0.0)], [], self.now))

    def mark_stragglers(self) -> None:
        for wid in self.wids[:STRAGGLERS]:
            if self.queues[wid]:
                self.slow.add(self.queues[wid][0])

    def completion(self) -> bool:
        """One worker finishes its running attempt; False once nothing is left to finish."""
        for _ in range(len(self.wids)):
            wid = self.wids[self.turn % len(self.wids)]
            self.turn += 1
            q = self.queues[wid]
            if q and q[0] not in self.slow:
                break
        else:
            return False
        key = q.pop(0)
        self.now += self.step_s
        res = self.jc.AttemptResult(key=key, ok=True, duration_s=self.rng.uniform(1.5, 2.5))
        self.apply(self.core.worker_report(wid, [], [res], self.now))
        self.start_head(wid)
        return True


def measure(jc, n: int, workers: int, nodes: int, completions: int, seed: int) -> dict:
    d = Driver(jc, n, workers, nodes, seed)
    d.mark_stragglers()
    next_tick = FILL_TICK_S
    t0 = time.perf_counter()
    for _ in range(n // 2):
        d.completion()
        if d.now >= next_tick:
            next_tick += FILL_TICK_S
            d.apply(d.core.tick(d.now))
    fill_s = time.perf_counter() - t0
    next_tick = d.now + TICK_S
    done, completion_s, ticks = 0, 0.0, []
    while done < completions:
        t0 = time.perf_counter()
        if not d.completion():
            break
        completion_s += time.perf_counter() - t0
        done += 1
        if d.now >= next_tick:  # the shell ticks every TICK_S; here on the simulated clock
            next_tick += TICK_S
            t0 = time.perf_counter()
            acts = d.core.tick(d.now)
            ticks.append((time.perf_counter() - t0) * 1e3)
            d.apply(acts)
    t0 = time.perf_counter()
    for _ in range(STATUS_CALLS):
        st = d.core.status(d.now)
    status_ms = (time.perf_counter() - t0) * 1e3 / STATUS_CALLS
    ticks.sort()
    return {
        "per_completion_ms": round(completion_s * 1e3 / max(done, 1), 4),
        "tick_ms_median": round(ticks[len(ticks) // 2], 4),
        "tick_ms_p99": round(ticks[int(len(ticks) * 0.99)], 4),
        "ticks_timed": len(ticks),
        "status_ms": round(status_ms, 4),
        "fill_s": round(fill_s, 2),
        "succeeded_before_timing": n // 2,
        "completions_timed": done,
        "backups_launched": st["tasks"]["a"]["backups_launched"],
        "backups_won": st["tasks"]["a"]["backups_won"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--completions", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    from fuxi.core import jobcore as new

    old = None
    tmp = tempfile.TemporaryDirectory(prefix="bench-jobcore-")
    if not args.no_baseline:
        old = load_baseline(Path(tmp.name))
    for n in (int(s) for s in args.sizes.split(",")):
        row = {"bench": "jobcore", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
               "instances": n, "workers": args.workers, "nodes": args.nodes, "seed": args.seed,
               "incremental": measure(new, n, args.workers, args.nodes, args.completions, args.seed)}
        if old is not None:
            base = measure(old, n, args.workers, args.nodes, args.completions, args.seed)
            row["baseline_" + BASELINE_COMMIT] = base
            inc = row["incremental"]
            row["speedup"] = {k: round(base[k] / inc[k], 1) if inc[k] else None
                              for k in ("per_completion_ms", "tick_ms_median", "status_ms")}
        print(json.dumps(row), flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()

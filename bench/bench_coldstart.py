"""Cold start: `fuxi submit jobs/wordcount.yaml` end to end on the embedded default (a fresh
process that starts Ray and the platform, runs the job, shuts down), against the same
wordcount written as plain Ray tasks in a fresh process. Same machine, same run.

    python -m bench.bench_coldstart [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import machine, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=300)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fuxi-cold-")
    env = dict(os.environ, FUXI_HOME=os.path.join(tmp, "home"))
    env.pop("RAY_ADDRESS", None)
    fuxi_s, raw_s = [], []
    try:
        for i in range(args.runs):
            out = os.path.join(tmp, f"fuxi-{i}")
            fuxi_s.append(timed([sys.executable, "-m", "cli.main", "submit", "jobs/wordcount.yaml",
                                 "--set", f"output={out}"], env))
            raw_s.append(timed([sys.executable, "-m", "bench.raw_wordcount",
                                os.path.join(tmp, f"raw-{i}")], env))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    f, r = statistics.median(fuxi_s), statistics.median(raw_s)
    print(f"{machine()}: wordcount (4 x 1 MB) from a fresh process, median of {args.runs}")
    print(f"  fuxi submit (embedded)  {f:5.2f}s   runs {[round(x, 2) for x in fuxi_s]}")
    print(f"  plain Ray script        {r:5.2f}s   runs {[round(x, 2) for x in raw_s]}")
    print(f"  ratio fuxi/raw {f / r:.2f}x   goal: fuxi <= 10 s")
    report("coldstart", fuxi_s=round(f, 2), raw_s=round(r, 2), ratio=round(f / r, 2),
           fuxi_runs=[round(x, 2) for x in fuxi_s], raw_runs=[round(x, 2) for x in raw_s])


if __name__ == "__main__":
    main()
